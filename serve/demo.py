"""The demo tenant: created once, given a fresh API key on every run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tenancy import api_keys
from tenancy.auth import notify_auth_change
from tenancy.db import Database
from tenancy.roles import Role
from tenancy.tenants import get_tenant, provision
from trading.errors import NotFound

DEMO_SLUG = "demo"
DEMO_EMAIL = "demo@example.com"
DEMO_KEY_NAME = "demo"
DEMO_ACTOR = "demo"


@dataclass(frozen=True)
class DemoTenant:
    slug: str
    api_key: str
    created: bool
    owner_password: str | None


async def ensure_demo_tenant(db: Database, master_key: bytes) -> DemoTenant:
    """Provision the demo tenant if absent; revoke keys of earlier runs and mint a new one."""
    async with db.platform() as uow:
        try:
            tenant = await get_tenant(uow.conn, DEMO_SLUG)
        except NotFound:
            tenant = None
    if tenant is None:
        created = await provision(db, master_key, name="Demo Trading Co", plan="professional",
                                  email=DEMO_EMAIL, slug=DEMO_SLUG, actor=DEMO_ACTOR)
        await seed_demo_history(db, created.tenant.id)
        return DemoTenant(DEMO_SLUG, created.api_key, True, created.owner_password)
    async with db.platform() as uow:
        await uow.conn.execute(
            text("UPDATE platform.api_keys SET revoked_at = now() WHERE tenant_id = :t"
                 " AND created_by = :actor AND revoked_at IS NULL"),
            {"t": tenant.id, "actor": DEMO_ACTOR})
        await notify_auth_change(uow.conn, tenant.id)
        key = await api_keys.create_key(uow.conn, tenant.id, name=DEMO_KEY_NAME,
                                        role=Role.OWNER, actor=DEMO_ACTOR,
                                        actor_role=Role.OWNER)
        await uow.commit()
    return DemoTenant(DEMO_SLUG, key.plaintext, False, None)


DEMO_BOTS: tuple[dict[str, Any], ...] = (
    {"name": "demo-sma-btc", "strategy": "sma_crossover", "symbols": ["BTC-USD"],
     "params": {"fast": 3, "slow": 8, "quantity": "0.05"}, "capital": "100000",
     "resources": {"num_cpus": 0.1, "memory_mb": 256}},
    {"name": "demo-rsi-eth", "strategy": "rsi_mean_reversion", "symbols": ["ETH-USD"],
     "params": {"period": 6, "quantity": "1"}, "capital": "100000",
     "resources": {"num_cpus": 0.1, "memory_mb": 256}},
)
FEED_SPEED = 60.0  # one-minute bars, one per second
DEMO_MODEL = "demo_trend"


def demo_model_request(now: datetime | None = None) -> dict[str, Any]:
    """A small model of the next 5 one-minute bars of BTC-USD (the demo feed's symbol and
    interval), trained on a week of synthetic bars: about a minute on two cores."""
    end = (now or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"name": DEMO_MODEL, "architecture": "mlp", "symbol": "BTC-USD",
            "from": (end - timedelta(days=7)).isoformat(), "to": end.isoformat(),
            "data": {"source": "synthetic", "seed": 7, "interval": "1m"},
            "features": {"features": ["log_return", "volatility", "rsi", "macd", "volume_z"]},
            "label": {"kind": "direction", "horizon": 5}, "lookback": 16,
            "hyper": {"hidden": [32, 16], "dropout": 0.1},
            "training": {"epochs": 8, "patience": 2, "batch_size": 256},
            "resources": {"num_cpus": 0.5, "memory_mb": 1536}}


def demo_model_steps(url: str, key: str, version: int) -> list[str]:
    """The commands that take the demo model from training to a bot trading on it.

    The synthetic bars are a random walk, so the demo model is barely better than chance
    (test AUC about 0.53) and its scores stay near 0.5: the bot's thresholds are close to
    0.5 so that it trades within a few minutes. It scores its first bar once it holds the
    model's window of bars (about 50 one-minute bars: under a minute of the demo feed)."""
    auth = f"-H 'Authorization: Bearer {key}'"
    json_ = "-H 'content-type: application/json'"
    bot = ('{"name": "demo-model-btc", "strategy": "model_signal", "symbols": ["BTC-USD"], '
           f'"params": {{"model": "{DEMO_MODEL}", "enter": 0.52, "exit": 0.48, "quantity": "0.05"}}, '
           '"capital": "100000"}')
    return [
        f"curl -s {auth} {url}/v1/models/{DEMO_MODEL}/versions/{version}   # until status is ready",
        f"curl -s {auth} {json_} {url}/v1/models/{DEMO_MODEL}/versions/{version}/promote "
        + """-d '{"stage": "production"}'""",
        f"curl -s {auth} {json_} {url}/v1/models/{DEMO_MODEL}/predict " + """-d '{"symbol": "BTC-USD"}'""",
        f"curl -s {auth} {json_} {url}/v1/bots -d '{bot}'",
        f"curl -s -X POST {auth} {url}/v1/bots/BOT_ID/start   # BOT_ID: the id the last call returned",
        f"curl -s {auth} '{url}/v1/orders?bot_id=BOT_ID'",
    ]


async def start_demo_bots(settings: Any, db: Database, slug: str) -> list[Any]:
    """Start the feed (synthetic bars at 60x) and the two demo bots; return the bots."""
    from actors import supervisor
    from actors.bots import BotSpec, BotStore
    from actors.feed import get_or_create_feed
    from tenancy.plans import get_plan

    async with db.platform() as uow:
        tenant = await get_tenant(uow.conn, slug)
        plan = await get_plan(uow.conn, tenant.plan)
    feed = get_or_create_feed(settings, speed=FEED_SPEED, autostart=True,
                              symbols=["BTC-USD", "ETH-USD"])
    await feed.start.remote()
    store = BotStore(db, tenant.id, slug)
    existing = {b.name: b for b in await store.list()}
    started = []
    for spec in DEMO_BOTS:
        bot = existing.get(str(spec["name"])) or await store.create(BotSpec.validate(spec))
        if bot.status != "running":
            bot = await supervisor.start_bot(settings, db, tenant.id, slug, plan, bot.id)
        started.append(bot)
    return started


async def demo_pnl(db: Database, slug: str) -> list[str]:
    """One line per demo bot: fills, position, cash and equity at the last bar's close."""
    from actors.bots import BotStore

    async with db.platform() as uow:
        tenant = await get_tenant(uow.conn, slug)
    lines = []
    async with db.tenant(tenant.id, slug) as uow:
        c = uow.conn
        for bot in await BotStore(db, tenant.id, slug).list():
            if not bot.name.startswith("demo-"):
                continue
            account = f"bot:{bot.id}"
            cash = (await c.execute(text("SELECT cash FROM accounts WHERE account = :a"),
                                    {"a": account})).scalar_one()
            fills = (await c.execute(text("SELECT count(*) FROM fills WHERE account = :a"),
                                     {"a": account})).scalar_one()
            marked = (await c.execute(text(
                "SELECT coalesce(sum(p.quantity * b.close), 0) FROM positions p"
                " CROSS JOIN LATERAL (SELECT close FROM market.bars WHERE symbol = p.symbol"
                " ORDER BY ts DESC LIMIT 1) b WHERE p.account = :a"), {"a": account})
            ).scalar_one()
            equity = cash + marked
            lines.append(f"{bot.name:<14} {bot.status:<8} fills {fills:>3}  "
                         f"equity {equity:,.2f}  P&L {equity - bot.capital:+,.2f}")
    return lines


async def demo_usage(db: Database, slug: str) -> list[str]:
    """The demo tenant's metered usage this month so far, one line per meter."""
    from billing import ledger

    async with db.platform() as uow:
        tenant = await get_tenant(uow.conn, slug)
        start, end = ledger.usage_range(None, None)
        rows = await ledger.usage(uow.conn, start, end, "month", tenant_id=tenant.id)
    return [f"{r.meter:<22} {r.quantity:>16,.3f} {ledger.METERS[r.meter][0]:<6} "
            f"({r.samples} samples)" for r in rows]


def demo_history_month(today: date | None = None) -> date:
    """The month before this one: the demo tenant's seeded history, ready to be closed."""
    first = (today or datetime.now(UTC).date()).replace(day=1)
    return (first - timedelta(days=1)).replace(day=1)


async def seed_demo_history(db: Database, tenant_id: Any) -> None:
    """Give the new demo tenant last month's usage, labelled ``demo-history``, so that a
    finished month can be closed into an invoice at once. Per day: 4,000 API calls, 40
    CPU-hours, 12 GB stored — a little over the professional plan, so the invoice shows
    overage lines. The tenant's creation is backdated to that month's first day."""
    from billing import ledger
    from billing.ledger import GB, Sample

    month = demo_history_month()
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    days = (ledger.month_end(month) - month).days
    samples = []
    for d in range(days):
        day = start + timedelta(days=d)
        window = (day, day + timedelta(days=1))
        samples += [Sample(tenant_id, "api_calls", *window, "demo-history", Decimal(4000)),
                    Sample(tenant_id, "cpu_seconds", *window, "demo-history",
                           Decimal(40 * 3600)),
                    Sample(tenant_id, "storage_gb_seconds", *window, "demo-history",
                           Decimal(12_000_000_000) / GB * 86400)]
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "UPDATE platform.tenants SET created_at = :c WHERE id = :t"),
            {"c": start, "t": tenant_id})
        await ledger.record(uow.conn, samples)
        await uow.commit()
