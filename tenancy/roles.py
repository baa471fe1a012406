"""Tenant roles, ordered: viewer reads, trader trades, admin manages keys, owner everything."""

from __future__ import annotations

from enum import StrEnum

from trading.errors import Forbidden, Invalid


class Role(StrEnum):
    VIEWER = "viewer"
    TRADER = "trader"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, required: Role) -> bool:
        """True when this role is at least `required`."""
        return self.rank >= required.rank

    @classmethod
    def parse(cls, value: str, *, field: str = "role") -> Role:
        try:
            return cls(value)
        except ValueError:
            raise Invalid(f"role must be one of {', '.join(r.value for r in cls)}",
                          field=field) from None


_RANK = {Role.VIEWER: 0, Role.TRADER: 1, Role.ADMIN: 2, Role.OWNER: 3}


def require_role(actual: Role, required: Role) -> None:
    """Raise `Forbidden` unless `actual` is at least `required`."""
    if not actual.allows(required):
        raise Forbidden(f"this needs the {required.value} role; the credential has "
                        f"{actual.value}", code="insufficient_role")
