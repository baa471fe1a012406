"""Start and stop the platform's parts: PostgreSQL, Redis, Ray, Serve.

What the settings name is used as is; what they leave unset is started here (embedded
PostgreSQL and Redis, a local Ray) and stopped again by `Runtime.close`, in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Collection
from types import FrameType

from serve.embedded import EmbeddedPostgres, EmbeddedRedis
from tenancy.db import short_lived
from tenancy.migrate import SchemaReport, migrate_all
from tenancy.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)


def cluster_settings(**overrides: object) -> Settings:
    """The settings of a cluster deployment: from the environment, external services required
    (the embedded PostgreSQL and Redis run on one machine only)."""
    settings = load_settings(**overrides)
    for name in ("database_url", "redis_url"):
        if getattr(settings, name) is None:
            variable = f"ATP_{name.upper()}"
            raise SettingsError(f"{variable} must name an external server on a cluster "
                                "(the embedded servers run on one machine only)", field=variable)
    return settings


class Runtime:
    """Owns whatever it started; `settings` always holds resolved URLs once opened."""

    def __init__(self, settings: Settings) -> None:
        if settings.ray_address and (settings.embedded_database or settings.embedded_redis):
            raise SettingsError(
                "with RAY_ADDRESS set (a remote Ray cluster) the platform needs external "
                "servers: set ATP_DATABASE_URL and ATP_REDIS_URL",
                field="ATP_DATABASE_URL" if settings.embedded_database else "ATP_REDIS_URL")
        self.settings = settings
        self._stops: list[tuple[str, Callable[[], None]]] = []

    def open_database(self) -> Settings:
        if self.settings.database_url is None:
            pg = EmbeddedPostgres.start(self.settings.data_dir)
            self._stops.append(("postgres", pg.stop))
            self.settings = self.settings.model_copy(update={"database_url": pg.url})
        return self.settings

    def open_redis(self) -> Settings:
        if self.settings.redis_url is None:
            redis = EmbeddedRedis.start(self.settings.data_dir)
            self._stops.append(("redis", redis.stop))
            self.settings = self.settings.model_copy(update={"redis_url": redis.url})
        return self.settings

    def migrate(self, on_report: Callable[[SchemaReport], None] | None = None
                ) -> list[SchemaReport]:
        assert self.settings.database_url is not None

        async def run() -> list[SchemaReport]:
            async with short_lived(self.settings.database_url) as db:
                return await migrate_all(db, on_report)

        return asyncio.run(run())

    def start_ray(self) -> None:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.settings.ray_address:
            ray.init(address=self.settings.ray_address, namespace="atp-system")
        else:
            ray.init(address="local", namespace="atp-system",
                     num_cpus=self.settings.ray_num_cpus,
                     include_dashboard=self.settings.ray_include_dashboard)
        self._stops.append(("ray", ray.shutdown))

    def start_gateway(self) -> str:
        """Start Serve's HTTP proxy, deploy the model endpoint and the gateway; return its URL."""
        from ray import serve

        from models.serving import MODELS_APP
        from serve.app import GATEWAY_APP, build_app
        from serve.models_app import build_models_app

        serve.start(http_options={"host": self.settings.http_host,
                                  "port": self.settings.http_port})
        if self.settings.ray_address:
            # A shared cluster: take our Serve applications down gracefully, leave the rest.
            self._stops.append(("serve", serve.shutdown))
        # On our own local cluster `ray.shutdown()` ends everything at once, Serve included:
        # its graceful shutdown would wait on a busy feed and bots for no benefit. Their state
        # is in PostgreSQL, and bots marked running start again with the next `up`.
        serve.run(build_models_app(self.settings), name=MODELS_APP, route_prefix=None)
        serve.run(build_app(self.settings), name=GATEWAY_APP, route_prefix="/")
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    def start_collector(self) -> None:
        """Start the metering collector (a detached system actor; kept if it runs)."""
        from billing.collector import get_or_create_collector

        get_or_create_collector(self.settings, interval=self.settings.metering_interval_seconds,
                                quota_samples=self.settings.quota_watch_samples)

    def reconcile_bots(self, slugs: Collection[str] | None = None) -> list[str]:
        """Restart bots that were running when the platform last stopped (of `slugs` only, if given)."""
        from actors.supervisor import reconcile

        async def run() -> list[str]:
            async with short_lived(self.settings.database_url) as db:
                return await reconcile(self.settings, db, slugs)

        return asyncio.run(run())

    def close(self) -> None:
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception:
                log.exception("stopping %s failed", name)


class ShutdownSignal:
    """SIGINT/SIGTERM set a flag instead of killing the process mid-way.

    Install it before starting anything and again after ``ray.init`` (which replaces the
    SIGTERM handler); a signal that arrives during start-up is honoured once it ends.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.install()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self) -> None:
        while not self._event.wait(1.0):
            pass
