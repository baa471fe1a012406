"""Protocol v1 frames (docs/agent.md): the agent's, built as JSON text; the server's, checked.

Agent → server: `hello`, `events`, `heartbeat`, `command_ack`. Server → agent:
`welcome`, `ack`, `resend`, `heartbeat`, `command`, `error`; `parse` turns each into a
frozen dataclass or raises `ProtocolError` naming the field at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.outbox import Event, dumps

VERSION = 1
MAX_FRAME_BYTES = 1024 * 1024
DEFAULT_HEARTBEAT_SECONDS = 10.0
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class ProtocolError(Exception):
    """A server frame the agent cannot read."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


def _now() -> str:
    return datetime.now(UTC).isoformat()


# -- agent → server ---------------------------------------------------------------------------

def hello(agent_id: str, name: str, version: str, last_ack: int) -> str:
    """Return the first frame of a connection."""
    return dumps({"type": "hello", "agent_id": agent_id, "name": name, "version": version,
                  "last_ack": last_ack})


def events(batch: Sequence[Event]) -> str:
    """Return an `events` frame for a batch of consecutive events."""
    return dumps({"type": "events", "events": [e.to_frame() for e in batch]})


def heartbeat() -> str:
    """Return a `heartbeat` frame stamped now."""
    return dumps({"type": "heartbeat", "at": _now()})


def command_ack(command_id: str, status: str, detail: str | None = None) -> str:
    """Return the answer to a command (`detail` cut to 1000 characters)."""
    frame: dict[str, Any] = {"type": "command_ack", "command_id": command_id, "status": status}
    if detail is not None:
        frame["detail"] = detail[:1000]
    return dumps(frame)


# -- server → agent ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Welcome:
    agent_id: str
    watermark: int
    heartbeat_seconds: float | None  # None: the frame had none (the agent keeps its own)
    max_batch: int


@dataclass(frozen=True)
class Ack:
    upto: int


@dataclass(frozen=True)
class Resend:
    start: int  # the frame's `from`


@dataclass(frozen=True)
class Heartbeat:
    at: str | None


@dataclass(frozen=True)
class Command:
    command_id: str
    command: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    field: str | None


ServerFrame = Welcome | Ack | Resend | Heartbeat | Command | Error


def _count(frame: Mapping[str, Any], key: str, least: int) -> int:
    value = frame.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ProtocolError(f"{key} must be an integer of at least {least}", key)
    return value


def _text(frame: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = frame.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise ProtocolError(f"{key} must be a string", key)
    return value


def parse(text: str | bytes) -> ServerFrame:
    """Read one server frame; raise `ProtocolError` if it is not a valid v1 frame."""
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("the frame is not JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError("the frame is not a JSON object")
    kind = frame.get("type")
    if kind == "welcome":
        seconds = frame.get("heartbeat_seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                                    or not math.isfinite(seconds) or seconds <= 0):
            raise ProtocolError("heartbeat_seconds must be a positive number", "heartbeat_seconds")
        return Welcome(agent_id=_text(frame, "agent_id") or "", watermark=_count(frame, "watermark", 0),
                       heartbeat_seconds=None if seconds is None else float(seconds),
                       max_batch=_count(frame, "max_batch", 1))
    if kind == "ack":
        return Ack(_count(frame, "upto", 0))
    if kind == "resend":
        return Resend(_count(frame, "from", 1))
    if kind == "heartbeat":
        return Heartbeat(_text(frame, "at", required=False))
    if kind == "command":
        args = frame.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ProtocolError("args must be an object", "args")
        return Command(command_id=_text(frame, "command_id") or "", command=_text(frame, "command") or "",
                       args=args)
    if kind == "error":
        return Error(code=str(frame.get("code") or "error"), message=str(frame.get("message") or ""),
                     field=None if frame.get("field") is None else str(frame.get("field")))
    raise ProtocolError(f"unknown frame type {kind!r}", "type")
