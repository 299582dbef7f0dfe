"""A WebSocket's byte stream with a send that never waits: one ordered queue per socket.

trio-websocket reads and writes a connection through a :class:`trio.abc.Stream`.
:class:`WsTransport` is that stream over a :class:`trio.SocketStream`, with one
more way in: :meth:`WsTransport.write_nowait` takes a whole data frame, already
framed (:func:`protocol.messages.frame_text`), and returns at once. If nothing
is queued, the frame goes straight to the non-blocking socket, with no
checkpoint and no task switch; what the kernel does not take is queued, and
:meth:`WsTransport.run_flusher` writes it when the socket is writable again.

trio-websocket's own writes (the handshake response, pings, pongs, close
frames) come through :meth:`WsTransport.send_all`, which appends to the same
queue and waits until its bytes are written. So there is exactly one queue:
frames leave in the order they were handed in and a partly written frame is
never interleaved with another. Once a close frame has gone in that way,
:meth:`~WsTransport.write_nowait` drops data frames, since nothing may follow
a close frame.

Reading has a fast path too. trio-websocket's reader task reads through
:meth:`WsTransport.receive_some`; once the opening handshake is done, the
transport splits the client's whole data messages off the byte stream itself
(:class:`protocol.frames.ClientFrameSplitter`) and awaits, for each, the
**message sink** the connection actor set with :meth:`WsTransport.deliver_to`
— in that same task, with no parsing by wsproto and no hand-over through a
channel. Only what is left (pings, pongs, a close frame, and every byte after
anything unusual) reaches trio-websocket, which handles it as ever; a
message it assembles from those reaches the actor through ``get_message()``.
Messages that come before the sink is set wait for it, and so does reading;
a sink of ``None`` drops them (a socket closed as soon as it opened). If the
client sent anything after its handshake request before the response went
out, wsproto may hold part of a frame, so that connection is not split at all.

The transport also notes when the peer last sent anything
(:attr:`WsTransport.last_received`): the listener's heartbeats
(:class:`server.ws_listener.WsListener`) drop a peer that has been silent
through two pings.

*Resource handling*: the queue is bounded, in frames (``max_frames``, the
setting ``ws_outbox_size``): :meth:`~WsTransport.write_nowait` returns False
when it is full, and the caller closes the socket as too slow. trio-websocket's
writes are not counted against the bound; it waits for each of them.

*Error handling*: a peer that resets the connection breaks the transport,
quietly for :meth:`~WsTransport.write_nowait`, which drops frames from then on
(the reader sees the reset and the connection ends); :meth:`send_all` raises
:exc:`trio.BrokenResourceError`, as trio-websocket expects of a stream.

*What this relies on in trio-websocket* (pinned to 0.12 in pyproject.toml;
tests/server/test_ws_transport.py fails if it changes): each of its writes is
one :meth:`send_all` call carrying exactly one whole frame, or the HTTP
response to the handshake; and the frames of a server it wraps are unmasked
and use no extension, so a data frame can be built without it.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Final

import trio

from protocol.frames import ClientFrameSplitter, MessageSink

_CLOSE_OPCODE: Final = 0x8
_UPGRADED: Final = b"HTTP/1.1 101 "
#: Buffers per writev(2); Linux takes up to 1024.
_MAX_BUFFERS: Final = 256
_HEAD_END: Final = b"\r\n\r\n"
#: Bytes asked of the socket per read when the caller names no size (trio's default).
_RECEIVE_BYTES: Final = 65536
#: The most bytes of the opening handshake request kept to find where it ends.
_MAX_HANDSHAKE_BYTES: Final = 65536


class _Control(bytes):
    """Bytes that came through :meth:`WsTransport.send_all`: a task waits until they are written."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class WsTransportStatistics:
    #: Chunks waiting for the socket: data frames and trio-websocket's writes.
    queued: int
    #: Whether data frames are still written (no close frame, EOF, close or reset yet).
    accepting: bool
    broken: bool


class WsTransport(trio.abc.HalfCloseableStream):
    """The stream trio-websocket uses for one socket; see the module docstring.

    ``stream`` must be a connected TCP :class:`trio.SocketStream` (as a
    :class:`trio.SocketListener` accepts); the transport owns it from now on.
    """

    def __init__(
        self, stream: trio.SocketStream, *, max_frames: int, max_message_bytes: int
    ) -> None:
        self.transport_stream = stream
        self._socket = stream.socket
        self._fd = stream.socket.fileno()
        self._max_frames = max_frames
        self._queue: deque[bytes] = deque()
        self._head_sent = 0  # bytes of _queue[0] already written
        self._control_queued = 0  # bytes of _Control chunks ever queued...
        self._control_sent = 0  # ...and of those, written
        self._write_lock = trio.Lock()  # one task at a time waits for writability
        self._wake_flusher = trio.Event()
        self._upgraded = False  # the handshake response went: send_all gets frames now
        self._accepting = True  # write_nowait writes (no close frame, EOF, close or reset yet)
        self._eof = False
        self._closed = False
        self._broken = False
        #: trio.current_time() when the peer last sent bytes (or the transport was made).
        self.last_received = trio.current_time()
        # Reading: the handshake request as read so far, then the splitter and the sink.
        self._request: bytes | None = b""
        self._splitter = ClientFrameSplitter(max_payload=max_message_bytes)
        self._sink: MessageSink | None = None
        self._sink_set = trio.Event()

    def statistics(self) -> WsTransportStatistics:
        return WsTransportStatistics(
            queued=len(self._queue), accepting=self._accepting, broken=self._broken
        )

    # ---- the data path

    def write_nowait(self, frame: bytes) -> bool:
        """Write one whole frame now, or queue it behind what is queued; never blocks.

        Returns False, and queues nothing, if ``max_frames`` frames are
        already waiting: the peer is not keeping up. Returns True otherwise,
        including when the frame is dropped because the connection is going
        away (a close frame was sent, EOF, closed, or the peer reset it).
        """
        if not self._accepting:
            return True
        queue = self._queue
        if queue:
            if len(queue) >= self._max_frames:
                return False
            queue.append(frame)
            self._wake_flusher.set()
            return True
        try:
            # write(2) on the socket's fd: no checkpoint, no task switch. A
            # peer gone away gives EPIPE, not SIGPIPE: CPython ignores that.
            sent = os.write(self._fd, frame)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset, broken pipe: the reader will see it too
            self._break()
            return True
        if sent < len(frame):
            queue.append(frame)
            self._head_sent = sent
            self._wake_flusher.set()
        return True

    async def run_flusher(self) -> None:
        """Write what :meth:`write_nowait` queued whenever the socket can take it.

        Returns when the transport is closed or broken; never otherwise
        unless cancelled. Run one per transport.
        """
        while not (self._closed or self._broken):
            if not self._queue:
                self._wake_flusher = trio.Event()
                await self._wake_flusher.wait()
                continue
            try:
                await self._drain(self._queue_empty)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def flush(self) -> None:
        """Wait until nothing is queued; at once if the transport is closed or broken."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._drain(self._queue_empty)

    def discard_queued(self) -> None:
        """Drop the queued data frames that have not begun to go out.

        For a peer that is not reading: what trio-websocket queued (say, a
        close frame) then goes next. A frame partly written stays, so the
        byte stream remains whole frames.
        """
        queue = self._queue
        kept: deque[bytes] = deque(chunk for chunk in queue if type(chunk) is _Control)
        if queue and self._head_sent and type(queue[0]) is not _Control:
            kept.appendleft(queue[0])
        self._queue = kept

    def deliver_to(self, sink: MessageSink | None) -> None:
        """Hand whole data messages to ``sink`` from now on (``None``: drop them).

        Set once, by whoever serves the socket: messages wait for it, and
        reading waits with them. ``sink`` runs in trio-websocket's reader task;
        it must not raise.
        """
        self._sink = sink
        self._sink_set.set()

    # ---- trio.abc.HalfCloseableStream, for trio-websocket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` behind everything queued and wait until it is written."""
        self._check_open()
        if self._eof:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        chunk = _Control(data)
        if self._upgraded:
            if chunk and chunk[0] & 0x0F == _CLOSE_OPCODE:
                self._accepting = False  # no data frame may follow a close frame
        elif chunk.startswith(_UPGRADED):
            self._upgraded = True
            # Split frames only if wsproto saw nothing past the request's head.
            request, self._request = self._request, None
            if request is None or request.find(_HEAD_END) + len(_HEAD_END) != len(request):
                self._splitter.passthrough = True
        if chunk:
            self._queue.append(chunk)
            self._control_queued += len(chunk)
        mark = self._control_queued
        await self._drain(lambda: self._control_sent >= mark)

    async def wait_send_all_might_not_block(self) -> None:
        await self._drain(self._queue_empty)
        async with self._write_lock:
            self._check_open()
            await trio.lowlevel.wait_writable(self._socket)

    async def send_eof(self) -> None:
        """Send what is queued, then EOF; :meth:`write_nowait` drops from now on."""
        self._accepting = False
        self._eof = True
        await self._drain(self._queue_empty)
        await self.transport_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The next bytes for trio-websocket; whole data messages go to the sink instead
        (see the module docstring), so this reads on until something is left for it."""
        while True:
            data = await self._receive(max_bytes or _RECEIVE_BYTES)
            if not data:
                return data
            self.last_received = trio.current_time()
            if not self._upgraded:
                self._note_request(data)
                return data
            messages, passed = self._splitter.feed(bytes(data))
            for message in messages:
                await self._deliver(message)
            if passed:
                return passed

    async def _receive(self, max_bytes: int) -> bytes:
        """``SocketStream.receive_some``, but waiting for the socket first.

        trio tries the read first and waits only if nothing came. A client
        with one submission in flight has sent nothing more by the time its
        message is handled, so that first try is a failed recv(2) per message;
        waiting first saves it (a read that finds nothing, a spurious wake-up,
        just waits again).
        """
        while True:
            if self._socket.fileno() == -1:
                raise trio.ClosedResourceError("the transport was closed")
            await trio.lowlevel.wait_readable(self._socket)
            try:
                return os.read(self._fd, max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:  # a reset: what trio's SocketStream raises for it
                raise trio.BrokenResourceError from exc

    def _note_request(self, data: bytes | bytearray) -> None:
        """Keep the handshake request's bytes, to see where it ends (at most 64 KiB)."""
        if self._request is not None:
            request = self._request + data
            self._request = request if len(request) <= _MAX_HANDSHAKE_BYTES else None

    async def _deliver(self, message: str | bytes) -> None:
        if not self._sink_set.is_set():
            await self._sink_set.wait()
        if self._sink is not None:
            await self._sink(message)

    async def aclose(self) -> None:
        """Close the socket; what is still queued is dropped, waiting writers get
        :exc:`trio.ClosedResourceError`."""
        self._closed = True
        self._accepting = False
        self._queue.clear()
        self._wake_flusher.set()
        await self.transport_stream.aclose()  # wakes a task waiting for writability

    # ---- writing

    def _queue_empty(self) -> bool:
        return not self._queue

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the transport was closed")
        if self._broken:
            raise trio.BrokenResourceError("the peer reset the connection")

    def _break(self) -> None:
        self._broken = True
        self._accepting = False
        self._queue.clear()
        self._wake_flusher.set()

    async def _drain(self, done: Callable[[], bool]) -> None:
        """Write the queue in order until ``done()``, waiting for the socket as needed."""
        async with self._write_lock:
            while not done():
                self._check_open()
                self._write_queued()
                if done():
                    return
                self._check_open()
                await trio.lowlevel.wait_writable(self._socket)

    def _write_queued(self) -> None:
        """Write as much of the queue as the kernel takes now."""
        queue = self._queue
        while queue:
            buffers: list[bytes | memoryview] = [memoryview(queue[0])[self._head_sent :]]
            buffers.extend(islice(queue, 1, _MAX_BUFFERS))
            try:
                sent = os.writev(self._fd, buffers)
            except BlockingIOError:
                return
            except OSError:
                self._break()
                return
            full = sent < sum(len(b) for b in buffers)
            while queue:
                head = queue[0]
                left = len(head) - self._head_sent
                taken = min(left, sent)
                if type(head) is _Control:
                    self._control_sent += taken
                if taken < left:
                    self._head_sent += taken
                    break
                sent -= taken
                queue.popleft()
                self._head_sent = 0
            if full:
                return
