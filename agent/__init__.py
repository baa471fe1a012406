"""The local sync agent: trade on the customer's machine, keep every event, sync when online.

`atp-agent run` trades locally with the same `trading` strategies and paper broker as the
platform, writes every order, fill, position change and P&L snapshot to a SQLite outbox
first, and sends the outbox to the platform over one WebSocket when it can (protocol v1,
docs/agent.md). It imports the standard library, `trading`, `websockets` and `yaml` only
(a test enforces it): no Ray, no PostgreSQL.

Modules, one role each:

- `outbox`: the SQLite database (events with their sequence, the acknowledged watermark,
  bot configurations and working state, commands already answered).
- `config`: the agent's YAML configuration and a bot's configuration.
- `views`: the JSON payloads of order, fill, position, P&L and log events.
- `context`: `LocalContext`, the `StrategyContext` a local bot's strategy trades through.
- `bot`: `LocalBot`, one bot's strategy, paper broker and portfolio, saved and restored.
- `runner`: `Runner`, the market clock that feeds synthetic bars to the running bots and
  executes commands exactly once.
- `backoff`: reconnect delays (exponential, full jitter).
- `protocol`: the frames of protocol v1, built and checked.
- `client`: `AgentClient`, the WebSocket session: hello, welcome, batches, acks, resends,
  heartbeats, commands, reconnects.
- `cli`: the `atp-agent` console script.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("ai-trading-platform")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
