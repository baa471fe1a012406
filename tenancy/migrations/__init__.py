"""Alembic migration trees: ``master`` (schema ``platform``) and ``tenant`` (each tenant schema)."""
