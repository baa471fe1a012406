"""Passwords, API keys and JWTs: how credentials are made, stored and checked.

* Passwords: argon2id hashes.
* API keys: ``atp_<prefix>_<secret>``. The prefix (12 characters) finds the row; only the
  SHA-256 of the whole key is stored and compared in constant time. A key carries 256 bits
  of randomness, so a fast hash is safe here (a slow one would cost every request).
* JWTs: HS256 with the settings secret, 15 minutes by default, claims tenant, role, user.
  Only HS256 is accepted (``alg: none`` and every other algorithm are refused).
* Job tokens: JWTs with ``scope: job`` whose subject is one of the tenant's Ray jobs, the
  viewer role, and a lifetime bounded by the job's: what a job gets instead of database
  credentials (it may read the tenant's data and report its own results, nothing more).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import string
import time
import uuid
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tenancy.roles import Role
from trading.errors import Unauthenticated

API_KEY_PREFIX_LEN = 12
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_JWT_ALGORITHM = "HS256"
_JWT_ISSUER = "atp"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the email is unknown, so timing does not reveal which exist."""
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password in roughly constant time, whether or not a hash exists."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class NewApiKey:
    """A freshly minted key: `plaintext` is shown once and never stored."""

    prefix: str
    plaintext: str
    key_hash: bytes


def generate_api_key() -> NewApiKey:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(API_KEY_PREFIX_LEN))
    plaintext = f"atp_{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(prefix, plaintext, hash_api_key(plaintext))


def hash_api_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def api_key_prefix(plaintext: str) -> str:
    """Return the lookup prefix of a key, or raise `Unauthenticated` when malformed."""
    parts = plaintext.split("_", 2)
    if (len(parts) != 3 or parts[0] != "atp" or len(parts[1]) != API_KEY_PREFIX_LEN
            or not all(c in _PREFIX_ALPHABET for c in parts[1]) or len(parts[2]) < 20):
        raise Unauthenticated("malformed API key", code="invalid_api_key")
    return parts[1]


def api_key_matches(stored_hash: bytes, plaintext: str) -> bool:
    return hmac.compare_digest(stored_hash, hash_api_key(plaintext))


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: Role
    expires_at: int
    scope: str = "user"  # "user": `user_id` is a user; "job": it is one of the tenant's jobs


def issue_jwt(secret: str, *, user_id: uuid.UUID, tenant_id: uuid.UUID, role: Role,
              ttl_seconds: int, now: float | None = None) -> tuple[str, int]:
    """Sign a token for one membership; return it and its expiry (epoch seconds)."""
    issued = int(now if now is not None else time.time())
    exp = issued + ttl_seconds
    token = jwt.encode(
        {"iss": _JWT_ISSUER, "sub": str(user_id), "tenant": str(tenant_id), "role": role.value,
         "iat": issued, "exp": exp, "jti": secrets.token_hex(8)},
        secret, algorithm=_JWT_ALGORITHM)
    return token, exp


def issue_job_token(secret: str, *, job_id: uuid.UUID, tenant_id: uuid.UUID, ttl_seconds: int,
                    now: float | None = None) -> tuple[str, int]:
    """Sign a job token: the viewer role of `tenant_id`, for job `job_id`, `ttl_seconds` long."""
    issued = int(now if now is not None else time.time())
    exp = issued + ttl_seconds
    token = jwt.encode(
        {"iss": _JWT_ISSUER, "sub": str(job_id), "tenant": str(tenant_id),
         "role": Role.VIEWER.value, "scope": "job", "iat": issued, "exp": exp,
         "jti": secrets.token_hex(8)},
        secret, algorithm=_JWT_ALGORITHM)
    return token, exp


def verify_jwt(secret: str, token: str) -> TokenClaims:
    """Check signature, algorithm, issuer and expiry; raise `Unauthenticated` otherwise."""
    try:
        claims = jwt.decode(token, secret, algorithms=[_JWT_ALGORITHM], issuer=_JWT_ISSUER,
                            options={"require": ["exp", "iat", "sub", "iss"]})
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("the token has expired", code="token_expired") from None
    except jwt.PyJWTError:
        raise Unauthenticated("the token is not valid", code="invalid_token") from None
    try:
        scope = claims.get("scope", "user")
        if scope not in ("user", "job"):
            raise ValueError(scope)
        return TokenClaims(uuid.UUID(claims["sub"]), uuid.UUID(claims["tenant"]),
                           Role(claims["role"]), int(claims["exp"]), scope)
    except (KeyError, ValueError, TypeError):
        raise Unauthenticated("the token is not valid", code="invalid_token") from None
