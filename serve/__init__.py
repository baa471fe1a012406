"""Ray Serve applications: the gateway (FastAPI ingress) and, later, model endpoints.

Nothing imports `serve`; it is the top of the import arrow and holds the composition
roots (`serve.app.build_app`, `serve.cli`).
"""
