"""A WebSocket client for Podium, on trio-websocket.

Open one with :func:`open_client`; it connects, waits for the server's
``welcome``, optionally authenticates, and gives you a :class:`PodiumClient`::

    async with open_client("ws://127.0.0.1:8001/v1/ws", token=jwt) as client:
        snapshot = await client.subscribe("global", top=10)
        ack = await client.submit(action_token)
        async for event in client.events():
            if event["type"] == "update":
                ...

Requests (:meth:`~PodiumClient.auth`, :meth:`~PodiumClient.subscribe`,
:meth:`~PodiumClient.unsubscribe`, :meth:`~PodiumClient.submit`,
:meth:`~PodiumClient.ping`) wait for their own reply and may be called from
many tasks at once. ``submit`` and ``ping`` are matched to their replies by
``id``, so any number can be in flight; the others carry no id in the
protocol, so the client sends them one at a time and matches the reply by its
type (and leaderboard).

Everything else the server pushes — ``update``, ``me``, an unasked
``snapshot``, an error that answers no request — is an *event*, read with
:meth:`~PodiumClient.next_event` or ``async for event in client.events()``.

*Resource handling*: one background task reads the socket for as long as the
client is open, so the server's heartbeat pings are answered even while you
are not reading events. Events wait in a queue of ``max_events``; when it is
full the **oldest** event is dropped and counted
(:meth:`~PodiumClient.statistics`). That loses nothing a client needs:
``update`` and ``me`` each carry the whole latest state, so a newer one
replaces an older one. Read events promptly all the same — a client that
falls far behind misses intermediate states.

*Error handling*: a request the server refuses raises :exc:`ClientError`
with the protocol's ``code``. Once the socket is closed — by the server, the
network, or you — every waiting and later request raises
:exc:`ConnectionClosed`, carrying the close code, the reason, and the error
frame the server sent just before closing, if any; its
:attr:`~ConnectionClosed.should_reconnect` says whether reconnecting (with
backoff) makes sense. A refused handshake raises :exc:`ConnectionRefused`.

There are no built-in timeouts: wrap calls in :func:`trio.fail_after` or
:func:`trio.move_on_after`. A request cancelled after it was sent may still
take effect on the server (a cancelled ``submit`` may have been applied);
its reply then arrives as an event.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict, cast

import trio
import trio_websocket

from protocol.messages import PROTOCOL_VERSION, CloseCode

__all__ = [
    "Ack",
    "ClientError",
    "ClientStatistics",
    "ConnectionClosed",
    "ConnectionRefused",
    "Entry",
    "Me",
    "MeState",
    "PodiumClient",
    "Snapshot",
    "Update",
    "Welcome",
    "open_client",
]

#: Largest frame the client accepts from the server (an update of a top 1000 is ~90 KB).
DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: Events queued before the oldest is dropped.
DEFAULT_MAX_EVENTS: Final = 1024
_MAX_ID_CHARS: Final = 64
# Close codes after which trying again (after a pause) can succeed.
_TRANSIENT_CLOSES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 1014})

MessageId = str | int


# ---------------------------------------------------------------- frames


class Entry(TypedDict):
    """One row of a leaderboard."""

    rank: int
    user_id: str
    username: str
    score: int


class MeState(TypedDict):
    """The signed-in user's own place on a board, in a snapshot."""

    rank: int | None
    score: int | None


class Welcome(TypedDict):
    """The server's first frame."""

    type: Literal["welcome"]
    protocol: int
    node_id: str
    heartbeat_s: float


class Snapshot(TypedDict):
    """A board's whole current top N; the reply to ``subscribe``."""

    type: Literal["snapshot"]
    leaderboard: str
    seq: int
    entries: list[Entry]
    me: MeState | None


class Update(TypedDict):
    """A board's new top N (the latest state, coalesced per server tick)."""

    type: Literal["update"]
    leaderboard: str
    seq: int
    entries: list[Entry]


class Me(TypedDict):
    """The signed-in user's own rank and score changed."""

    type: Literal["me"]
    leaderboard: str
    rank: int | None
    score: int | None


class Ack(TypedDict):
    """A committed submission."""

    type: Literal["ack"]
    id: MessageId
    leaderboard: str
    old_score: int
    new_score: int
    rank: int | None


# ---------------------------------------------------------------- errors


class ClientError(Exception):
    """The server answered with an ``error`` frame.

    ``code`` is the protocol's stable snake_case code (``auth_required``,
    ``action_token_used``, ``rate_limited``...); ``message`` is for people;
    ``id`` is the id of the request it answers, if it carried one.
    """

    def __init__(self, code: str, message: str, *, id: MessageId | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id


class ConnectionRefused(ClientError):
    """The server refused the WebSocket handshake with an HTTP status.

    ``status_code`` is 503 when the node is full or draining (try again, or
    another node), 403 for a browser ``Origin`` it does not allow, 404 for a
    wrong path. ``code`` and ``message`` come from the error body.
    """

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status_code = status_code

    @classmethod
    def from_rejection(cls, rejected: trio_websocket.ConnectionRejected) -> ConnectionRefused:
        code, message = "refused", f"handshake refused with HTTP {rejected.status_code}"
        with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
            error = json.loads(rejected.body or b"")["error"]
            code, message = str(error["code"]), str(error["message"])
        return cls(rejected.status_code, code, message)


class ConnectionClosed(Exception):
    """The WebSocket is closed; nothing more can be sent or received on it.

    ``code`` is the close code (1006 when the connection dropped without a
    close frame), ``reason`` the server's text. ``error`` is the ``error``
    frame the server sent just before closing, if it did (``unauthorized``
    before 4001, ``message_too_large`` or ``flooding`` before 4008).
    ``by_client`` is true when this side closed it.
    """

    def __init__(
        self,
        code: int,
        reason: str | None = None,
        *,
        error: ClientError | None = None,
        by_client: bool = False,
    ) -> None:
        text = f"connection closed with {code}" + (f" ({reason})" if reason else "")
        if error is not None:
            text += f" after error {error.code}: {error.message}"
        super().__init__(text)
        self.code = code
        self.reason = reason
        self.error = error
        self.by_client = by_client

    @property
    def close_code(self) -> CloseCode | None:
        """The code as a :class:`~protocol.messages.CloseCode`, if it is one of Podium's."""
        try:
            return CloseCode(self.code)
        except ValueError:
            return None

    @property
    def should_reconnect(self) -> bool:
        """True if connecting again (with backoff, then resubscribing) can help.

        True for 4500-4599 (4503 draining, 4508 too slow), 1001 (missed
        heartbeats), 1006 (the connection dropped) and 1011 (server error).
        False for 1000 and 4000-4099: 4001 needs a new access token first;
        4003 and 4008 will not go away by retrying.
        """
        return 4500 <= self.code <= 4599 or self.code in _TRANSIENT_CLOSES


# ---------------------------------------------------------------- the client


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of one client's counters."""

    frames_received: int
    events_queued: int
    events_dropped: int
    unreadable_frames: int
    requests_in_flight: int


class _Pending:
    """One request waiting for its reply (a frame), or for the connection to close."""

    __slots__ = ("done", "expect", "frame", "leaderboard")

    def __init__(self, expect: str, leaderboard: str | None = None) -> None:
        self.done = trio.Event()
        self.expect = expect
        self.leaderboard = leaderboard
        self.frame: dict[str, Any] | None = None

    def accepts(self, frame: dict[str, Any]) -> bool:
        kind = frame.get("type")
        if kind == "error":
            return True
        return kind == self.expect and (
            self.leaderboard is None or frame.get("leaderboard") == self.leaderboard
        )

    def resolve(self, frame: dict[str, Any] | None) -> None:
        if not self.done.is_set():
            self.frame = frame
            self.done.set()


class PodiumClient:
    """One open connection to a Podium node; made by :func:`open_client`.

    See the module docstring for how replies and events are routed.
    """

    def __init__(
        self, socket: trio_websocket.WebSocketConnection, *, max_events: int = DEFAULT_MAX_EVENTS
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._socket = socket
        self._events_send, self._events_receive = trio.open_memory_channel[dict[str, Any]](
            max_events
        )
        self._welcome_ready = trio.Event()
        self._welcome: Welcome | None = None
        self._welcome_error: ClientError | None = None
        self._by_id: dict[MessageId, _Pending] = {}
        self._plain: _Pending | None = None
        self._plain_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._closed: ConnectionClosed | None = None
        self._closing_by_client = False
        # The last frame received, if it was an error: the reason behind a close.
        self._last_error: ClientError | None = None
        self._subscriptions: dict[str, int] = {}
        self.user_id: str | None = None
        self._frames = 0
        self._dropped = 0
        self._unreadable = 0

    # ---- state

    @property
    def welcome(self) -> Welcome:
        """The server's ``welcome``: ``protocol``, ``node_id``, ``heartbeat_s``."""
        if self._welcome is None:
            raise RuntimeError("no welcome yet; use open_client()")
        return self._welcome

    @property
    def node_id(self) -> str:
        return self.welcome["node_id"]

    @property
    def subscriptions(self) -> Mapping[str, int]:
        """Boards this client subscribed to (board → top), for resubscribing elsewhere."""
        return dict(self._subscriptions)

    @property
    def closed(self) -> ConnectionClosed | None:
        """How the connection closed, or None while it is open."""
        return self._closed

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            frames_received=self._frames,
            events_queued=self._events_send.statistics().current_buffer_used,
            events_dropped=self._dropped,
            unreadable_frames=self._unreadable,
            requests_in_flight=len(self._by_id) + (self._plain is not None),
        )

    # ---- requests

    async def auth(self, token: str) -> str:
        """Authenticate with an access token (a JWT); return the user id.

        Raises :exc:`ClientError` (``unauthorized``, after which the server
        closes with 4001; ``already_authed``).
        """
        frame = await self._plain_request({"type": "auth", "token": token}, "authed")
        self.user_id = str(frame["user_id"])
        return self.user_id

    async def subscribe(self, leaderboard: str, top: int = 10) -> Snapshot:
        """Watch ``leaderboard``'s top ``top``; return its current snapshot.

        Updates follow as ``update`` events (and ``me`` events for a signed-in
        user). Subscribing again to the same board replaces ``top`` and sends a
        new snapshot. Raises :exc:`ClientError` (``auth_required`` when the
        server takes no spectators, ``leaderboard_not_found``,
        ``too_many_subscriptions``, ``bad_message``...).
        """
        frame = await self._plain_request(
            {"type": "subscribe", "leaderboard": leaderboard, "top": top},
            "snapshot",
            leaderboard=leaderboard,
        )
        self._subscriptions[leaderboard] = top
        return cast(Snapshot, frame)

    async def unsubscribe(self, leaderboard: str) -> None:
        """Stop watching ``leaderboard``. Raises :exc:`ClientError` (``not_subscribed``)."""
        await self._plain_request(
            {"type": "unsubscribe", "leaderboard": leaderboard},
            "unsubscribed",
            leaderboard=leaderboard,
        )
        self._subscriptions.pop(leaderboard, None)

    async def submit(self, action_token: str, id: MessageId | None = None) -> Ack:
        """Submit an action token; return the ``ack`` once the score is committed.

        ``id`` defaults to a fresh one; it must not be in flight already.
        Raises :exc:`ClientError` with the score path's code
        (``action_token_used``, ``action_token_expired``, ``auth_required``,
        ``rate_limited``, ``commit_timeout``...); docs/protocol.md says which
        are safe to retry.
        """
        msg_id = self._new_id("s") if id is None else _check_id(id)
        frame = await self._id_request(
            {"type": "submit", "id": msg_id, "action_token": action_token}, msg_id, "ack"
        )
        return cast(Ack, frame)

    async def ping(self) -> float:
        """Send a ``ping`` and wait for its ``pong``; return the round trip in seconds."""
        msg_id = self._new_id("p")
        began = time.perf_counter()
        await self._id_request({"type": "ping", "id": msg_id}, msg_id, "pong")
        return time.perf_counter() - began

    async def send_frame(self, frame: str | bytes) -> None:
        """Send one raw frame, unchecked; whatever answers it arrives as an event.

        For tests and tools that need to send what the other methods will not.
        An id-less error answering it can be taken for the answer of an
        ``auth``, ``subscribe`` or ``unsubscribe`` sent before it arrives:
        read it with :meth:`next_event` first.
        """
        await self._send(frame)

    # ---- events

    async def next_event(self) -> dict[str, Any]:
        """Wait for the next event (``update``, ``me``, ...) and return it.

        Raises :exc:`ConnectionClosed` once the connection is closed and every
        queued event has been read.
        """
        try:
            return await self._events_receive.receive()
        except trio.EndOfChannel:
            raise self._closed_error() from None

    def next_event_nowait(self) -> dict[str, Any]:
        """The next queued event; raises :exc:`trio.WouldBlock` if there is none yet."""
        try:
            return self._events_receive.receive_nowait()
        except trio.EndOfChannel:
            raise self._closed_error() from None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield events until the connection closes.

        Ends quietly if this side closed the connection; raises
        :exc:`ConnectionClosed` if the server or the network did.
        """
        while True:
            try:
                event = await self._events_receive.receive()
            except trio.EndOfChannel:
                closed = self._closed_error()
                if closed.by_client:
                    return
                raise closed from None
            yield event

    # ---- closing

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection (idempotent); waiting requests raise :exc:`ConnectionClosed`."""
        self._closing_by_client = True
        await self._socket.aclose(code, reason)

    # ---- internals

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def _closed_error(self) -> ConnectionClosed:
        if self._closed is None:
            self._closed = ConnectionClosed(1006, "connection lost", by_client=False)
        return self._closed

    def _set_closed(self, reason: trio_websocket.CloseReason | None) -> ConnectionClosed:
        if self._closed is None:
            code = reason.code if reason is not None else 1006
            text = reason.reason if reason is not None else None
            # A client-side close the server answered looks like a server close
            # with our own code; remember who started it.
            self._closed = ConnectionClosed(
                code, text, error=self._last_error, by_client=self._closing_by_client
            )
        return self._closed

    async def _send(self, frame: str | bytes) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self._socket.send_message(frame)
        except trio_websocket.ConnectionClosed as exc:
            raise self._set_closed(exc.reason) from None

    async def _wait(self, pending: _Pending) -> dict[str, Any]:
        await pending.done.wait()
        frame = pending.frame
        if frame is None:
            raise self._closed_error()
        if frame.get("type") == "error":
            raise _error_of(frame)
        return frame

    async def _id_request(self, body: dict[str, Any], msg_id: MessageId, expect: str) -> Any:
        if msg_id in self._by_id:
            raise ValueError(f"a request with id {msg_id!r} is already in flight")
        pending = _Pending(expect)
        self._by_id[msg_id] = pending
        try:
            await self._send(_dump(body))
            return await self._wait(pending)
        finally:
            if self._by_id.get(msg_id) is pending:
                del self._by_id[msg_id]

    async def _plain_request(
        self, body: dict[str, Any], expect: str, *, leaderboard: str | None = None
    ) -> dict[str, Any]:
        async with self._plain_lock:
            pending = _Pending(expect, leaderboard)
            self._plain = pending
            try:
                await self._send(_dump(body))
                return await self._wait(pending)
            finally:
                self._plain = None

    async def _wait_welcome(self) -> Welcome:
        await self._welcome_ready.wait()
        if self._welcome_error is not None:
            raise self._welcome_error
        if self._welcome is None:
            raise self._closed_error()
        return self._welcome

    async def _read_frames(self) -> None:
        """Read every frame until the connection closes; route each one. Never raises on close."""
        try:
            while True:
                frame = await self._socket.get_message()
                self._frames += 1
                self._on_frame(frame)
        except trio_websocket.ConnectionClosed as exc:
            self._set_closed(exc.reason)
        finally:
            # Closed, or cancelled because the client is being closed.
            if self._closed is None:
                self._closed = ConnectionClosed(1000, "client closed", by_client=True)
            self._welcome_ready.set()
            for pending in [*self._by_id.values(), *([self._plain] if self._plain else [])]:
                pending.resolve(None)
            self._events_send.close()

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except (ValueError, RecursionError):
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self._unreadable += 1
            return
        kind = frame["type"]
        self._last_error = _error_of(frame) if kind == "error" else None
        if not self._welcome_ready.is_set():
            self._on_welcome(frame)
            return
        pending: _Pending | None = None
        msg_id = frame.get("id")
        key: MessageId | None = None
        if isinstance(msg_id, str | int) and msg_id in self._by_id:
            key = msg_id
        elif kind == "error" and msg_id is None:
            # Errors for auth/subscribe/unsubscribe carry no id. Those requests go
            # one at a time, so such an error is theirs. A rate-limited message is
            # answered only with an id-less rate_limited: with one request in
            # flight, it is that one's.
            if self._plain is not None:
                pending = self._plain
            elif frame.get("code") == "rate_limited" and len(self._by_id) == 1:
                key = next(iter(self._by_id))
        elif kind in ("authed", "snapshot", "unsubscribed") and self._plain is not None:
            pending = self._plain
        if key is not None:
            pending = self._by_id[key]
        if pending is not None and not pending.done.is_set() and pending.accepts(frame):
            # Out of the tables now, not when its task next runs: the next
            # id-less error must not count it as still in flight.
            if key is not None:
                del self._by_id[key]
            elif pending is self._plain:
                self._plain = None
            pending.resolve(frame)
        else:
            self._push_event(frame)

    def _on_welcome(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "welcome" and frame.get("protocol") == PROTOCOL_VERSION:
            self._welcome = cast(Welcome, frame)
        elif frame["type"] == "welcome":
            self._welcome_error = ClientError(
                "unsupported_protocol",
                f"the server speaks protocol {frame.get('protocol')!r}; "
                f"this client speaks {PROTOCOL_VERSION}",
            )
        else:
            self._welcome_error = ClientError(
                "unexpected_frame", f"expected a welcome first, got {frame['type']!r}"
            )
        self._welcome_ready.set()

    def _push_event(self, frame: dict[str, Any]) -> None:
        try:
            self._events_send.send_nowait(frame)
        except trio.WouldBlock:
            # Full: drop the oldest. Only this task sends, so there is room after.
            with contextlib.suppress(trio.WouldBlock):
                self._events_receive.receive_nowait()
                self._dropped += 1
            with contextlib.suppress(trio.WouldBlock):
                self._events_send.send_nowait(frame)


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def _error_of(frame: dict[str, Any]) -> ClientError:
    msg_id = frame.get("id")
    return ClientError(
        str(frame.get("code", "error")),
        str(frame.get("message", "")),
        id=msg_id if isinstance(msg_id, str | int) else None,
    )


def _check_id(value: MessageId) -> MessageId:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError("id must be a str or an int")
    if isinstance(value, str) and not 0 < len(value) <= _MAX_ID_CHARS:
        raise ValueError(f"a string id has 1 to {_MAX_ID_CHARS} characters")
    if isinstance(value, int) and abs(value) >= 2**53:
        raise ValueError("an integer id is below 2**53 in magnitude")
    return value


@contextlib.asynccontextmanager
async def open_client(
    url: str,
    *,
    token: str | None = None,
    origin: str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_events: int = DEFAULT_MAX_EVENTS,
    connect_timeout_s: float = 10.0,
    close_timeout_s: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[PodiumClient]:
    """Connect to ``url`` (``ws://host:port/v1/ws``) and yield a :class:`PodiumClient`.

    Returns once the server's ``welcome`` has arrived and, if ``token`` is
    given, authentication succeeded. ``origin`` is sent as the ``Origin``
    header, as a browser would. Frames from the server larger than
    ``max_message_bytes`` close the connection (1009).

    On exit the connection is closed with 1000 and the reader task stops.

    Raises:
      ConnectionRefused: the server refused the handshake (503 full or
        draining, 403 origin, 404 path).
      trio_websocket.HandshakeError: no connection (refused, timed out).
      ClientError: ``token`` was not accepted (``unauthorized``).
      ConnectionClosed: the connection closed before the welcome.
    """
    headers = [(b"Origin", origin.encode("utf-8"))] if origin is not None else None
    try:
        async with trio_websocket.open_websocket_url(
            url,
            ssl_context,
            extra_headers=headers,
            max_message_size=max_message_bytes,
            connect_timeout=connect_timeout_s,
            disconnect_timeout=close_timeout_s,
        ) as socket:
            client = PodiumClient(socket, max_events=max_events)
            body_error: BaseException | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._read_frames)
                try:
                    await client._wait_welcome()
                    if token is not None:
                        await client.auth(token)
                    yield client
                except BaseException as exc:
                    # Raised again outside the nursery, so callers see it as
                    # it is rather than wrapped in an ExceptionGroup.
                    body_error = exc
                finally:
                    client._closing_by_client = True
                    nursery.cancel_scope.cancel()
            if body_error is not None:
                raise body_error
    except trio_websocket.ConnectionRejected as exc:
        raise ConnectionRefused.from_rejection(exc) from None
