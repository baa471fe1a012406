from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from tenancy.settings import SettingsError, load_settings

GOOD = {"jwt_secret": "j" * 40, "operator_token": "o" * 40,
        "master_key": base64.b64encode(os.urandom(32)).decode()}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ATP_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("missing", ["jwt_secret", "master_key", "operator_token"])
def test_missing_secret_is_refused_outside_dev_mode(missing: str, tmp_path: Path) -> None:
    values = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(SettingsError) as info:
        load_settings(data_dir=tmp_path, **values)
    assert info.value.field == f"ATP_{missing.upper()}"


@pytest.mark.parametrize("placeholder", ["changeme", "secret", "changethis", "short"])
def test_placeholder_secret_is_refused_outside_dev_mode(placeholder: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(data_dir=tmp_path, **{**GOOD, "jwt_secret": placeholder})
    assert info.value.field == "ATP_JWT_SECRET"


def test_master_key_must_be_32_bytes(tmp_path: Path) -> None:
    bad = base64.b64encode(os.urandom(16)).decode() + "x" * 20
    with pytest.raises(SettingsError) as info:
        load_settings(data_dir=tmp_path, **{**GOOD, "master_key": bad})
    assert info.value.field == "ATP_MASTER_KEY"


def test_environment_is_read_with_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_JWT_SECRET", GOOD["jwt_secret"])
    monkeypatch.setenv("ATP_OPERATOR_TOKEN", GOOD["operator_token"])
    monkeypatch.setenv("ATP_MASTER_KEY", GOOD["master_key"])
    monkeypatch.setenv("ATP_HTTP_PORT", "9100")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    s = load_settings(data_dir=tmp_path)
    assert s.http_port == 9100 and s.ray_address == "ray://head:10001"
    assert s.embedded_database and s.embedded_redis
    assert "j" * 40 not in repr(s)


def test_database_url_is_normalised_to_asyncpg(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, database_url="postgresql://u@h/db", **GOOD)
    assert s.database_url == "postgresql+asyncpg://u@h/db"


def test_dev_mode_generates_secrets_once_with_mode_600(tmp_path: Path) -> None:
    first = load_settings(dev_mode=True, data_dir=tmp_path)
    second = load_settings(dev_mode=True, data_dir=tmp_path)
    path = tmp_path / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for name in ("jwt_secret", "master_key", "operator_token"):
        assert first.secret(name) == second.secret(name)
    assert len(first.master_key_bytes) == 32


def test_dev_mode_keeps_explicit_values(tmp_path: Path) -> None:
    s = load_settings(dev_mode=True, data_dir=tmp_path, jwt_secret="changeme")
    assert s.secret("jwt_secret") == "changeme"
