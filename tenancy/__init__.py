"""Tenants, users, credentials, plans, provisioning, isolation, encryption and audit.

Everything that decides *who* a request acts for and *what* it may touch lives here;
the database enforces the answer (a schema and role per tenant, row-level security on
shared tables).
"""
