"""Ray actors per tenant (strategy, risk, execution) and system actors.

Arrives with the runtime issue; nothing here yet.
"""
