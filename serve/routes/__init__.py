"""Gateway routes, one module per resource; each route is thin and names its dependencies."""
