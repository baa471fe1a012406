"""Tenant slugs and the SQL identifiers derived from them.

A slug is the only tenant-supplied text that ever becomes part of SQL; it is validated
here and every identifier built from it is quoted. Dashes map to underscores, which is
safe because slugs cannot contain underscores (the mapping is one-to-one).
"""

from __future__ import annotations

import re
import unicodedata

from trading.errors import Invalid

SLUG_RE = re.compile(r"^[a-z][a-z0-9-]{2,39}$")
_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def validate_slug(slug: str, *, field: str = "slug") -> str:
    """Return `slug` if it matches ``^[a-z][a-z0-9-]{2,39}$``, else raise `Invalid`."""
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise Invalid(
            "slug must be 3-40 characters: a lowercase letter, then lowercase letters, "
            "digits or dashes", field=field)
    return slug


def slug_from_name(name: str) -> str:
    """Derive a valid slug from a display name ("Acme Corp." -> "acme-corp")."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    slug = re.sub(r"^[^a-z]+", "", slug)[:40].rstrip("-")
    if len(slug) < 3:
        slug = (slug + "-org")[:40] if slug else "org"
        slug = slug if len(slug) >= 3 else "org"
    return validate_slug(slug, field="name")


def tenant_schema(slug: str) -> str:
    """The tenant's schema (and role) name: ``tenant_<slug with - as _>``."""
    return "tenant_" + validate_slug(slug).replace("-", "_")


def quote_ident(name: str) -> str:
    """Quote a platform-built identifier after checking it is plain lowercase ASCII."""
    if not _IDENT_RE.fullmatch(name):
        raise Invalid(f"not a valid identifier: {name!r}", field="identifier")
    return '"' + name + '"'
