"""The WebSocket messages, sans-IO: decode what clients send, encode what we send.

Frames are JSON text. :func:`decode_client` turns any text or bytes into a
client message or raises :class:`ProtocolError` — never anything else — so
the connection code can answer every bad frame with its documented error.
:func:`encode` turns a server message into the text of one frame, and
:func:`frame_text` turns that text into the bytes of the WebSocket frame that
carries it. What a server sends is unmasked and we negotiate no extensions,
so those bytes are the same for every client: a leaderboard update is
encoded and framed once (:func:`encode_update`, :func:`frame_text`) and the
same bytes go to all of its subscribers.

Client → server: ``auth``, ``subscribe``, ``unsubscribe``, ``submit``,
``ping``. Server → client: ``welcome``, ``authed``, ``snapshot``,
``update``, ``me``, ``unsubscribed``, ``ack``, ``error``, ``pong``.
docs/protocol.md shows each with an example.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from protocol.errors import PodiumError

PROTOCOL_VERSION: Final = 1
_BOARD_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MAX_ID_CHARS: Final = 64
_MAX_TOKEN_CHARS: Final = 4096
_FIN_TEXT: Final = 0x81  # FIN set, RSV bits clear, opcode 0x1 (text)
_HEADER_7: Final = struct.Struct("!BB")
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")


class CloseCode(IntEnum):
    """WebSocket close codes. 4000-4099 are terminal, 4500-4599 mean "reconnect"."""

    NORMAL = 1000
    GOING_AWAY = 1001
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

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        close: CloseCode | None = None,
        id: str | int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.close = close
        self.id = id


MessageId = str | int | None

# ---------------------------------------------------------------- client → server


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    leaderboard: str
    top: int


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    leaderboard: str


@dataclass(frozen=True, slots=True)
class Submit:
    id: MessageId
    action_token: str


@dataclass(frozen=True, slots=True)
class Ping:
    id: MessageId = None


ClientMessage = Auth | Subscribe | Unsubscribe | Submit | Ping

# ---------------------------------------------------------------- server → client


@dataclass(frozen=True, slots=True)
class Welcome:
    node_id: str
    heartbeat_s: float
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Authed:
    user_id: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    leaderboard: str
    seq: int
    entries: Sequence[dict[str, Any]]
    me: dict[str, int] | None


@dataclass(frozen=True, slots=True)
class Me:
    leaderboard: str
    rank: int | None
    score: int | None


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    leaderboard: str


@dataclass(frozen=True, slots=True)
class Ack:
    id: MessageId
    leaderboard: str
    old_score: int
    new_score: int
    rank: int | None


@dataclass(frozen=True, slots=True)
class Pong:
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    id: MessageId = None


ServerMessage = Welcome | Authed | Snapshot | Me | Unsubscribed | Ack | Pong | Error


def decode_client(frame: str | bytes, *, max_bytes: int, max_top: int = 100) -> ClientMessage:
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
    msg_id = _message_id(data)
    match kind:
        case "ping":
            return Ping(id=msg_id)
        case "auth":
            return Auth(token=_string(data, "token", _MAX_TOKEN_CHARS, msg_id))
        case "subscribe":
            top = data.get("top", 10)
            if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= max_top:
                raise ProtocolError(
                    f'"top" must be an integer from 1 to {max_top}', code="bad_message", id=msg_id
                )
            return Subscribe(leaderboard=_board(data, msg_id), top=top)
        case "unsubscribe":
            return Unsubscribe(leaderboard=_board(data, msg_id))
        case "submit":
            return Submit(
                id=msg_id, action_token=_string(data, "action_token", _MAX_TOKEN_CHARS, msg_id)
            )
    raise ProtocolError(f"unknown message type {kind[:40]!r}", code="unknown_type", id=msg_id)


def _message_id(data: dict[str, Any]) -> MessageId:
    value = data.get("id")
    if value is None or (isinstance(value, str) and len(value) <= _MAX_ID_CHARS):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    raise ProtocolError(
        f'"id" must be a string of at most {_MAX_ID_CHARS} characters or an integer',
        code="bad_message",
    )


def _string(data: dict[str, Any], name: str, max_chars: int, msg_id: MessageId) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise ProtocolError(
            f'"{name}" must be a non-empty string of at most {max_chars} characters',
            code="bad_message",
            id=msg_id,
        )
    return value


def _board(data: dict[str, Any], msg_id: MessageId) -> str:
    value = data.get("leaderboard")
    if not isinstance(value, str) or not _BOARD_RE.fullmatch(value):
        raise ProtocolError(
            '"leaderboard" must be a leaderboard id (a-z, 0-9, _ and -)',
            code="bad_message",
            id=msg_id,
        )
    return value


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


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
        case Authed(user_id=user_id):
            body = {"type": "authed", "user_id": user_id}
        case Snapshot(leaderboard=board, seq=seq, entries=entries, me=me):
            body = {
                "type": "snapshot",
                "leaderboard": board,
                "seq": seq,
                "entries": list(entries),
                "me": me,
            }
        case Me(leaderboard=board, rank=rank, score=score):
            body = {"type": "me", "leaderboard": board, "rank": rank, "score": score}
        case Unsubscribed(leaderboard=board):
            body = {"type": "unsubscribed", "leaderboard": board}
        case Ack(id=msg_id, leaderboard=board, old_score=old, new_score=new, rank=rank):
            body = {
                "type": "ack",
                "id": msg_id,
                "leaderboard": board,
                "old_score": old,
                "new_score": new,
                "rank": rank,
            }
        case Pong(id=msg_id):
            body = {"type": "pong", "id": msg_id}
        case Error(code=code, message=text, id=msg_id):
            body = {"type": "error", "code": code, "message": text}
            if msg_id is not None:
                body["id"] = msg_id
    return _dump(body)


def encode_update(board: str, seq: int, entries: Sequence[dict[str, Any]]) -> str:
    """The ``update`` frame of one leaderboard state, encoded once for every subscriber."""
    return _dump({"type": "update", "leaderboard": board, "seq": seq, "entries": list(entries)})


def frame_text(text: str) -> bytes:
    """The bytes of one unfragmented, unmasked text frame carrying ``text`` (RFC 6455 §5.2).

    That is what a server sends when no extension is negotiated; a client
    must mask its frames, so this is for the server → client direction only.
    """
    payload = text.encode("utf-8")
    length = len(payload)
    if length < 126:
        return _HEADER_7.pack(_FIN_TEXT, length) + payload
    if length < 1 << 16:
        return _HEADER_16.pack(_FIN_TEXT, 126, length) + payload
    return _HEADER_64.pack(_FIN_TEXT, 127, length) + payload
