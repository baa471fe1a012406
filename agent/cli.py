"""The `atp-agent` console script (argparse: the agent needs none of the platform's dependencies).

    atp-agent run --server wss://HOST/v1/agent/ws --api-key KEY [--config agent.yaml]
                  [--db PATH] [--name NAME] [--offline] [-v]
    atp-agent status [--db PATH] [--json]
    atp-agent outbox [--db PATH] [--limit N]

The API key may come from ``ATP_AGENT_API_KEY`` instead of ``--api-key`` and is never
printed; the database defaults to ``$ATP_AGENT_DB`` or ``~/.local/share/atp-agent/agent.db``.
`run` trades the configured bots and syncs until SIGINT or SIGTERM (with ``--offline`` it
only trades). A bad option or configuration exits with status 2 and a message naming the
option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent import __version__
from agent.backoff import Backoff
from agent.client import AgentClient
from agent.config import AgentConfig, load_config
from agent.outbox import Outbox, default_path, dumps, writer_lock
from agent.runner import Runner
from trading.errors import AtpError

API_KEY_ENV = "ATP_AGENT_API_KEY"
DB_HELP = "the agent database (default: $ATP_AGENT_DB or ~/.local/share/atp-agent/agent.db)"
log = logging.getLogger("agent")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="atp-agent", description="The AI Trading Platform's local agent.")
    parser.add_argument("--version", action="version", version=f"atp-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="trade the configured bots and sync with the platform")
    run.add_argument("--server", help="the gateway's agent WebSocket, e.g. wss://HOST/v1/agent/ws")
    run.add_argument("--api-key", help=f"a trader API key (default: ${API_KEY_ENV})")
    run.add_argument("--config", type=Path, help="the YAML configuration (bots, speed, heartbeat, backoff)")
    run.add_argument("--db", type=Path, default=None, help=DB_HELP)
    run.add_argument("--name", help="this agent's name on the platform (default: the host name)")
    run.add_argument("--offline", action="store_true", help="trade without connecting")
    run.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    run.set_defaults(handler=_run, parser=run)

    status = commands.add_parser("status", help="show the agent id, sequence, acked and pending events, bots")
    status.add_argument("--db", type=Path, default=None, help=DB_HELP)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_status, parser=status)

    outbox = commands.add_parser("outbox", help="print the pending events, one JSON object a line")
    outbox.add_argument("--db", type=Path, default=None, help=DB_HELP)
    outbox.add_argument("--limit", type=_positive_int, default=20, help="at most this many (default 20)")
    outbox.set_defaults(handler=_outbox, parser=outbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    sub: argparse.ArgumentParser = args.parser
    try:
        return int(args.handler(sub, args))
    except AtpError as exc:  # anything not caught where its option is known
        sub.error(f"{_option(exc.field)}{exc.message}")


def _option(field: str | None) -> str:
    options = {"db": "--db", "server": "--server", "api_key": "--api-key", "name": "--name"}
    if field is None:
        return ""
    return f"{options.get(field, '--config')}: " if field in options else f"--config: {field}: "


def _db(args: argparse.Namespace) -> Path:
    return Path(args.db).expanduser() if args.db else default_path()


# -- run ----------------------------------------------------------------------------------------

def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    if not args.offline:
        if not args.server:
            parser.error("--server is required (or --offline)")
        if urllib.parse.urlsplit(args.server).scheme not in ("ws", "wss"):
            parser.error("--server must start with ws:// or wss://")
        if not api_key:
            parser.error(f"--api-key (or ${API_KEY_ENV}) is required")
    config = AgentConfig()
    if args.config is not None:
        try:
            config = load_config(args.config)
        except AtpError as exc:
            parser.error(f"--config: {exc.message}")
    name = args.name or config.name or socket.gethostname()[:100] or "atp-agent"
    if not 1 <= len(name) <= 100:
        parser.error("--name must be 1-100 characters")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # its debug log shows request headers
    db = _db(args)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(writer_lock(db))
            outbox = stack.enter_context(Outbox(db))
        except AtpError as exc:
            parser.error(f"--db: {exc.message}")
        client = None
        if not args.offline:
            try:
                client = AgentClient(outbox, args.server, api_key or "", name=name,
                                     backoff=Backoff(config.backoff),
                                     heartbeat_seconds=config.heartbeat_seconds)
            except AtpError as exc:
                parser.error(f"{_option(exc.field)}{exc.message}")
        runner = Runner(outbox, seed=config.seed, interval=config.interval, speed=config.speed,
                        start=config.start, fee_bps=config.fee_bps, slippage_bps=config.slippage_bps)
        runner.configure(config.bots)
        if client is not None:
            client.commands = runner
        log.info("agent %s (%s) running %d bot(s) on %s%s", outbox.agent_id, name, len(runner.running),
                 outbox.path, "; offline" if client is None else "")
        asyncio.run(_serve(runner, client))
    return 0


async def _serve(runner: Runner, client: AgentClient | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: only SIGINT, as KeyboardInterrupt
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    tasks = [runner.run(stop)] + ([client.run(stop)] if client is not None else [])
    await asyncio.gather(*tasks)
    log.info("stopped")


# -- status and outbox ----------------------------------------------------------------------

def _status(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        outbox = Outbox(_db(args), readonly=True)
    except AtpError as exc:
        parser.error(f"--db: {exc.message}")
    with outbox:
        stats = outbox.stats()
        clock = outbox.clock()
        bots = [_bot_summary(outbox, b.config.name) for b in outbox.bots()]
    report = {"agent_id": stats.agent_id, "db": str(outbox.path), "next_seq": stats.next_seq,
              "acked": stats.acked, "pending": stats.pending, "oldest_pending_seq": stats.oldest_pending_seq,
              "oldest_pending_at": stats.oldest_pending_at,
              "clock": None if clock is None else clock.isoformat(), "bots": bots}
    if args.json:
        print(dumps(report))
        return 0
    print(f"agent id:      {stats.agent_id}")
    print(f"database:      {outbox.path}")
    print(f"events made:   {stats.next_seq - 1} (next seq {stats.next_seq})")
    print(f"acknowledged:  {stats.acked}")
    oldest = f" (oldest: #{stats.oldest_pending_seq} at {stats.oldest_pending_at})" if stats.pending else ""
    print(f"pending:       {stats.pending}{oldest}")
    print(f"market clock:  {report['clock'] or 'not started'}")
    print(f"bots:          {len(bots) or 'none'}")
    for bot in bots:
        line = (f"  {bot['name']:<20} {bot['status']:<8} {bot['strategy']} {','.join(bot['symbols'])}"
                f"  cash {bot['cash']}  open orders {bot['open_orders']}  last bar {bot['last_bar_at']}")
        print(line + (f"  error: {bot['error']}" if bot["error"] else ""))
    return 0


def _bot_summary(outbox: Outbox, name: str) -> dict[str, Any]:
    stored = outbox.bot(name)
    assert stored is not None
    state = outbox.bot_state(name) or {}
    return {**stored.config.to_dict(), "status": stored.status, "error": stored.error,
            "cash": state.get("cash", str(stored.config.capital)),
            "positions": [p for p in state.get("positions", []) if Decimal(p["quantity"]) != 0],
            "open_orders": len(state.get("orders", [])), "last_bar_at": state.get("last_bar_at")}


def _outbox(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        outbox = Outbox(_db(args), readonly=True)
    except AtpError as exc:
        parser.error(f"--db: {exc.message}")
    with outbox:
        for event in outbox.pending(limit=args.limit):
            print(json.dumps(event.to_frame(), separators=(",", ":"), ensure_ascii=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
