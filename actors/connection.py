"""The connection actor: one per WebSocket, owning that socket's session.

It speaks the protocol of :mod:`protocol.messages` with the state table of
:mod:`protocol.session`: greets with ``welcome``; authenticates by the first
``auth`` message; subscribes and unsubscribes through the fan-out actor;
submits scores through the very same :class:`server.score_path.ScorePath` as
HTTP, answering each with ``ack`` or ``error`` carrying the client's id —
from the score path's call back, with no task per submission;
answers ``ping`` with ``pong``.

Messages come in two ways, handled alike and in stream order: nearly all
are split off the byte stream by the transport and handed to :meth:`_take`
in its reader task, with no task switch
(:meth:`server.ws_transport.WsTransport.deliver_to`); the rest — after a
fragmented or otherwise unusual frame — come from trio-websocket through
``get_message()``, which also tells the actor when the peer has gone.

Everything the server sends goes through one bounded **outbox**, the
socket's :class:`FrameWriter` (:class:`server.ws_transport.WsTransport`),
which trio-websocket's own pings and close frames share, so frames leave in
order. Sending never waits: a frame goes straight to the socket when nothing
is queued, else behind what is, and a flusher task writes the queue as the
peer reads. When the outbox is full the connection closes with 4508 (too
slow). Frames are built once (:func:`protocol.messages.frame_text`): the
fan-out actor hands every watcher of an update the same bytes. A close lets
what is already queued (say, the error explaining it) go out before the
close frame, unless the peer is the problem (too slow, no pong); nothing is
queued once a close has begun.

Heartbeats: every ``heartbeat_s`` the listener calls :meth:`ConnectionActor.heartbeat`
(one task for all the node's sockets, not one per socket), which queues a
ping frame like any other frame, and drops the peer (1001, cut after half a
second) once it has sent nothing — no pong, no message — through two pings
in a row. Inbound messages are rate limited (a token
bucket): over the limit a message gets ``rate_limited``, and a client refused
more than ``FLOOD_LIMIT`` times within ``FLOOD_WINDOW_S`` is closed with 4008.

*Error handling*: a bad frame gets its documented error (and close code
where the protocol says so). Any other failure is the listener's to handle:
it closes only this socket, with 1011.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import trio
from trio_websocket import ConnectionClosed

from actors.fanout import FanoutActor, Watcher
from protocol.errors import PodiumError
from protocol.frames import MessageSink
from protocol.jwt_keys import AccessClaims
from protocol.leaderboards import Board
from protocol.messages import (
    Ack,
    Auth,
    Authed,
    CloseCode,
    Error,
    MessageId,
    Ping,
    Pong,
    ProtocolError,
    ServerMessage,
    Submit,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    decode_client,
    encode,
    frame_text,
)
from protocol.ratelimit import TokenBucket
from protocol.session import Session

if TYPE_CHECKING:
    from config import Settings
    from server.auth import AuthService
    from server.score_path import Ack as ScoreAck
    from server.score_path import ScorePath

log = logging.getLogger(__name__)

#: Submissions one socket may have in flight at once.
MAX_IN_FLIGHT = 16
#: Refused (rate-limited) messages a client may send within FLOOD_WINDOW_S;
#: the next is closed as flooding. Refusals drain a bucket of FLOOD_LIMIT that
#: refills at FLOOD_LIMIT / FLOOD_WINDOW_S a second, so a client that goes on
#: sending faster than that over the rate limit is closed, however many of its
#: messages still get through, and a brief overshoot is only refused.
FLOOD_LIMIT = 50
FLOOD_WINDOW_S = 10.0
#: A server's ping with no payload (unmasked, as a server's frames are).
PING_FRAME = bytes((0x80 | 0x9, 0))
_CLOSE_TIMEOUT_S = 5.0
_DEAD_PEER_CLOSE_S = 0.5


class MessageSocket(Protocol):
    """What the actor needs of a WebSocket (trio-websocket's connection fits).

    It sends no messages through it: data frames go to the :class:`FrameWriter`
    beneath it.
    """

    async def get_message(self) -> str | bytes: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


class FrameWriter(Protocol):
    """The byte stream under a :class:`MessageSocket`, taking whole frames without waiting.

    :class:`server.ws_transport.WsTransport` is the one the listener gives.
    """

    #: ``trio.current_time()`` when the peer last sent anything.
    last_received: float

    def write_nowait(self, frame: bytes) -> bool: ...

    def deliver_to(self, sink: MessageSink | None) -> None: ...

    async def run_flusher(self) -> None: ...

    async def flush(self) -> None: ...

    def discard_queued(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What every connection on a node shares."""

    settings: Settings
    node_id: str
    auth: AuthService
    score_path: ScorePath
    fanout: FanoutActor
    board: Callable[[str], Board | None]
    count_submission: Callable[[str], None]


@contextlib.contextmanager
def _ends_on_close(actor: ConnectionActor) -> Iterator[None]:
    """The peer went away: stop the whole connection, quietly."""
    try:
        yield
    except ConnectionClosed:
        if actor.closing is not None:
            return  # our own close is under way; _close ends the connection
        actor.closing = CloseCode.NORMAL
        if actor._nursery is not None:
            actor._nursery.cancel_scope.cancel()


def _peek_id(frame: str | bytes) -> MessageId:
    """The ``id`` of a frame we will not process, so the client knows which one."""
    try:
        message = decode_client(frame, max_bytes=4096)
    except ProtocolError as exc:
        return exc.id
    return message.id if isinstance(message, Submit | Ping) else None


class ConnectionActor:
    """Serves one WebSocket; see the module docstring.

    Returns when the socket closes (the transport's ``ConnectionClosed``
    propagates to the caller) or the protocol closed it.
    """

    def __init__(
        self,
        socket: MessageSocket,
        frames: FrameWriter,
        context: ConnectionContext,
        *,
        remote: str | None,
        user_agent: str | None,
        device: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = context.settings
        self._socket = socket
        self._frames = frames
        self._context = context
        self._remote = remote
        self._user_agent = user_agent
        self._device = device
        self._clock = clock
        self._session = Session(
            allow_spectators=settings.ws_allow_spectators,
            max_subscriptions=settings.ws_max_subscriptions,
        )
        self._bucket = TokenBucket(
            rate_per_s=settings.ws_rate_per_s, burst=settings.ws_rate_burst, now=clock()
        )
        self._watcher = Watcher(push=frames.write_nowait, too_slow=self._too_slow)
        self._token: str | None = None
        self._claims: AccessClaims | None = None
        self._in_flight = 0
        self._refusals = TokenBucket(
            rate_per_s=FLOOD_LIMIT / FLOOD_WINDOW_S, burst=FLOOD_LIMIT, now=clock()
        )
        self._heartbeat_due = trio.current_time() + settings.ws_heartbeat_s
        self._pinged_at = -math.inf
        self._missed = 0
        self._nursery: trio.Nursery | None = None
        self._failure: Exception | None = None  # what _take() caught, raised by run()
        self.closing: CloseCode | None = None

    @property
    def remote(self) -> str | None:
        """The client's address."""
        return self._remote

    @property
    def session_id(self) -> str | None:
        return self._claims.session_id if self._claims else None

    # ---- closing, from this task or any other

    def close_nowait(self, code: CloseCode, reason: str) -> None:
        """Close the socket with ``code`` soon; idempotent."""
        if self.closing is not None or self._nursery is None:
            return
        self.closing = code
        self._session.closed()
        self._context.fanout.forget(self._watcher)
        self._nursery.start_soon(self._close, code, reason)

    async def _close(self, code: CloseCode, reason: str) -> None:
        # Let what is already queued (say, the error explaining the close) go
        # out first — unless the peer is the problem. Then the close frame
        # goes next, ahead of what the peer has not taken.
        peer_stuck = code in (CloseCode.TOO_SLOW, CloseCode.GOING_AWAY)
        if not peer_stuck:
            with trio.move_on_after(1.0):
                await self._frames.flush()
        self._frames.discard_queued()
        # A slow peer gets the close frame only after it has read what its
        # buffers hold: give it a while, then cut the connection (1006). A
        # dead one will never answer: cut it almost at once.
        timeout = _DEAD_PEER_CLOSE_S if code is CloseCode.GOING_AWAY else _CLOSE_TIMEOUT_S
        with trio.move_on_after(timeout):
            await self._socket.aclose(int(code), reason)
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _too_slow(self) -> None:
        self.close_nowait(CloseCode.TOO_SLOW, "too slow: messages were piling up")

    # ---- sending: everything goes through the outbox

    def _send(self, message: ServerMessage) -> None:
        if self.closing is not None:
            return  # only what was queued before the close began goes out
        if not self._frames.write_nowait(frame_text(encode(message))):
            self._too_slow()

    def heartbeat(self, now: float) -> None:
        """Ping the peer if a heartbeat is due at ``now`` (``trio.current_time()``);
        drop it if it has sent nothing since the last two pings. Never waits."""
        if now < self._heartbeat_due or self.closing is not None:
            return
        self._heartbeat_due = now + self._context.settings.ws_heartbeat_s
        if self._frames.last_received < self._pinged_at:
            self._missed += 1
            if self._missed >= 2:
                log.info("websocket peer missed two heartbeats", extra={"remote": self._remote})
                self.close_nowait(CloseCode.GOING_AWAY, "no pong within two heartbeats")
                return
        else:
            self._missed = 0
        self._pinged_at = now
        if not self._frames.write_nowait(PING_FRAME):
            self._too_slow()

    # ---- the session

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self._context.settings
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._frames.run_flusher)
                self._send(
                    Welcome(node_id=self._context.node_id, heartbeat_s=settings.ws_heartbeat_s)
                )
                self._frames.deliver_to(self._take)
                task_status.started()
                with _ends_on_close(self):
                    await self._read()
                # _read returns once a close has begun; _close ends the nursery.
            if self._failure is not None:
                raise self._failure
        finally:
            # Ended, however it ended: heartbeats and late submission answers
            # that still reach this actor must find nothing to do.
            if self.closing is None:
                self.closing = CloseCode.INTERNAL_ERROR
            self._nursery = None
            self._context.fanout.forget(self._watcher)

    async def _read(self) -> None:
        """Messages that trio-websocket assembled (those the transport did not split off)."""
        while self.closing is None:
            await self._receive(await self._socket.get_message())

    async def _take(self, frame: str | bytes) -> None:
        """A message the transport split off, in its reader task (the sink of
        :meth:`server.ws_transport.WsTransport.deliver_to`): handled there and
        then, in stream order with those :meth:`_read` takes. Never raises: a
        failure ends this actor as if its own task had failed (1011)."""
        if self.closing is not None or self._nursery is None:
            return  # only what came before the close began is handled
        try:
            await self._receive(frame)
        except Exception as exc:
            self._failure = exc
            self.closing = CloseCode.INTERNAL_ERROR  # the listener closes with 1011
            self._nursery.cancel_scope.cancel()

    async def _receive(self, frame: str | bytes) -> None:
        settings = self._context.settings
        now = self._clock()
        if not self._bucket.take(now):
            if not self._refusals.take(now):
                self._send(Error(code="flooding", message="too many messages; closing"))
                self.close_nowait(CloseCode.POLICY, "flooding")
                return
            self._send(
                Error(
                    code="rate_limited",
                    message=f"at most {settings.ws_rate_per_s:g} messages per second",
                    id=_peek_id(frame),
                )
            )
            return
        try:
            message = self._session.check(
                decode_client(
                    frame,
                    max_bytes=settings.ws_max_message_bytes,
                    max_top=settings.ranking_publish_top_n,
                )
            )
            await self._handle(message)
        except ProtocolError as exc:
            self._send(Error(code=exc.code, message=exc.message, id=exc.id))
            if exc.close is not None:
                self.close_nowait(exc.close, exc.message[:120])

    async def _handle(self, message: Any) -> None:
        match message:
            case Ping(id=msg_id):
                self._send(Pong(id=msg_id))
            case Auth(token=token):
                self._authenticate(token)
            case Subscribe(leaderboard=board_id, top=top):
                await self._subscribe(board_id, top)
            case Unsubscribe(leaderboard=board_id):
                self._context.fanout.forget(self._watcher, board_id)
                self._session.unsubscribed(board_id)
                self._send(Unsubscribed(leaderboard=board_id))
            case Submit():
                self._start_submit(message)

    def _authenticate(self, token: str) -> None:
        try:
            claims = self._context.auth.verify(token)
        except PodiumError as exc:
            raise self._session.auth_failed(exc.message) from None
        self._token, self._claims = token, claims
        self._session.authed(claims.user_id)
        self._watcher.user_id = claims.user_id
        self._send(Authed(user_id=claims.user_id))

    async def _subscribe(self, board_id: str, top: int) -> None:
        board = self._context.board(board_id)
        if board is None:
            raise ProtocolError(f"no leaderboard {board_id!r}", code="leaderboard_not_found")
        try:
            await self._context.fanout.watch(self._watcher, board, top)
        except PodiumError as exc:
            raise ProtocolError(exc.message, code=exc.code) from None
        self._session.subscribed(board_id)

    def _start_submit(self, message: Submit) -> None:
        if self._in_flight >= MAX_IN_FLIGHT:
            raise ProtocolError(
                f"at most {MAX_IN_FLIGHT} submissions in flight per connection",
                code="too_many_in_flight",
                id=message.id,
            )
        assert self._token is not None
        done = partial(self._submitted, message.id)
        self._in_flight += 1
        try:
            # Re-checked per submission: the token may have expired or been revoked.
            claims = self._context.auth.verify(self._token)
            # No task waits for it: the actor that finishes it calls done().
            self._context.score_path.start(
                claims,
                message.action_token,
                ip=self._remote,
                user_agent=self._user_agent,
                device=self._device,
                done=done,
            )
        except PodiumError as exc:
            done(exc)

    def _submitted(self, message_id: MessageId, result: ScoreAck | PodiumError) -> None:
        """A submission's outcome, from whichever task finished it: ack or error."""
        self._in_flight -= 1
        if isinstance(result, PodiumError):
            self._context.count_submission(result.code)
            self._send(Error(code=result.code, message=result.message, id=message_id))
            if result.code in ("session_revoked", "token_expired"):
                self.close_nowait(CloseCode.UNAUTHORIZED, result.message)
            return
        self._context.count_submission("ok")
        self._send(
            Ack(
                id=message_id,
                leaderboard=result.leaderboard,
                old_score=result.old_score,
                new_score=result.new_score,
                rank=result.rank,
            )
        )
