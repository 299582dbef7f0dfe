"""The WebSocket listener: accepts ``/v1/ws`` and runs a connection actor per socket.

*Resource handling*: the number of open sockets is bounded by
``ws_max_connections``; a handshake beyond it is refused with 503, and one
from a browser origin not in ``ws_allowed_origins`` with 403. When a session
is revoked on any node, its sockets here are closed with 4001.
:meth:`WsListener.drain_nowait` stops accepting and closes every socket with
4503 ("node draining", reconnect elsewhere); :meth:`run` returns when the
last one is gone.

Each accepted TCP stream is wrapped in a :class:`server.ws_transport.WsTransport`
before trio-websocket sees it (through its public ``wrap_server_stream``), and
the connection actor gets both: the WebSocket for messages in, pings and
closing, and the transport for the frames it sends without waiting.

One task, for all sockets, pings each once per ``ws_heartbeat_s`` (looking
:data:`_HEARTBEAT_SLICES` times a period for those due, so each is pinged
about a period after the last), and drops peers silent through two pings
(:meth:`actors.connection.ConnectionActor.heartbeat`).

*Error handling*: a connection actor that fails closes only its own socket,
with 1011, and is logged and counted; the listener and every other socket
carry on.
"""

from __future__ import annotations

import json
import logging
from functools import partial

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from actors.connection import ConnectionActor, ConnectionContext
from protocol.errors import error_body
from protocol.messages import CloseCode
from server.metrics import NodeMetrics
from server.proxies import TrustedProxies
from server.ws_transport import WsTransport

log = logging.getLogger(__name__)

WS_PATH = "/v1/ws"
_CLOSE_TIMEOUT_S = 2.0
#: For the client's opening handshake (trio-websocket's own default).
_HANDSHAKE_TIMEOUT_S = 60.0
#: Heartbeat rounds per ``ws_heartbeat_s``: each pings the sockets that are due.
_HEARTBEAT_SLICES = 8


class WsListener:
    """Serves WebSockets on ``settings.ws_port``; ``started()`` reports the bound port."""

    def __init__(self, context: ConnectionContext, *, metrics: NodeMetrics) -> None:
        self._context = context
        self._settings = settings = context.settings
        self._metrics = metrics
        self._connections: set[WebSocketConnection] = set()
        self._actors: set[ConnectionActor] = set()
        self._proxies = TrustedProxies(settings.trusted_proxies)
        self._origins = (
            None
            if settings.ws_allowed_origins == "*"
            else frozenset(o.strip().rstrip("/") for o in settings.ws_allowed_origins.split(","))
        )
        self._draining = trio.Event()
        self._all_closed = trio.Event()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def drain_nowait(self) -> None:
        self._draining.set()

    def session_revoked(self, session_id: str) -> None:
        """Close every socket of ``session_id`` with 4001."""
        for actor in list(self._actors):
            if actor.session_id == session_id:
                actor.close_nowait(CloseCode.UNAUTHORIZED, "session revoked")

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self._settings
        listeners = await trio.open_tcp_listeners(settings.ws_port, host=settings.bind_host)
        port: int = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as handlers:
            handlers.start_soon(self._heartbeats)
            with trio.CancelScope() as accept_scope:
                async with trio.open_nursery() as accept:
                    await accept.start(
                        partial(
                            trio.serve_listeners, self._serve, listeners, handler_nursery=handlers
                        )
                    )
                    log.info("websocket listener ready", extra={"port": port})
                    task_status.started(port)
                    await self._draining.wait()
                    accept_scope.cancel()
            log.info("draining websockets", extra={"open": len(self._connections)})
            for connection in list(self._connections):
                handlers.start_soon(self._close, connection, CloseCode.DRAINING, "node draining")
            if self._connections:
                await self._all_closed.wait()
            # What is left are handshakes and refused peers: nothing to finish.
            handlers.cancel_scope.cancel()

    async def _heartbeats(self) -> None:
        # Each actor keeps its own due time, a heartbeat after it opened: the
        # sockets of a burst of connections are pinged in the same round.
        period = self._settings.ws_heartbeat_s / _HEARTBEAT_SLICES
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for actor in self._actors:  # heartbeat() never adds or removes actors
                try:
                    actor.heartbeat(now)
                except Exception:
                    # One socket's bug must not stop the heartbeats of all the others.
                    log.exception("heartbeat failed", extra={"remote": actor.remote})

    async def _close(self, connection: WebSocketConnection, code: int, reason: str) -> None:
        with trio.move_on_after(_CLOSE_TIMEOUT_S):
            await connection.aclose(code, reason)

    async def _reject(
        self, request: WebSocketRequest, status: int, reason: str, code: str, message: str
    ) -> None:
        """Refuse a handshake with the shared error body, counted by ``reason``."""
        self._metrics.ws_rejected_total.labels(reason).inc()
        body = json.dumps(error_body(code, message), separators=(",", ":")).encode()
        await request.reject(status, body=body)

    async def _serve(self, stream: trio.SocketStream) -> None:
        """One TCP connection: its transport, the opening handshake, then :meth:`_handle`."""
        settings = self._settings
        remote = _peer_address(stream)
        transport = WsTransport(
            stream,
            max_frames=settings.ws_outbox_size,
            # As trio-websocket's own limit below: past it, the library closes with 1009.
            max_message_bytes=2 * settings.ws_max_message_bytes,
        )
        async with trio.open_nursery() as reader:
            try:
                request: WebSocketRequest | None = None
                with trio.move_on_after(_HANDSHAKE_TIMEOUT_S):
                    request = await wrap_server_stream(
                        reader,
                        transport,
                        # Frames past twice our limit are cut off by the library
                        # itself (1009) before we buffer them; up to that, we
                        # answer with our own error and 4008.
                        max_message_size=2 * settings.ws_max_message_bytes,
                        message_queue_size=4,
                    )
                if request is None:
                    return  # no opening handshake in time
                await self._handle(request, transport, remote)
            finally:
                # Every path through _handle has closed the WebSocket (or never
                # opened it); this cuts what is left and ends the reader task.
                await transport.aclose()

    async def _handle(
        self, request: WebSocketRequest, transport: WsTransport, remote: str | None
    ) -> None:
        if request.path.split("?", 1)[0] != WS_PATH:
            await self._reject(request, 404, "not_found", "not_found", "use /v1/ws")
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in request.headers
        }
        origin = headers.get("origin")
        if (
            self._origins is not None
            and origin is not None
            and origin.rstrip("/") not in self._origins
        ):
            await self._reject(request, 403, "origin", "origin_not_allowed", "origin not allowed")
            return
        if self._draining.is_set() or len(self._connections) >= self._settings.ws_max_connections:
            reason = "draining" if self._draining.is_set() else "too_many_connections"
            await self._reject(request, 503, reason, "unavailable", reason)
            return
        connection = await request.accept()
        if self._draining.is_set():
            transport.deliver_to(None)  # nobody will read what the client sends now
            await self._close(connection, CloseCode.DRAINING, "node draining")
            return
        self._connections.add(connection)
        self._metrics.ws_connections.inc()
        self._metrics.ws_connections_total.inc()
        actor = ConnectionActor(
            connection,
            transport,
            self._context,
            # Behind HAProxy the peer is the proxy; it names the client.
            remote=self._proxies.client_ip(remote, headers.get("x-forwarded-for")),
            user_agent=headers.get("user-agent"),
            device=headers.get("x-device-id"),
        )
        self._actors.add(actor)
        try:
            await actor.run()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self._metrics.ws_failures_total.inc()
            log.error(
                "connection actor failed; closing its socket with 1011",
                exc_info=exc,
                extra={"remote": remote},
            )
            await self._close(connection, CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._actors.discard(actor)
            self._connections.discard(connection)
            self._metrics.ws_connections.dec()
            if self._draining.is_set() and not self._connections:
                self._all_closed.set()


def _peer_address(stream: trio.SocketStream) -> str | None:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:  # the peer is already gone
        return None
