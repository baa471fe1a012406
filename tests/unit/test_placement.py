"""Placement: a plan's worker group and the settings become Ray resources (pure functions)."""

from __future__ import annotations

import pytest

from actors.placement import (
    dedicated_resource,
    job_entrypoint,
    placement_error,
    tenant_resources,
    validate_worker_group,
)
from tenancy.settings import Settings
from trading.errors import Invalid


def test_worker_group_names_are_short_identifiers() -> None:
    assert validate_worker_group(None) is None
    assert validate_worker_group("enterprise") == "enterprise"
    assert validate_worker_group("acme_2") == "acme_2"
    for bad in ("", "Enterprise", "2fast", "a-b", "a" * 32, "x;drop"):
        with pytest.raises(Invalid) as exc:
            validate_worker_group(bad)
        assert exc.value.field == "worker_group"


def test_tenant_resources_default_to_the_shared_pool() -> None:
    assert tenant_resources(None) == {}
    assert tenant_resources("enterprise") == {"dedicated_enterprise": 1.0}
    assert dedicated_resource("gold") == "dedicated_gold"


def test_job_entrypoint_moves_driver_cpus_to_the_jobs_resource_when_configured() -> None:
    plain = Settings()
    assert job_entrypoint(plain, None, 0.5) == (0.5, {})
    jobs = Settings(job_cpu_resource="atp_job_cpus", job_resources='{"extra": 2}')
    assert job_entrypoint(jobs, None, 0.5) == (0.0, {"extra": 2.0, "atp_job_cpus": 0.5})
    # A dedicated tenant's driver goes to its own group, with ordinary CPUs.
    assert job_entrypoint(jobs, "enterprise", 0.5) == (0.5, {"dedicated_enterprise": 1.0})


@pytest.mark.parametrize("value", ['{"CPU": 1}', '{"x": 0}', '{"x": "a"}', "[1]", "{bad json",
                                   '{"a b": 1}'])
def test_resource_settings_refuse_bad_values(value: str) -> None:
    with pytest.raises(ValueError):
        Settings(system_resources=value)


def test_resource_settings_accept_json_and_empty() -> None:
    assert Settings(system_resources='{"atp_system": 0.001}').system_resources == {"atp_system": 0.001}
    assert Settings(system_resources="").system_resources == {}
    assert Settings().job_cpu_resource is None


def test_placement_error_names_the_missing_resource() -> None:
    err = placement_error("the actors of bot 'b'", {"dedicated_gold": 1.0}, {"CPU": 4.0}, 5)
    assert err.code == "placement_unavailable" and "dedicated_gold" in err.message
    busy = placement_error("x", {"dedicated_gold": 1.0}, {"dedicated_gold": 10.0}, 5)
    assert "no room" in busy.message
