"""`AgentClient`: the agent's WebSocket session with the platform, protocol v1 (docs/agent.md).

A connection goes: `hello` (with the outbox's acknowledged watermark), `welcome` (with
the server's), then three tasks until the socket closes or the agent stops:

- the writer sends outbox events from the server's watermark + 1, in batches of at most
  `max_batch` events and 1 MiB, keeping at most `window` batches unanswered; it wakes when
  the outbox commits new events (a listener), when an answer arrives, and every
  `poll_seconds` (for events another process wrote);
- the reader handles each server frame: `ack` prunes the outbox up to `upto`; `resend`
  rewinds the writer to `from`; `error` is logged and, when it answers a batch, rewinds
  to the acknowledged watermark + 1 (never fatal: a `batch_too_large` halves the batch
  size, kept for later connections too, and after `MAX_REFUSED` other refusals in a row
  the connection is dropped and retried later); `command` runs through `commands` (which answers a
  repeated id from its record) and is answered with `command_ack`;
- the heartbeat sends `heartbeat` every `heartbeat_seconds` (the welcome's, else the
  client's own).

Each `events` frame gets exactly one answer (`ack`, `resend` or `error`), in order, so the
client counts unanswered batches. After a rewind, the answers still due for batches sent
before it are *stale*: their acks still count (acks are cumulative) but a stale `resend`
is ignored, so one gap costs one rewind. A server silent for 3 heartbeats, or a batch
unanswered for as long, drops the connection.

Between connections the client waits per `Backoff` (full jitter, 0.5 s doubling to 30 s,
reset after a connection that lasted); a 4401 or 4403 close (or an HTTP 401/403) waits the
maximum. The API key travels in the ``Authorization`` header and is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agent import __version__, protocol
from agent.backoff import Backoff
from agent.outbox import CommandResult, Outbox
from trading.errors import Invalid

log = logging.getLogger(__name__)

CLOSE_GRACE_SECONDS = 2.0  # how long a stopping agent waits for a clean close
MAX_REFUSED = 3  # batches refused in a row (error frames) before the connection is dropped
REFUSED_CODES = (protocol.CLOSE_UNAUTHENTICATED, protocol.CLOSE_FORBIDDEN)


class Commands(Protocol):
    """What runs the platform's commands (the `Runner`)."""

    def execute(self, command_id: str, command: str, args: Mapping[str, Any]) -> CommandResult: ...


class SessionFailed(Exception):
    """The connection cannot go on; reconnect after the usual delay."""


class Diverged(SessionFailed):
    """The server wants events this agent no longer has; retry only after the longest delay."""


class _Redacting(logging.LoggerAdapter):
    """The `websockets` logger with the API key blotted out (its debug log shows request headers)."""

    def __init__(self, secret: str) -> None:
        super().__init__(logging.getLogger("websockets.client"), {})
        self._secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            args = tuple(a.replace(self._secret, "***") if isinstance(a, str) else a for a in args)
            text = msg.replace(self._secret, "***") if isinstance(msg, str) else msg
            super().log(level, text, *args, **kwargs)


def _where(url: str) -> str:
    """Return `url` without its query (which may hold a token), for logs."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(query="", fragment=""))


class AgentClient:
    """Sync an outbox with the platform over one WebSocket at a time (see the module docstring)."""

    def __init__(self, outbox: Outbox, url: str, api_key: str, *, name: str,
                 commands: Commands | None = None, version: str = __version__,
                 backoff: Backoff | None = None,
                 heartbeat_seconds: float = protocol.DEFAULT_HEARTBEAT_SECONDS, window: int = 4,
                 open_timeout: float = 10.0, poll_seconds: float = 1.0) -> None:
        """Check the arguments; nothing connects until `run`."""
        if urllib.parse.urlsplit(url).scheme not in ("ws", "wss"):
            raise Invalid("the server URL must start with ws:// or wss://", field="server")
        if not isinstance(api_key, str) or not api_key.strip():
            raise Invalid("an API key is required", field="api_key")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise Invalid("name must be 1-100 characters", field="name")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise Invalid("window must be a positive integer", field="window")
        self.outbox = outbox
        self.url = url
        self._api_key = api_key
        self.name = name
        self.commands = commands
        self.version = version
        self.backoff = backoff or Backoff()
        self.heartbeat_seconds = heartbeat_seconds  # until a welcome says otherwise
        self.window = window
        self.open_timeout = open_timeout
        self.poll_seconds = poll_seconds
        self.connections = 0  # connections that got a welcome
        self.batch_cap: int | None = None  # a batch size the server refused as too large, halved
        self.last_close: tuple[int | None, str] | None = None  # (code, reason) of the last close
        self._wake: asyncio.Event | None = None
        self._welcomed = False  # whether the current connection got its welcome
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"AgentClient(url={_where(self.url)!r}, name={self.name!r})"  # never the key

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, sync and reconnect until `stop` is set; then close cleanly."""
        self._loop = asyncio.get_running_loop()
        self.outbox.add_listener(self._notify)
        try:
            while not stop.is_set():
                lasted, refused = await self._attempt(stop)
                self.backoff.connected_for(lasted)
                if stop.is_set():
                    break
                delay = self.backoff.refused() if refused else self.backoff.next_delay()
                log.info("reconnecting to %s in %.2f s", _where(self.url), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            self.outbox.remove_listener(self._notify)

    async def _attempt(self, stop: asyncio.Event) -> tuple[float, bool]:
        """Run one connection; when told to stop, let a welcomed session close cleanly, cancel the rest."""
        attempt = asyncio.create_task(self._connect_once(stop))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not attempt.done() and self._welcomed:
                await asyncio.wait({attempt}, timeout=CLOSE_GRACE_SECONDS)
            if not attempt.done():
                attempt.cancel()
            return await attempt
        except asyncio.CancelledError:
            if not attempt.done():  # the caller was cancelled: take the connection down with it
                attempt.cancel()
                raise
            return 0.0, False
        finally:
            stopper.cancel()

    def _notify(self, _seq: int) -> None:
        """Wake the writer (called after an outbox commit, possibly from another thread)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _connect_once(self, stop: asyncio.Event) -> tuple[float, bool]:
        """Hold one connection; return how long it was welcomed and whether the credential was refused."""
        loop = asyncio.get_running_loop()
        session: _Session | None = None
        try:
            async with connect(self.url, additional_headers={"Authorization": f"Bearer {self._api_key}"},
                               open_timeout=self.open_timeout, max_size=protocol.MAX_FRAME_BYTES,
                               logger=_Redacting(self._api_key)) as ws:
                session = _Session(self, ws)
                await session.run(stop)
        except ConnectionClosed as exc:
            code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
            self.last_close = (code, reason)
            if code in REFUSED_CODES:
                log.error("the server refused this agent's credential (%s %s)", code, reason)
                return self._lasted(session, loop), True
            log.warning("the connection closed (%s %s)", code, reason or "no reason")
        except InvalidStatus as exc:
            status = exc.response.status_code
            log.error("the server refused the connection: HTTP %s", status)
            return 0.0, status in (401, 403)
        except Diverged as exc:
            log.error("%s", exc)
            return self._lasted(session, loop), True
        except SessionFailed as exc:
            log.warning("%s", exc)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            log.warning("cannot connect to %s: %s", _where(self.url), exc or type(exc).__name__)
        except Exception:  # a bug must not end the agent's syncing: log it, reconnect later
            log.exception("the connection failed unexpectedly")
        finally:
            self._wake = None
            self._welcomed = False
        return self._lasted(session, loop), False

    @staticmethod
    def _lasted(session: _Session | None, loop: asyncio.AbstractEventLoop) -> float:
        if session is None or session.welcomed_at is None:
            return 0.0
        return loop.time() - session.welcomed_at


class _Session:
    """One welcomed connection: the writer, reader and heartbeat tasks and their shared state."""

    def __init__(self, client: AgentClient, ws: ClientConnection) -> None:
        self.client = client
        self.outbox = client.outbox
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        client._wake = self.wake
        self.welcomed_at: float | None = None
        self.heartbeat_seconds = client.heartbeat_seconds
        self.batch_limit = 1
        self.next_seq = 1  # the next seq to send
        self.in_flight: deque[int] = deque()  # sizes of the events frames not answered yet, oldest first
        self.stale = 0  # of those, how many were sent before the last rewind
        self.refused = 0  # batches refused in a row
        self.waiting_since: float | None = None  # when the oldest unanswered batch was sent

    async def run(self, stop: asyncio.Event) -> None:
        await self._welcome()
        tasks = {asyncio.create_task(self._reader(), name="agent-reader"),
                 asyncio.create_task(self._writer(), name="agent-writer"),
                 asyncio.create_task(self._heartbeat(), name="agent-heartbeat"),
                 asyncio.create_task(stop.wait(), name="agent-stop")}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure
        if stop.is_set():
            await self.ws.close(1000, "agent stopping")

    async def _welcome(self) -> None:
        c = self.client
        await self.ws.send(protocol.hello(self.outbox.agent_id, c.name, c.version, self.outbox.acked()))
        deadline = self.loop.time() + c.open_timeout
        frame: protocol.ServerFrame = protocol.Heartbeat(None)
        while isinstance(frame, protocol.Heartbeat):  # a heartbeat may come first: wait on
            try:
                text = await asyncio.wait_for(self.ws.recv(), max(0.0, deadline - self.loop.time()))
            except TimeoutError:
                raise SessionFailed("no welcome from the server") from None
            try:
                frame = protocol.parse(text)
            except protocol.ProtocolError as exc:
                raise SessionFailed(f"the server's first frame is not a welcome: {exc}") from None
        if isinstance(frame, protocol.Error):
            raise SessionFailed(f"the server refused the hello: {frame.code}: {frame.message}")
        if not isinstance(frame, protocol.Welcome):
            raise SessionFailed(f"expected a welcome, got {type(frame).__name__.lower()}")
        if frame.agent_id != self.outbox.agent_id:
            log.warning("the welcome names agent %s, not this agent", frame.agent_id)
        made = self.outbox.next_seq() - 1
        if frame.watermark > made:
            log.error("the server's watermark %s is beyond the last event this agent made (%s)",
                      frame.watermark, made)
        self.outbox.ack(frame.watermark)
        self.next_seq = frame.watermark + 1  # the server's watermark wins over our last ack
        self.heartbeat_seconds = frame.heartbeat_seconds or self.client.heartbeat_seconds
        self.batch_limit = min(frame.max_batch, self.client.batch_cap or frame.max_batch)
        self.welcomed_at = self.loop.time()
        c.connections += 1
        c._welcomed = True
        log.info("connected to %s (watermark %s, %s pending)", _where(c.url), frame.watermark,
                 max(0, made - frame.watermark))

    # -- the writer ---------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            self.wake.clear()
            while len(self.in_flight) < self.client.window:
                batch = self.outbox.pending(after=self.next_seq - 1, limit=self.batch_limit)
                if not batch:
                    break
                if batch[0].seq != self.next_seq:
                    if self.next_seq <= self.outbox.acked():
                        raise Diverged(f"the server asks for events from {self.next_seq}, but this agent "
                                       f"pruned every event up to {self.outbox.acked()} after the server "
                                       "acknowledged them")
                    raise SessionFailed(f"the outbox lacks event {self.next_seq}")
                text = protocol.events(batch)
                while len(text.encode()) > protocol.MAX_FRAME_BYTES and len(batch) > 1:
                    batch = batch[:len(batch) // 2]
                    text = protocol.events(batch)
                await self.ws.send(text)
                if not self.in_flight:
                    self.waiting_since = self.loop.time()
                self.in_flight.append(len(batch))
                self.next_seq = batch[-1].seq + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.client.poll_seconds)

    # -- the reader ---------------------------------------------------------------------

    async def _reader(self) -> None:
        while True:
            try:
                text = await asyncio.wait_for(self.ws.recv(), 3 * self.heartbeat_seconds)
            except TimeoutError:
                raise SessionFailed(f"nothing from the server for {3 * self.heartbeat_seconds:g} s") from None
            try:
                frame = protocol.parse(text)
            except protocol.ProtocolError as exc:
                log.warning("ignoring a frame the agent cannot read: %s", exc)
                continue
            await self._handle(frame)

    async def _handle(self, frame: protocol.ServerFrame) -> None:
        if isinstance(frame, protocol.Ack):
            self._answered()
            self.refused = 0
            acked = self.outbox.ack(frame.upto)
            if frame.upto > acked:
                log.warning("the server acknowledged up to %s, beyond the last event made (%s)",
                            frame.upto, acked)
            self.next_seq = max(self.next_seq, acked + 1)
            self.wake.set()
        elif isinstance(frame, protocol.Resend):
            if self._answered():
                log.debug("ignoring a resend from %s: it answers a batch sent before the last rewind",
                          frame.start)
            else:
                log.info("the server asks to resend from %s", frame.start)
                self._rewind(frame.start)
            self.wake.set()
        elif isinstance(frame, protocol.Error):
            self._error(frame)
        elif isinstance(frame, protocol.Command):
            await self._command(frame)
        elif isinstance(frame, protocol.Welcome):
            log.warning("ignoring a second welcome")

    def _error(self, frame: protocol.Error) -> None:
        log.warning("the server reports %s: %s%s", frame.code, frame.message,
                    f" (field {frame.field})" if frame.field else "")
        if not self.in_flight:
            return  # not about a batch
        size = self.in_flight[0]
        stale = self._answered()
        shrunk = frame.code == "batch_too_large" and size > 1
        if shrunk:
            self.batch_limit = min(self.batch_limit, size // 2)
            self.client.batch_cap = self.batch_limit  # remembered across connections
        if stale:
            return
        if not shrunk:
            self.refused += 1
        if self.refused >= MAX_REFUSED:
            raise SessionFailed(f"the server refused {self.refused} batches in a row")
        self._rewind(self.outbox.acked() + 1)
        self.wake.set()

    def _answered(self) -> bool:
        """Count one batch as answered; return whether it was sent before the last rewind."""
        if self.in_flight:
            self.in_flight.popleft()
        self.waiting_since = self.loop.time() if self.in_flight else None
        if self.stale:
            self.stale -= 1
            return True
        return False

    def _rewind(self, start: int) -> None:
        self.next_seq = max(start, 1)
        self.stale = len(self.in_flight)  # the answers still due are for batches sent before now

    async def _command(self, frame: protocol.Command) -> None:
        commands = self.client.commands
        if commands is None:
            result = CommandResult("failed", "this agent runs no bots")
        else:
            try:
                result = commands.execute(frame.command_id, frame.command, frame.args)
            except Exception as exc:
                log.exception("command %s failed", frame.command_id)
                result = CommandResult("failed", f"{type(exc).__name__}: {exc}")
        log.info("command %s %s: %s (%s)", frame.command_id, frame.command, result.status, result.detail)
        await self.ws.send(protocol.command_ack(frame.command_id, result.status, result.detail))

    # -- the heartbeat ------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            if self.waiting_since is not None and \
                    self.loop.time() - self.waiting_since > 3 * self.heartbeat_seconds:
                raise SessionFailed("a batch went unanswered for 3 heartbeats")
            await self.ws.send(protocol.heartbeat())
