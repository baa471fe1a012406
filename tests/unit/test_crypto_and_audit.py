from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest

from tenancy.audit import GENESIS_HASH, entry_hash
from tenancy.keys import DecryptionError, TenantCipher, unwrap_key, wrap_key


def test_wrap_and_unwrap_are_bound_to_tenant_and_version() -> None:
    master, tenant, key = os.urandom(32), uuid.uuid4(), os.urandom(32)
    wrapped = wrap_key(master, tenant, 1, key)
    assert unwrap_key(master, tenant, 1, wrapped) == key
    for args in ((os.urandom(32), tenant, 1), (master, uuid.uuid4(), 1), (master, tenant, 2)):
        with pytest.raises(DecryptionError):
            unwrap_key(*args, wrapped)


def test_cipher_authenticates_tenant_and_context() -> None:
    tenant = uuid.uuid4()
    cipher = TenantCipher(tenant, 1, {1: os.urandom(32)})
    blob = cipher.encrypt(b"broker-secret", "secret:binance")
    assert b"broker-secret" not in blob
    assert cipher.decrypt(blob, "secret:binance") == b"broker-secret"
    with pytest.raises(DecryptionError):
        cipher.decrypt(blob, "secret:other")
    with pytest.raises(DecryptionError):
        TenantCipher(uuid.uuid4(), 1, cipher.keys).decrypt(blob, "secret:binance")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionError):
        cipher.decrypt(tampered, "secret:binance")


def test_cipher_decrypts_with_older_versions_and_encrypts_with_active() -> None:
    tenant = uuid.uuid4()
    old = TenantCipher(tenant, 1, {1: os.urandom(32)})
    blob = old.encrypt(b"x", "c")
    new = TenantCipher(tenant, 2, {**old.keys, 2: os.urandom(32)})
    assert new.decrypt(blob, "c") == b"x"
    assert TenantCipher.version_of(new.encrypt(b"x", "c")) == 2


def test_entry_hash_covers_every_field() -> None:
    tenant, at = uuid.uuid4(), datetime.now(UTC)
    base = dict(tenant_id=tenant, seq=1, actor="operator", action="tenant.create",
                target="acme", detail={"plan": "starter"}, at=at)
    h = entry_hash(GENESIS_HASH, **base)
    assert len(h) == 64 and h == entry_hash(GENESIS_HASH, **base)
    for field, value in [("seq", 2), ("actor", "x"), ("action", "y"), ("target", "z"),
                         ("detail", {"plan": "pro"}), ("tenant_id", uuid.uuid4())]:
        assert entry_hash(GENESIS_HASH, **{**base, field: value}) != h
    assert entry_hash("1" * 64, **base) != h
