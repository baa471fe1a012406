from __future__ import annotations

import pickle

import pytest

from serve.errors import STATUS, status_for
from tenancy.settings import SettingsError
from trading.errors import (
    AtpError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    Unavailable,
)


@pytest.mark.parametrize("exc", [
    Invalid("bad slug", field="slug"),
    NotFound("no tenant", code="tenant_missing"),
    RateLimited("slow down", retry_after=1.5),
    SettingsError("missing", field="ATP_JWT_SECRET"),
])
def test_errors_survive_pickling_with_their_fields(exc: AtpError) -> None:
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert copy.to_dict() == exc.to_dict()
    assert str(copy) == exc.message
    if isinstance(exc, RateLimited):
        assert copy.retry_after == 1.5


@pytest.mark.parametrize(("exc", "status"), [
    (Invalid("x"), 422), (SettingsError("x"), 422), (NotFound("x"), 404), (Conflict("x"), 409),
    (Unauthenticated("x"), 401), (Forbidden("x"), 403), (RateLimited("x", retry_after=1), 429),
    (QuotaExceeded("x"), 429), (Unavailable("x"), 503), (AtpError("x"), 500),
])
def test_one_table_maps_every_branch(exc: AtpError, status: int) -> None:
    assert status_for(exc) == status


def test_every_branch_of_the_tree_is_mapped() -> None:
    branches = set(AtpError.__subclasses__())
    assert branches <= set(STATUS), branches - set(STATUS)
