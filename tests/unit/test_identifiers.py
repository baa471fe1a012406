from __future__ import annotations

import pytest

from tenancy.identifiers import quote_ident, slug_from_name, tenant_schema, validate_slug
from trading.errors import Invalid


@pytest.mark.parametrize("slug", ["abc", "acme-corp", "a1-b2-c3", "a" * 40])
def test_valid_slugs(slug: str) -> None:
    assert validate_slug(slug) == slug


@pytest.mark.parametrize("slug", ["ab", "Acme", "1abc", "-abc", "a_b_c", "a" * 41, "abc;drop",
                                  "abc def", 'ab"c', "", "ä-bc"])
def test_invalid_slugs_name_the_field(slug: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_slug(slug)
    assert info.value.field == "slug"


def test_schema_names_map_dashes_one_to_one() -> None:
    assert tenant_schema("acme-corp") == "tenant_acme_corp"
    assert len(tenant_schema("a" * 40)) <= 63


@pytest.mark.parametrize(("name", "slug"), [("Acme Corp.", "acme-corp"), ("  Ümlaut GmbH ", "umlaut-gmbh"),
                                             ("42 Capital", "capital"), ("AB", "ab-org")])
def test_slug_from_name(name: str, slug: str) -> None:
    assert slug_from_name(name) == slug


@pytest.mark.parametrize("ident", ['a"b', "A", "a b", "a;b", "x" * 64, ""])
def test_quote_ident_refuses_anything_unusual(ident: str) -> None:
    with pytest.raises(Invalid):
        quote_ident(ident)


def test_quote_ident_quotes() -> None:
    assert quote_ident("tenant_acme") == '"tenant_acme"'
