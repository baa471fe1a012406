"""The gateway over HTTP through Ray Serve: routes, auth, roles, errors, limits."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from tenancy.settings import Settings
from tests.conftest import TenantFactory, random_slug


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str | None = None,
                 field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    if code:
        assert body["error"]["code"] == code, body
    if field:
        assert body["error"]["field"] == field, body
    return body["error"]  # type: ignore[no-any-return]


async def test_health_and_readiness(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok",
                            "checks": {"postgres": "ok", "redis": "ok", "ray": "ok"}}


async def test_openapi_lists_the_routes(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    for path in ("/v1/me", "/v1/auth/token", "/v1/api-keys", "/v1/api-keys/{key_id}",
                 "/v1/audit", "/v1/admin/tenants", "/v1/admin/tenants/{slug}"):
        assert path in spec["paths"], path
    assert (await http.get("/docs")).status_code == 200


async def test_me_with_api_key_and_jwt(http: httpx.AsyncClient,
                                       make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    me = await http.get("/v1/me", headers=bearer(created.api_key))
    assert me.status_code == 200, me.text
    assert me.json()["tenant"]["slug"] == created.tenant.slug
    assert (me.json()["role"], me.json()["credential"]) == ("owner", "api_key")
    assert (await http.get("/v1/me", headers={"X-API-Key": created.api_key})).status_code == 200

    token = await http.post("/v1/auth/token", json={"email": created.owner_email,
                                                    "password": "correct horse battery"})
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "bearer" and body["tenant"] == created.tenant.slug
    assert 890 <= body["expires_at"] - time.time() <= 905
    me2 = await http.get("/v1/me", headers=bearer(body["access_token"]))
    assert me2.json()["credential"] == "user" and me2.json()["email"] == created.owner_email


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def test_every_authentication_rejection(http: httpx.AsyncClient, settings: Settings,
                                              make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    secret = settings.secret("jwt_secret")
    claims = {"iss": "atp", "sub": str(uuid.uuid4()), "tenant": str(created.tenant.id),
              "role": "owner", "iat": int(time.time()), "exp": int(time.time()) + 600}
    expired = jwt.encode({**claims, "iat": int(time.time()) - 7200,
                          "exp": int(time.time()) - 3600}, secret, algorithm="HS256")
    cases = {
        "missing_credential": {},
        "invalid_api_key": bearer(created.api_key[:-4] + "AAAA"),
        "invalid_credential": bearer("not-a-credential"),
        "invalid_token": bearer(jwt.encode(claims, "x" * 48, algorithm="HS256")),
        "token_expired": bearer(expired),
    }
    for code, headers in cases.items():
        err = assert_error(await http.get("/v1/me", headers=headers), 401, code)
        assert created.api_key not in err["message"]
    alg_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert_error(await http.get("/v1/me", headers=bearer(alg_none)), 401, "invalid_token")
    # A well-signed token for a membership that does not exist.
    assert_error(await http.get("/v1/me", headers=bearer(jwt.encode(claims, secret,
                                                                     algorithm="HS256"))),
                 401, "invalid_token")
    r = await http.get("/v1/me")
    assert r.headers.get("www-authenticate") == "Bearer"


async def test_wrong_password_is_401_and_bad_email_is_422(http: httpx.AsyncClient,
                                                          make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    assert_error(await http.post("/v1/auth/token", json={"email": created.owner_email,
                                                         "password": "nope nope"}),
                 401, "invalid_login")
    assert_error(await http.post("/v1/auth/token", json={"email": "nope", "password": "x"}),
                 422, "invalid", "email")


async def test_revoked_key_is_refused(http: httpx.AsyncClient, make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    owner = bearer(created.api_key)
    new = await http.post("/v1/api-keys", json={"name": "ci", "role": "trader"}, headers=owner)
    assert new.status_code == 201, new.text
    key = new.json()["key"]
    assert (await http.get("/v1/me", headers=bearer(key))).json()["role"] == "trader"
    listed = (await http.get("/v1/api-keys", headers=owner)).json()
    assert {k["prefix"] for k in listed} >= {new.json()["prefix"]}
    assert all("key" not in k and "key_hash" not in k for k in listed)
    revoked = await http.delete(f"/v1/api-keys/{new.json()['id']}", headers=owner)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert_error(await http.get("/v1/me", headers=bearer(key)), 401, "api_key_revoked")


async def test_suspended_tenant_is_403_until_resumed(http: httpx.AsyncClient,
                                                     operator_headers: dict[str, str],
                                                     make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    slug = created.tenant.slug
    assert (await http.get("/v1/me", headers=bearer(created.api_key))).status_code == 200
    r = await http.patch(f"/v1/admin/tenants/{slug}", json={"status": "suspended"},
                         headers=operator_headers)
    assert r.status_code == 200 and r.json()["status"] == "suspended"
    assert_error(await http.get("/v1/me", headers=bearer(created.api_key)), 403,
                 "tenant_suspended")
    await http.patch(f"/v1/admin/tenants/{slug}", json={"status": "active"},
                     headers=operator_headers)
    assert (await http.get("/v1/me", headers=bearer(created.api_key))).status_code == 200


async def test_another_tenants_resource_is_404(http: httpx.AsyncClient,
                                               make_tenant: TenantFactory) -> None:
    a, b = await make_tenant(), await make_tenant()
    b_keys = (await http.get("/v1/api-keys", headers=bearer(b.api_key))).json()
    for ref in (b_keys[0]["id"], b_keys[0]["prefix"]):
        assert_error(await http.delete(f"/v1/api-keys/{ref}", headers=bearer(a.api_key)),
                     404, "not_found")
    assert (await http.get("/v1/me", headers=bearer(b.api_key))).status_code == 200


async def test_roles_are_enforced_per_route(http: httpx.AsyncClient,
                                            make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    owner = bearer(created.api_key)
    keys = {}
    for role in ("viewer", "trader", "admin"):
        r = await http.post("/v1/api-keys", json={"name": role, "role": role}, headers=owner)
        keys[role] = bearer(r.json()["key"])
    assert (await http.get("/v1/me", headers=keys["viewer"])).status_code == 200
    for role in ("viewer", "trader"):
        assert_error(await http.get("/v1/api-keys", headers=keys[role]), 403,
                     "insufficient_role")
        assert_error(await http.get("/v1/audit", headers=keys[role]), 403, "insufficient_role")
    assert (await http.get("/v1/api-keys", headers=keys["admin"])).status_code == 200
    # An admin cannot mint an owner key.
    assert_error(await http.post("/v1/api-keys", json={"name": "x", "role": "owner"},
                                 headers=keys["admin"]), 403, "insufficient_role", "role")
    # Tenant credentials never reach operator routes, and the operator has no tenant.
    assert_error(await http.get("/v1/admin/tenants", headers=owner), 403, "operator_required")


async def test_operator_routes(http: httpx.AsyncClient, operator_headers: dict[str, str]) -> None:
    slug = random_slug()
    body = {"name": "Acme Corp", "plan": "professional", "email": f"admin@{slug}.example.com",
            "slug": slug}
    created = await http.post("/v1/admin/tenants", json=body, headers=operator_headers)
    assert created.status_code == 201, created.text
    c = created.json()
    assert c["tenant"]["slug"] == slug and c["api_key"].startswith("atp_")
    assert c["owner_password"]
    me = await http.get("/v1/me", headers=bearer(c["api_key"]))
    assert me.json()["tenant"]["name"] == "Acme Corp"

    assert_error(await http.post("/v1/admin/tenants", json=body, headers=operator_headers),
                 409, "slug_taken", "slug")
    listed = (await http.get("/v1/admin/tenants", headers=operator_headers)).json()
    assert slug in {t["slug"] for t in listed}
    got = (await http.get(f"/v1/admin/tenants/{slug}", headers=operator_headers)).json()
    assert got["plan"] == "professional"
    patched = await http.patch(f"/v1/admin/tenants/{slug}",
                               json={"plan": "starter", "version": got["version"]},
                               headers=operator_headers)
    assert patched.json()["plan"] == "starter"
    stale = await http.patch(f"/v1/admin/tenants/{slug}",
                             json={"plan": "enterprise", "version": got["version"]},
                             headers=operator_headers)
    assert_error(stale, 409, "version_conflict", "version")
    assert_error(await http.get("/v1/admin/tenants/t-nobody", headers=operator_headers), 404)
    assert_error(await http.delete(f"/v1/admin/tenants/{slug}", headers=operator_headers),
                 422, "confirmation_required", "confirm")
    gone = await http.delete(f"/v1/admin/tenants/{slug}", params={"confirm": slug},
                             headers=operator_headers)
    assert gone.status_code == 200 and gone.json()["status"] == "deleted"
    assert_error(await http.get("/v1/me", headers=bearer(c["api_key"])), 401)
    plans = (await http.get("/v1/admin/plans", headers=operator_headers)).json()
    starter = next(p for p in plans if p["code"] == "starter")
    assert (starter["price_cents"], starter["max_bots"], starter["api_calls_per_month"]) == \
        (4900, 1, 10_000)


@pytest.mark.parametrize(("patch", "field"), [
    ({"slug": "Bad Slug"}, "slug"), ({"slug": "ab"}, "slug"), ({"email": "nope"}, "email"),
    ({"plan": "gold"}, "plan"), ({"name": ""}, "name"), ({"tenant_id": str(uuid.uuid4())},
                                                          "tenant_id"),
])
async def test_tenant_creation_bad_input_is_422_naming_the_field(
        http: httpx.AsyncClient, operator_headers: dict[str, str], patch: dict[str, str],
        field: str) -> None:
    body = {"name": "X Co", "plan": "starter", "email": "x@example.com", "slug": random_slug()}
    assert_error(await http.post("/v1/admin/tenants", json={**body, **patch},
                                 headers=operator_headers), 422, field=field)
    listed = (await http.get("/v1/admin/tenants", headers=operator_headers)).json()
    assert body["slug"] not in {t["slug"] for t in listed}


async def test_operator_routes_need_the_operator_token(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/admin/tenants"), 401, "missing_credential")
    assert_error(await http.get("/v1/admin/tenants", headers=bearer("atpop_" + "x" * 40)), 401)


async def test_audit_shows_only_the_tenants_own_trail(http: httpx.AsyncClient,
                                                      make_tenant: TenantFactory) -> None:
    a, b = await make_tenant(), await make_tenant()
    await http.post("/v1/api-keys", json={"name": "a-key"}, headers=bearer(a.api_key))
    await http.post("/v1/api-keys", json={"name": "b-key"}, headers=bearer(b.api_key))
    trail = (await http.get("/v1/audit", headers=bearer(a.api_key))).json()
    assert [e["action"] for e in trail] == ["api_key.create", "tenant.create"]
    assert [e["seq"] for e in trail] == [2, 1]
    assert all(e["target"] != b.tenant.slug for e in trail)
    assert trail[0]["actor"].startswith("api_key:")
    older = (await http.get("/v1/audit", params={"before": 2},
                            headers=bearer(a.api_key))).json()
    assert [e["seq"] for e in older] == [1]
    assert_error(await http.get("/v1/audit", params={"limit": 0}, headers=bearer(a.api_key)),
                 422, field="limit")


async def test_rate_limit_is_429_with_retry_after(http: httpx.AsyncClient,
                                                  make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="starter")  # 5 requests/s, burst 10
    started = time.monotonic()
    responses = await asyncio.gather(*(http.get("/v1/me", headers=bearer(created.api_key))
                                       for _ in range(25)))
    elapsed = time.monotonic() - started
    limited = [r for r in responses if r.status_code == 429]
    # the burst, plus what the bucket refilled while the requests were being served
    allowed = 10 + math.ceil(5 * elapsed) + 1
    assert 10 <= sum(r.status_code == 200 for r in responses) <= allowed, elapsed
    assert limited
    for r in limited:
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1


async def test_monthly_quota_is_429_quota_exceeded(http: httpx.AsyncClient,
                                                   make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="tiny")  # 3 calls a month
    for _ in range(3):
        assert (await http.get("/v1/me", headers=bearer(created.api_key))).status_code == 200
    assert_error(await http.get("/v1/me", headers=bearer(created.api_key)), 429,
                 "quota_exceeded")


async def test_unknown_route_and_method_use_the_error_shape(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await http.put("/healthz"), 405, "method_not_allowed")


async def test_password_guessing_is_throttled(http: httpx.AsyncClient,
                                              make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    for _ in range(10):
        assert_error(await http.post("/v1/auth/token", json={"email": created.owner_email,
                                                             "password": "guess guess"}),
                     401, "invalid_login")
    locked = await http.post("/v1/auth/token", json={"email": created.owner_email,
                                                     "password": "correct horse battery"})
    assert_error(locked, 429, "too_many_login_attempts")
    assert int(locked.headers["retry-after"]) > 800
    # Other users are not affected.
    other = await make_tenant()
    assert (await http.post("/v1/auth/token", json={"email": other.owner_email,
                                                    "password": "correct horse battery"})
            ).status_code == 200


async def test_last_use_of_a_key_is_recorded(http: httpx.AsyncClient,
                                             make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    owner = bearer(created.api_key)
    before = (await http.get("/v1/api-keys", headers=owner)).json()
    assert before[0]["last_used_at"] is not None  # this very request used it
    assert before[0]["created_at"] <= before[0]["last_used_at"]
