"""The WebSocket messages, sans-IO: decode what clients send, encode what we send.

Frames are JSON text. :func:`decode_client` turns any text or bytes into a
client message or raises :class:`ProtocolError` — never anything else — so
the connection code can answer every bad frame with its documented error.
:func:`encode` turns a server message into the text of one frame; a
broadcast is encoded once and the same string goes to every subscriber.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from protocol.errors import PodiumError

PROTOCOL_VERSION: Final = 1


class CloseCode(IntEnum):
    """WebSocket close codes. 4000-4099 are terminal, 4500-4599 mean "reconnect"."""

    NORMAL = 1000
    INTERNAL_ERROR = 1011
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    POLICY = 4008
    DRAINING = 4503
    TOO_SLOW = 4508

    @property
    def should_reconnect(self) -> bool:
        return 4500 <= self.value <= 4599


class ProtocolError(PodiumError):
    """A frame we cannot accept. ``close`` set means the socket must close with it."""

    default_code = "bad_message"

    def __init__(self, message: str, *, code: str | None = None, close: CloseCode | None = None):
        super().__init__(message, code=code)
        self.close = close


# ---------------------------------------------------------------- client → server


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | int | None = None


ClientMessage = Ping


# ---------------------------------------------------------------- server → client


@dataclass(frozen=True, slots=True)
class Welcome:
    node_id: str
    heartbeat_s: float
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Pong:
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    id: str | int | None = None


ServerMessage = Welcome | Pong | Error

_MAX_ID_CHARS: Final = 64


def decode_client(frame: str | bytes, *, max_bytes: int) -> ClientMessage:
    """Decode one client frame, or raise :class:`ProtocolError`."""
    if isinstance(frame, bytes):
        raise ProtocolError(
            "binary frames are not accepted; send JSON text", code="binary_not_supported"
        )
    if len(frame) > max_bytes or len(frame.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError(
            f"message larger than {max_bytes} bytes",
            code="message_too_large",
            close=CloseCode.POLICY,
        )
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        raise ProtocolError("message is not valid JSON", code="malformed_json") from None
    if not isinstance(data, dict):
        raise ProtocolError("message must be a JSON object", code="bad_message")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('message needs a string "type"', code="bad_message")
    if kind == "ping":
        return Ping(id=_message_id(data))
    raise ProtocolError(f"unknown message type {kind[:40]!r}", code="unknown_type")


def _message_id(data: dict[str, Any]) -> str | int | None:
    value = data.get("id")
    if value is None or (isinstance(value, str) and len(value) <= _MAX_ID_CHARS):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    raise ProtocolError(
        f'"id" must be a string of at most {_MAX_ID_CHARS} characters or an integer',
        code="bad_message",
    )


def encode(message: ServerMessage) -> str:
    """The JSON text of one server frame."""
    body: dict[str, Any]
    match message:
        case Welcome(node_id=node_id, heartbeat_s=heartbeat_s, protocol=protocol):
            body = {
                "type": "welcome",
                "protocol": protocol,
                "node_id": node_id,
                "heartbeat_s": heartbeat_s,
            }
        case Pong(id=msg_id):
            body = {"type": "pong", "id": msg_id}
        case Error(code=code, message=text, id=msg_id):
            body = {"type": "error", "code": code, "message": text}
            if msg_id is not None:
                body["id"] = msg_id
    return json.dumps(body, separators=(",", ":"))
