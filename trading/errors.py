"""The platform's error tree.

Every error the platform raises on purpose derives from `AtpError`; `serve.errors` maps
the branches to HTTP status codes in one table and renders every body the same way:
``{"error": {"code", "message", "field"}}``.

    AtpError
    ├── Invalid                 bad input: 422
    ├── NotFound                unknown, or another tenant's: 404
    ├── Conflict                duplicate or concurrent change: 409
    ├── Unauthenticated         missing, wrong, revoked or expired credential: 401
    ├── Forbidden               authenticated but not allowed (role, suspension): 403
    ├── RateLimited             request rate above the plan: 429 with Retry-After
    ├── QuotaExceeded           monthly allowance used up: 429
    ├── Unavailable             a backing service cannot be reached: 503
    └── Internal                corrupt data or a broken invariant: 500

Errors keep their fields through pickling, so they survive crossing Ray actors.
"""

from __future__ import annotations

from typing import Any, ClassVar


def _rebuild(cls: type[AtpError], state: dict[str, Any]) -> AtpError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    err.args = (state.get("message", ""),)
    return err


class AtpError(Exception):
    """Base of every deliberate platform error.

    `code` is a stable machine-readable string, `message` is for people and `field`
    names the input that caused it (when one did).
    """

    default_code: ClassVar[str] = "error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), dict(self.__dict__)))

    def to_dict(self) -> dict[str, Any]:
        """Return the error body: ``{"code", "message", "field"}``."""
        return {"code": self.code, "message": self.message, "field": self.field}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
                f"field={self.field!r})")


class Invalid(AtpError):
    """Input that fails validation."""

    default_code = "invalid"


class BadRequest(Invalid):
    """A request that cannot be read or trusted at all (a bad signature, a garbled body): 400."""

    default_code = "bad_request"


class NotFound(AtpError):
    """A resource that does not exist, or belongs to another tenant."""

    default_code = "not_found"


class Conflict(AtpError):
    """A duplicate, or a change that lost a race."""

    default_code = "conflict"


class Unauthenticated(AtpError):
    """A missing, malformed, wrong, revoked or expired credential."""

    default_code = "unauthenticated"


class Forbidden(AtpError):
    """A valid credential that may not do this."""

    default_code = "forbidden"


class RateLimited(AtpError):
    """Too many requests per second for the plan."""

    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message, code=code, field=field)
        self.retry_after = retry_after


class QuotaExceeded(AtpError):
    """A plan allowance (API calls per month, ...) is used up."""

    default_code = "quota_exceeded"


class Unavailable(AtpError):
    """A backing service (PostgreSQL, Redis, Ray) cannot be reached."""

    default_code = "unavailable"


class Internal(AtpError):
    """Corrupt stored data or a broken invariant: the platform's fault, never the caller's."""

    default_code = "internal"
