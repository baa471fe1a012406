"""Tenants' AI models in PyTorch.

The pure core (no Ray, database or web): `features` (bars to a no-look-ahead feature
matrix, `FeatureSpec`), `datasets` (labels, aligned rows, time split), `networks` (MLP and
TCN over a window of feature rows), `training` (seeded training with early stopping, test
metrics, `predict`), `metrics` (AUC, accuracy, correlation) and `artifacts` (a model as one
checksummed blob, loaded back with ``weights_only``). Modules built on it keep the
per-tenant registry and run searches. Import the submodules: this package imports nothing.
"""
