"""Per-tenant data-encryption keys (AES-256-GCM), wrapped by the master key.

Each tenant has numbered data keys in ``platform.tenant_keys``; exactly one is active.
A ciphertext records the key version that made it, and authenticates the tenant and a
caller-chosen context (so a blob cannot be moved to another tenant or field). Rotation
adds a key version, re-encrypts the tenant's stored secrets and retires the old key, in
one transaction.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.identifiers import quote_ident, tenant_schema
from trading.errors import Internal, NotFound

_FORMAT = 1
_HEADER = struct.Struct(">BI")  # format byte, key version
_NONCE = 12


class DecryptionError(Internal):
    """A ciphertext that does not authenticate (wrong tenant, context, key or tampered)."""

    default_code = "decryption_failed"


def _wrap_aad(tenant_id: uuid.UUID, version: int) -> bytes:
    return f"atp-dek|{tenant_id}|{version}".encode()


def wrap_key(master: bytes, tenant_id: uuid.UUID, version: int, key: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(master).encrypt(nonce, key, _wrap_aad(tenant_id, version))


def unwrap_key(master: bytes, tenant_id: uuid.UUID, version: int, wrapped: bytes) -> bytes:
    try:
        return AESGCM(master).decrypt(wrapped[:_NONCE], wrapped[_NONCE:],
                                      _wrap_aad(tenant_id, version))
    except InvalidTag:
        raise DecryptionError("a tenant data key does not unwrap with this master key") \
            from None


@dataclass(frozen=True)
class TenantCipher:
    """A tenant's unwrapped data keys: encrypts with the active one, decrypts with any."""

    tenant_id: uuid.UUID
    active_version: int
    keys: dict[int, bytes]

    def _aad(self, context: str) -> bytes:
        return f"atp-data|{self.tenant_id}|{context}".encode()

    def encrypt(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE)
        key = self.keys[self.active_version]
        return (_HEADER.pack(_FORMAT, self.active_version) + nonce
                + AESGCM(key).encrypt(nonce, plaintext, self._aad(context)))

    def decrypt(self, blob: bytes, context: str) -> bytes:
        if len(blob) < _HEADER.size + _NONCE + 16:
            raise DecryptionError("ciphertext too short")
        fmt, version = _HEADER.unpack_from(blob)
        if fmt != _FORMAT or version not in self.keys:
            raise DecryptionError(f"unknown ciphertext format {fmt} or key version {version}")
        body = blob[_HEADER.size:]
        try:
            return AESGCM(self.keys[version]).decrypt(body[:_NONCE], body[_NONCE:],
                                                      self._aad(context))
        except InvalidTag:
            raise DecryptionError("ciphertext does not authenticate") from None

    @staticmethod
    def version_of(blob: bytes) -> int:
        return int(_HEADER.unpack_from(blob)[1])


async def create_first_key(conn: AsyncConnection, master: bytes, tenant_id: uuid.UUID) -> int:
    """Create data key version 1 for a new tenant (platform role, caller's transaction)."""
    await conn.execute(
        text("INSERT INTO platform.tenant_keys (tenant_id, version, wrapped_key)"
             " VALUES (:t, 1, :w)"),
        {"t": tenant_id, "w": wrap_key(master, tenant_id, 1, AESGCM.generate_key(256))})
    return 1


async def load_cipher(conn: AsyncConnection, master: bytes, tenant_id: uuid.UUID) -> TenantCipher:
    """Unwrap every data key of a tenant (platform role)."""
    rows = (await conn.execute(
        text("SELECT version, wrapped_key, retired_at FROM platform.tenant_keys"
             " WHERE tenant_id = :t ORDER BY version"), {"t": tenant_id})).all()
    if not rows:
        raise NotFound("the tenant has no data key", code="tenant_key_missing")
    keys = {r.version: unwrap_key(master, tenant_id, r.version, r.wrapped_key) for r in rows}
    active = [r.version for r in rows if r.retired_at is None]
    return TenantCipher(tenant_id, active[-1] if active else max(keys), keys)


async def rotate_key(conn: AsyncConnection, master: bytes, tenant_id: uuid.UUID, slug: str) -> int:
    """Add a data key version, re-encrypt the tenant's secrets with it and retire the old.

    Runs in the caller's (platform) transaction; returns the new version.
    """
    await conn.execute(text("SELECT 1 FROM platform.tenants WHERE id = :t FOR UPDATE"),
                       {"t": tenant_id})
    old = await load_cipher(conn, master, tenant_id)
    version = max(old.keys) + 1
    new_key = AESGCM.generate_key(256)
    await conn.execute(text("UPDATE platform.tenant_keys SET retired_at = now()"
                            " WHERE tenant_id = :t AND retired_at IS NULL"), {"t": tenant_id})
    await conn.execute(
        text("INSERT INTO platform.tenant_keys (tenant_id, version, wrapped_key)"
             " VALUES (:t, :v, :w)"),
        {"t": tenant_id, "v": version, "w": wrap_key(master, tenant_id, version, new_key)})
    new = TenantCipher(tenant_id, version, {**old.keys, version: new_key})
    table = f"{quote_ident(tenant_schema(slug))}.secrets"
    rows = (await conn.execute(text(f"SELECT name, ciphertext FROM {table} FOR UPDATE"))).all()
    for row in rows:
        plain = old.decrypt(row.ciphertext, f"secret:{row.name}")
        await conn.execute(
            text(f"UPDATE {table} SET ciphertext = :c, key_version = :v, updated_at = now()"
                 " WHERE name = :n"),
            {"c": new.encrypt(plain, f"secret:{row.name}"), "v": version, "n": row.name})
    return version


async def rewrap_all(conn: AsyncConnection, old_master: bytes, new_master: bytes) -> int:
    """Re-wrap every tenant data key under a new master key; return how many."""
    rows = (await conn.execute(text(
        "SELECT tenant_id, version, wrapped_key FROM platform.tenant_keys FOR UPDATE"))).all()
    for r in rows:
        key = unwrap_key(old_master, r.tenant_id, r.version, r.wrapped_key)
        await conn.execute(
            text("UPDATE platform.tenant_keys SET wrapped_key = :w"
                 " WHERE tenant_id = :t AND version = :v"),
            {"w": wrap_key(new_master, r.tenant_id, r.version, key), "t": r.tenant_id,
             "v": r.version})
    return len(rows)
