"""The pure trading core.

Imports only the standard library (and, later, numpy/pandas): no Ray, no database, no web.
For now it holds the root of the platform's error tree; instruments, orders, portfolio,
risk, strategies and the paper broker arrive with the runtime issue.
"""
