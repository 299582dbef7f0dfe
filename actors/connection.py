"""The connection actor: one per WebSocket, owning that socket's session.

It greets the client with ``welcome`` and answers frames until the peer goes
away. The protocol itself is decoded by :mod:`protocol.messages` (sans-IO);
this actor only moves frames. A bad frame gets its documented error (and a
close code where the protocol says so); any other failure is the listener's
to handle: it closes only this socket, with 1011.
"""

from __future__ import annotations

from typing import Protocol

import trio

from protocol.messages import (
    Error,
    Ping,
    Pong,
    ProtocolError,
    ServerMessage,
    Welcome,
    decode_client,
    encode,
)


class MessageSocket(Protocol):
    """What the actor needs of a WebSocket (trio-websocket's connection fits)."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


class ConnectionActor:
    """Serves one WebSocket; see the module docstring.

    Never returns until the peer closes (the transport's ``ConnectionClosed``
    propagates to the caller) or the protocol closes the socket.
    """

    def __init__(
        self, socket: MessageSocket, *, node_id: str, heartbeat_s: float, max_message_bytes: int
    ) -> None:
        self._socket = socket
        self._node_id = node_id
        self._heartbeat_s = heartbeat_s
        self._max_message_bytes = max_message_bytes

    async def _send(self, message: ServerMessage) -> None:
        await self._socket.send_message(encode(message))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._send(Welcome(node_id=self._node_id, heartbeat_s=self._heartbeat_s))
        task_status.started()
        while True:
            frame = await self._socket.get_message()
            try:
                message = decode_client(frame, max_bytes=self._max_message_bytes)
            except ProtocolError as exc:
                await self._send(Error(code=exc.code, message=exc.message))
                if exc.close is not None:
                    await self._socket.aclose(exc.close, exc.message[:120])
                    return
                continue
            match message:
                case Ping(id=msg_id):
                    await self._send(Pong(id=msg_id))
