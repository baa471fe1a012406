from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from tenancy.credentials import (
    api_key_matches,
    api_key_prefix,
    generate_api_key,
    hash_password,
    issue_jwt,
    verify_jwt,
    verify_password,
)
from tenancy.roles import Role, require_role
from trading.errors import Forbidden, Unauthenticated

SECRET = "s" * 48


def test_api_key_format_and_hash() -> None:
    key = generate_api_key()
    assert key.plaintext.startswith(f"atp_{key.prefix}_")
    assert api_key_prefix(key.plaintext) == key.prefix
    assert api_key_matches(key.key_hash, key.plaintext)
    assert not api_key_matches(key.key_hash, key.plaintext[:-1] + "x")
    assert key.plaintext.encode() not in key.key_hash


@pytest.mark.parametrize("bad", ["atp_", "atp_short_secretsecretsecretsecret", "xyz_abcdefghijkl_" + "s" * 30,
                                 "atp_ABCDEFGHIJKL_" + "s" * 30, "atp_abcdefghijkl_short"])
def test_malformed_api_keys_are_unauthenticated(bad: str) -> None:
    with pytest.raises(Unauthenticated):
        api_key_prefix(bad)


def test_passwords() -> None:
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "correct horse battery")
    assert not verify_password(h, "wrong")
    assert not verify_password(None, "anything")


def test_jwt_roundtrip() -> None:
    user, tenant = uuid.uuid4(), uuid.uuid4()
    token, exp = issue_jwt(SECRET, user_id=user, tenant_id=tenant, role=Role.TRADER,
                           ttl_seconds=900)
    claims = verify_jwt(SECRET, token)
    assert (claims.user_id, claims.tenant_id, claims.role) == (user, tenant, Role.TRADER)
    assert exp - time.time() == pytest.approx(900, abs=5)


def test_expired_jwt() -> None:
    token, _ = issue_jwt(SECRET, user_id=uuid.uuid4(), tenant_id=uuid.uuid4(), role=Role.OWNER,
                         ttl_seconds=60, now=time.time() - 3600)
    with pytest.raises(Unauthenticated) as info:
        verify_jwt(SECRET, token)
    assert info.value.code == "token_expired"


def _b64(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused() -> None:
    claims = {"iss": "atp", "sub": str(uuid.uuid4()), "tenant": str(uuid.uuid4()),
              "role": "owner", "iat": int(time.time()), "exp": int(time.time()) + 600}
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(Unauthenticated):
        verify_jwt(SECRET, token)


def test_other_secret_and_other_algorithm_are_refused() -> None:
    claims = {"iss": "atp", "sub": str(uuid.uuid4()), "tenant": str(uuid.uuid4()),
              "role": "owner", "iat": int(time.time()), "exp": int(time.time()) + 600}
    for token in (jwt.encode(claims, "x" * 48, algorithm="HS256"),
                  jwt.encode(claims, SECRET, algorithm="HS512")):
        with pytest.raises(Unauthenticated):
            verify_jwt(SECRET, token)


def test_roles_are_ordered() -> None:
    assert Role.OWNER.allows(Role.ADMIN) and Role.ADMIN.allows(Role.TRADER)
    assert not Role.VIEWER.allows(Role.TRADER)
    with pytest.raises(Forbidden) as info:
        require_role(Role.TRADER, Role.ADMIN)
    assert info.value.code == "insufficient_role"
