"""The agent's SQLite database: the outbox of events, bots, and commands already answered.

One file (default ``~/.local/share/atp-agent/agent.db``) in WAL mode, so one writer
process (`atp-agent run`) and any number of readers (`atp-agent status`) work at once.

Schema (``PRAGMA user_version`` = 1):

    meta      one row: agent_id (a UUID made once), next_seq (the next event's number),
              acked (the highest seq the server acknowledged), clock (the market clock)
    events    seq INTEGER PRIMARY KEY, kind, at (ISO-8601 with offset), data (JSON object)
    bots      name PRIMARY KEY, strategy, symbols (JSON), params (JSON), capital, status
              (running or stopped), error, updated_at
    bot_state name PRIMARY KEY, state (JSON: cash, positions, open orders, last bar)
    commands  command_id PRIMARY KEY, command, args (JSON), status (done or failed),
              detail, at

Sequence numbers come from ``meta.next_seq``, updated in the same transaction as the
insert, so a number is never reused, not even after every event was pruned (SQLite
would otherwise hand out ``max(seq) + 1`` again). `ack` prunes acknowledged events at
once: the server stored them, and `atp-agent status` shows what is still pending.

Writes go through `transaction()`; `append` and friends join an open transaction, so a
caller can make several writes atomic (the runner writes a bar's events together with
the bots' state). Listeners added with `add_listener` are called with the last seq after
each commit that added events, in the committing thread.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent.config import STATUSES, BotConfig
from trading.errors import Conflict, Invalid

KINDS = frozenset({"order", "fill", "position", "pnl", "log"})
DEFAULT_PATH = Path("~/.local/share/atp-agent/agent.db")
MAX_DATA_BYTES = 64 * 1024  # so that any single event fits in a 1 MiB frame with room to spare
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    agent_id TEXT NOT NULL,
    next_seq INTEGER NOT NULL CHECK (next_seq >= 1),
    acked INTEGER NOT NULL CHECK (acked >= 0),
    clock TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('order', 'fill', 'position', 'pnl', 'log')),
    at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bots (
    name TEXT PRIMARY KEY,
    strategy TEXT NOT NULL,
    symbols TEXT NOT NULL,
    params TEXT NOT NULL,
    capital TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'stopped')),
    error TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bot_state (
    name TEXT PRIMARY KEY REFERENCES bots (name),
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    detail TEXT,
    at TEXT NOT NULL
);
"""

Listener = Callable[[int], None]
log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    """Return compact JSON; Decimals and datetimes become strings."""
    return json.dumps(value, separators=(",", ":"), default=_encode, ensure_ascii=False)


@dataclass(frozen=True)
class Event:
    """One outbox event, as sent in an `events` frame."""

    seq: int
    kind: str
    at: str
    data: dict[str, Any]

    def to_frame(self) -> dict[str, Any]:
        """Return the event as protocol v1 sends it: ``{seq, kind, at, data}``."""
        return {"seq": self.seq, "kind": self.kind, "at": self.at, "data": self.data}


@dataclass(frozen=True)
class OutboxStats:
    """Where the outbox stands."""

    agent_id: str
    next_seq: int
    acked: int
    pending: int
    oldest_pending_seq: int | None
    oldest_pending_at: str | None


@dataclass(frozen=True)
class StoredBot:
    """A bot's configuration with its status and the error that stopped it, if any."""

    config: BotConfig
    status: str
    error: str | None
    updated_at: str


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: ``done`` or ``failed``, with an optional detail (≤ 1000 chars)."""

    status: str
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.status not in ("done", "failed"):
            raise Invalid("status must be done or failed", field="status")
        if self.detail is not None:
            object.__setattr__(self, "detail", self.detail[:1000])


class Outbox:
    """The agent's database (see the module docstring). Not shared across threads."""

    def __init__(self, path: str | Path = DEFAULT_PATH, *, readonly: bool = False) -> None:
        """Open (and, unless `readonly`, create) the database at `path`.

        A read-only outbox refuses to open a file that does not exist (`Invalid`, field
        ``db``) and never writes.
        """
        self.path = Path(path).expanduser().resolve()
        self.readonly = readonly
        self._depth = 0
        self._added: int | None = None  # the last seq appended in the open transaction
        self._listeners: list[Listener] = []
        if readonly and not self.path.is_file():
            raise Invalid(f"no agent database at {self.path}", field="db")
        try:
            if readonly:
                self._conn = sqlite3.connect(self.path.as_uri() + "?mode=ro", uri=True, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.path, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                self._create()
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except (sqlite3.DatabaseError, OSError) as exc:
            raise Invalid(f"cannot open {self.path} as an agent database: {exc}", field="db") from None
        if version != SCHEMA_VERSION:
            self._conn.close()
            raise Invalid(f"{self.path} is not an agent database of schema version {SCHEMA_VERSION}",
                          field="db")
        self.agent_id: str = self._meta()["agent_id"]

    def _create(self) -> None:
        self._conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed event survives a power cut, so its seq can never be handed out twice
        self._conn.execute("PRAGMA synchronous = FULL")
        with self.transaction():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # statement by statement: executescript would commit the open transaction
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(
                    "INSERT INTO meta (id, agent_id, next_seq, acked, created_at) VALUES (1, ?, 1, 0, ?)",
                    (str(uuid.uuid4()), _now()))
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make the writes inside atomic; a nested call joins the outer transaction."""
        if self.readonly:
            raise Conflict("this outbox was opened read-only", field="db")
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._added = None
            self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._conn.execute("COMMIT")
        added, self._added = self._added, None
        if added is not None:
            for listener in list(self._listeners):
                try:
                    listener(added)
                except Exception:  # the events are stored; a listener's failure is its own
                    log.exception("an outbox listener failed")

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(last_seq)` after every commit that appended events."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _meta(self) -> dict[str, Any]:
        row = self._conn.execute("SELECT agent_id, next_seq, acked, clock FROM meta WHERE id = 1").fetchone()
        if row is None:
            raise Invalid(f"{self.path} has no agent id", field="db")
        return {"agent_id": row[0], "next_seq": row[1], "acked": row[2], "clock": row[3]}

    # -- events -----------------------------------------------------------------------------

    def append(self, kind: str, data: Mapping[str, Any], at: datetime | None = None) -> int:
        """Add an event and return its seq; `kind` must be one of `KINDS`, `data` a mapping."""
        if kind not in KINDS:
            raise Invalid(f"kind must be one of {', '.join(sorted(KINDS))}", field="kind")
        if not isinstance(data, Mapping):
            raise Invalid("data must be a mapping", field="data")
        if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
            raise Invalid("at must be a timezone-aware datetime", field="at")
        text = dumps(dict(data))
        if len(text.encode()) > MAX_DATA_BYTES:
            raise Invalid(f"data must be at most {MAX_DATA_BYTES} bytes of JSON", field="data")
        stamp = (at or datetime.now(UTC)).isoformat()
        with self.transaction():
            seq = self._conn.execute("SELECT next_seq FROM meta WHERE id = 1").fetchone()[0]
            self._conn.execute("INSERT INTO events (seq, kind, at, data) VALUES (?, ?, ?, ?)",
                               (seq, kind, stamp, text))
            self._conn.execute("UPDATE meta SET next_seq = ? WHERE id = 1", (seq + 1,))
            self._added = seq
        return int(seq)

    def pending(self, after: int | None = None, limit: int = 100) -> list[Event]:
        """Return up to `limit` events with seq > `after` (default: the acked watermark), oldest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise Invalid("limit must be a positive integer", field="limit")
        start = self.acked() if after is None else after
        rows = self._conn.execute(
            "SELECT seq, kind, at, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (start, limit))
        return [Event(seq, kind, at, json.loads(data)) for seq, kind, at, data in rows]

    def ack(self, upto: int) -> int:
        """Record that the server stored every event up to `upto`; prune them; return the watermark.

        The watermark only grows: a lower `upto` changes nothing, and one beyond the last
        event made is capped at it.
        """
        if isinstance(upto, bool) or not isinstance(upto, int) or upto < 0:
            raise Invalid("upto must be a non-negative integer", field="upto")
        with self.transaction():
            meta = self._meta()
            acked = max(meta["acked"], min(upto, meta["next_seq"] - 1))
            if acked != meta["acked"]:
                self._conn.execute("UPDATE meta SET acked = ? WHERE id = 1", (acked,))
                self._conn.execute("DELETE FROM events WHERE seq <= ?", (acked,))
        return int(acked)

    def next_seq(self) -> int:
        """Return the seq the next event will get."""
        return int(self._meta()["next_seq"])

    def acked(self) -> int:
        """Return the highest seq the server acknowledged."""
        return int(self._meta()["acked"])

    def stats(self) -> OutboxStats:
        """Return the agent id, next seq, acked watermark and what is pending, in one read."""
        with self._read():
            meta = self._meta()
            count, first = self._conn.execute(
                "SELECT count(*), min(seq) FROM events WHERE seq > ?", (meta["acked"],)).fetchone()
            oldest = None if first is None else self._conn.execute(
                "SELECT at FROM events WHERE seq = ?", (first,)).fetchone()[0]
        return OutboxStats(agent_id=meta["agent_id"], next_seq=meta["next_seq"], acked=meta["acked"],
                           pending=count, oldest_pending_seq=first, oldest_pending_at=oldest)

    @contextmanager
    def _read(self) -> Iterator[None]:
        """Read several statements from one snapshot."""
        if self._depth:
            yield
            return
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    # -- the market clock -------------------------------------------------------------------

    def clock(self) -> datetime | None:
        """Return the runner's market clock (the time of the next bar), if it was ever set."""
        value = self._meta()["clock"]
        return None if value is None else datetime.fromisoformat(value)

    def set_clock(self, ts: datetime) -> None:
        """Store the runner's market clock."""
        with self.transaction():
            self._conn.execute("UPDATE meta SET clock = ? WHERE id = 1", (ts.isoformat(),))

    # -- bots -------------------------------------------------------------------------------

    def save_bot(self, config: BotConfig, status: str | None = None) -> StoredBot:
        """Add or update a bot's configuration; `status` None keeps a known bot's (a new one runs)."""
        if status is not None and status not in STATUSES:
            raise Invalid("status must be running or stopped", field="status")
        with self.transaction():
            known = self.bot(config.name)
            self._conn.execute(
                "INSERT INTO bots (name, strategy, symbols, params, capital, status, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET strategy = excluded.strategy,"
                " symbols = excluded.symbols, params = excluded.params, capital = excluded.capital,"
                " status = excluded.status, updated_at = excluded.updated_at",
                (config.name, config.strategy, dumps(list(config.symbols)), dumps(dict(config.params)),
                 str(config.capital), status or (known.status if known else "running"), _now()))
            saved = self.bot(config.name)
        assert saved is not None
        return saved

    def set_bot_status(self, name: str, status: str, error: str | None = None) -> None:
        """Set a known bot's status (and the error that stopped it, or None)."""
        if status not in STATUSES:
            raise Invalid("status must be running or stopped", field="status")
        with self.transaction():
            changed = self._conn.execute(
                "UPDATE bots SET status = ?, error = ?, updated_at = ? WHERE name = ?",
                (status, error, _now(), name)).rowcount
        if not changed:
            raise Invalid(f"unknown bot {name!r}", field="bot")

    def bot(self, name: str) -> StoredBot | None:
        """Return the bot called `name`, or None."""
        row = self._conn.execute("SELECT name, strategy, symbols, params, capital, status, error, updated_at"
                                 " FROM bots WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._stored(row)

    def bots(self) -> list[StoredBot]:
        """Return every bot, by name."""
        rows = self._conn.execute("SELECT name, strategy, symbols, params, capital, status, error, updated_at"
                                  " FROM bots ORDER BY name").fetchall()
        return [self._stored(row) for row in rows]

    @staticmethod
    def _stored(row: tuple[Any, ...]) -> StoredBot:
        name, strategy, symbols, params, capital, status, error, updated_at = row
        config = BotConfig(name=name, strategy=strategy, symbols=json.loads(symbols),
                           params=json.loads(params), capital=Decimal(capital))
        return StoredBot(config=config, status=status, error=error, updated_at=updated_at)

    def bot_state(self, name: str) -> dict[str, Any] | None:
        """Return a bot's saved working state, or None."""
        row = self._conn.execute("SELECT state FROM bot_state WHERE name = ?", (name,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def save_bot_state(self, name: str, state: Mapping[str, Any]) -> None:
        """Replace a bot's saved working state."""
        with self.transaction():
            self._conn.execute("INSERT INTO bot_state (name, state) VALUES (?, ?)"
                               " ON CONFLICT (name) DO UPDATE SET state = excluded.state",
                               (name, dumps(dict(state))))

    # -- commands ---------------------------------------------------------------------------

    def command_result(self, command_id: str) -> CommandResult | None:
        """Return how the command `command_id` ended, or None if it was never seen."""
        row = self._conn.execute("SELECT status, detail FROM commands WHERE command_id = ?",
                                 (command_id,)).fetchone()
        return None if row is None else CommandResult(row[0], row[1])

    def record_command(self, command_id: str, command: str, args: Mapping[str, Any],
                       result: CommandResult) -> None:
        """Remember a command's result, so that a repeated delivery is answered, not done again."""
        with self.transaction():
            self._conn.execute("INSERT INTO commands (command_id, command, args, status, detail, at)"
                               " VALUES (?, ?, ?, ?, ?, ?)",
                               (command_id, command, dumps(dict(args)), result.status, result.detail, _now()))


@contextmanager
def writer_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` so that only one process writes the outbox.

    Raise `Conflict` (field ``db``) when another process holds it. Where the platform has
    no `fcntl` (Windows) the lock is not taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    lock_path = Path(path).expanduser().resolve().with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"another atp-agent is running on {path}", field="db") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_path() -> Path:
    """Return the database path: ``$ATP_AGENT_DB`` or ``~/.local/share/atp-agent/agent.db``."""
    return Path(os.environ.get("ATP_AGENT_DB") or DEFAULT_PATH).expanduser()
