"""WsTransport over real loopback sockets, with trio-websocket on top where it matters.

Small socket buffers make the kernel take a few kilobytes at a time, so big
frames are written in pieces and queue up behind one another; the peers read
without sleeping, and the flusher waits for the socket like any writer would.
"""

from __future__ import annotations

import socket as stdlib_socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)
from wsproto.frame_protocol import FrameProtocol

from protocol.messages import frame_text
from server.ws_transport import WsTransport
from tests.protocol.test_frames import frame

SMALL_BUFFER = 4096
MAX_MESSAGE = 1 << 17
HANDSHAKE = (
    b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    # What browsers offer; the server must not take it up, or frame_text's
    # frames would not be what the client expects.
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


@asynccontextmanager
async def tcp_pair(
    *, small: bool = True
) -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """(server side, client side) of one loopback TCP connection."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        port = listener.socket.getsockname()[1]
        sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
        if small:  # before connecting, so the advertised window is small too
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, SMALL_BUFFER)
        await sock.connect(("127.0.0.1", port))
        client = trio.SocketStream(sock)
        server = await listener.accept()
    if small:
        server.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, SMALL_BUFFER)
    async with server, client:
        yield server, client


def message(i: int, size: int) -> str:
    return f"{i}:" + chr(ord("a") + i % 26) * size


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(opcode, payload) of each whole unmasked frame in ``data``, and what is left over."""
    frames: list[tuple[int, bytes]] = []
    while len(data) >= 2:
        first, length = data[0], data[1]
        assert first & 0x80, "every frame we send is final"
        assert not length & 0x80, "a server's frames are unmasked"
        start = 2
        if length == 126:
            if len(data) < 4:
                break
            (length,), start = struct.unpack_from("!H", data, 2), 4
        elif length == 127:
            if len(data) < 10:
                break
            (length,), start = struct.unpack_from("!Q", data, 2), 10
        if len(data) < start + length:
            break
        frames.append((first & 0x0F, data[start : start + length]))
        data = data[start + length :]
    return frames, data


async def read_frames(stream: trio.SocketStream, count: int) -> list[tuple[int, bytes]]:
    """Read until ``count`` whole frames have come, a little at a time."""
    frames: list[tuple[int, bytes]] = []
    pending = b""
    while len(frames) < count:
        chunk = await stream.receive_some(997)
        assert chunk, "EOF before every frame came"
        got, pending = parse_frames(pending + chunk)
        frames += got
    assert pending == b""
    return frames


async def fill(transport: WsTransport, sizes: list[int]) -> list[str]:
    """write_nowait messages of ``sizes`` until the queue refuses one; those it took."""
    taken: list[str] = []
    for i, size in enumerate(sizes):
        text = message(i, size)
        if not transport.write_nowait(frame_text(text)):
            break
        taken.append(text)
    return taken


async def test_a_frame_goes_straight_to_the_socket_when_nothing_is_queued() -> None:
    async with tcp_pair(small=False) as (server, client):
        transport = WsTransport(server, max_frames=4, max_message_bytes=MAX_MESSAGE)
        assert transport.write_nowait(frame_text("hello"))
        assert transport.statistics().queued == 0
        assert await read_frames(client, 1) == [(0x1, b"hello")]


async def test_a_slow_reader_gets_every_frame_whole_and_in_order() -> None:
    sizes = [100, 20_000, 5, 70_000, 3000] * 8
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        transport = WsTransport(server, max_frames=len(sizes), max_message_bytes=MAX_MESSAGE)
        sent = await fill(transport, sizes)
        assert len(sent) == len(sizes)
        assert transport.statistics().queued > 1  # the kernel took only a few of them
        nursery.start_soon(transport.run_flusher)
        frames = await read_frames(client, len(sent))
        assert frames == [(0x1, text.encode()) for text in sent]
        assert transport.statistics().queued == 0
        nursery.cancel_scope.cancel()


async def test_a_full_queue_refuses_the_frame_and_keeps_what_it_took() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        transport = WsTransport(server, max_frames=4, max_message_bytes=MAX_MESSAGE)
        sent = await fill(transport, [10_000] * 100)
        assert 4 <= len(sent) < 100
        assert transport.statistics().queued == 4
        assert not transport.write_nowait(frame_text("refused"))  # still full
        nursery.start_soon(transport.run_flusher)
        assert await read_frames(client, len(sent)) == [(0x1, t.encode()) for t in sent]
        # Drained: it takes frames again, straight to the socket.
        assert transport.write_nowait(frame_text("again"))
        assert await read_frames(client, 1) == [(0x1, b"again")]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def websocket_pair(
    *, max_frames: int
) -> AsyncIterator[tuple[WsTransport, WebSocketConnection, WebSocketConnection]]:
    """A trio-websocket server on a WsTransport, and a trio-websocket client to it."""
    async with tcp_pair() as (server_stream, client_stream), trio.open_nursery() as nursery:
        transport = WsTransport(server_stream, max_frames=max_frames, max_message_bytes=MAX_MESSAGE)
        sides: dict[str, WebSocketConnection] = {}

        async def serve() -> None:
            request = await wrap_server_stream(nursery, transport)
            sides["server"] = await request.accept()

        async def connect() -> None:
            sides["client"] = await wrap_client_stream(
                nursery, client_stream, "127.0.0.1", "/", message_queue_size=4
            )

        async with trio.open_nursery() as handshake:
            handshake.start_soon(serve)
            handshake.start_soon(connect)
        nursery.start_soon(transport.run_flusher)
        yield transport, sides["server"], sides["client"]
        nursery.cancel_scope.cancel()


async def test_trio_websocket_pings_and_close_never_split_a_frame() -> None:
    sizes = [30_000, 7, 12_000, 200, 65_536] * 20
    async with websocket_pair(max_frames=8) as (transport, server, client):
        received: list[str | bytes] = []

        async def read_all(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    received.append(await client.get_message())
            assert closed.value.reason is not None
            assert (closed.value.reason.code, closed.value.reason.reason) == (4321, "done")

        behind: list[int] = []

        async def keep_pinging() -> None:
            for _ in range(30):
                behind.append(transport.statistics().queued)
                await server.ping()  # its pong comes back only if every frame parsed

        sent: list[str] = []

        async def keep_writing() -> None:
            for i, size in enumerate(sizes):
                frame = frame_text(message(i, size))
                while not transport.write_nowait(frame):
                    await transport.flush()  # full: wait for the reader, then again
                sent.append(message(i, size))
                if i % 3 == 0:
                    await trio.lowlevel.checkpoint()  # let the pinger in between

        async with trio.open_nursery() as nursery:
            await nursery.start(read_all)
            async with trio.open_nursery() as writers:
                writers.start_soon(keep_pinging)
                writers.start_soon(keep_writing)
            await server.aclose(4321, "done")
            assert not transport.statistics().accepting
            assert transport.write_nowait(frame_text("after the close")), "dropped, quietly"
        assert received == sent
        assert max(behind) > 0, "no ping was queued behind data frames"


async def raw_handshake(client: trio.SocketStream, extra: bytes = b"") -> bytes:
    """Send the opening handshake (``extra`` right behind the request, before the
    response); what came after the server's response head."""
    await client.send_all(HANDSHAKE + extra)
    response = b""
    while b"\r\n\r\n" not in response:
        response += await client.receive_some(4096)
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-extensions" not in head.lower()
    return rest


@asynccontextmanager
async def raw_client_pair(
    *, before_response: bytes = b"", small: bool = False
) -> AsyncIterator[tuple[WsTransport, WebSocketConnection, trio.SocketStream]]:
    """A trio-websocket server on a WsTransport, and a raw TCP client that did the
    handshake (sending ``before_response`` right behind its request)."""
    async with tcp_pair(small=small) as (server_stream, client), trio.open_nursery() as nursery:
        transport = WsTransport(server_stream, max_frames=16, max_message_bytes=MAX_MESSAGE)

        async def serve(*, task_status: trio.TaskStatus[WebSocketConnection]) -> None:
            request = await wrap_server_stream(nursery, transport)
            task_status.started(await request.accept())

        async with trio.open_nursery() as handshake:
            handshake.start_soon(raw_handshake, client, before_response)
            server: WebSocketConnection = await handshake.start(serve)
        yield transport, server, client
        nursery.cancel_scope.cancel()


async def read_to_eof(client: trio.SocketStream, pending: bytes) -> list[tuple[int, bytes]]:
    """Every frame until the server hangs up, answering its close frame as a client would."""
    frames: list[tuple[int, bytes]] = []
    answered = False
    while chunk := await client.receive_some(997):
        got, pending = parse_frames(pending + chunk)
        frames += got
        if not answered and any(opcode == 0x8 for opcode, _ in frames):
            answer = FrameProtocol(client=True, extensions=[]).close(4000)
            await client.send_all(bytes(answer))
            answered = True
    assert pending == b""
    return frames


@pytest.mark.parametrize("discard", [False, True])
async def test_no_data_frame_follows_the_close_frame(discard: bool) -> None:
    async with (
        raw_client_pair(small=True) as (transport, server, client),
        trio.open_nursery() as nursery,
    ):
        # The client reads nothing yet: frames pile up in the queue.
        sent = await fill(transport, [9000] * 100)
        assert transport.statistics().queued == 16
        nursery.start_soon(transport.run_flusher)
        if discard:
            transport.discard_queued()
        nursery.start_soon(server.aclose, 4000, "bye")
        await trio.testing.wait_all_tasks_blocked()  # the close frame waits in the queue
        assert not transport.statistics().accepting
        assert transport.write_nowait(frame_text("too late")), "dropped, quietly"
        frames = await read_to_eof(client, b"")
        *data, last = frames
        assert last[0] == 0x8 and struct.unpack("!H", last[1][:2]) == (4000,)
        assert all(opcode == 0x1 for opcode, _ in data)
        texts = [payload.decode() for _, payload in data]
        if discard:
            # What the kernel had, and at most the one frame it had begun.
            assert texts == sent[: len(texts)]
            assert len(texts) <= len(sent) - 16 + 1
        else:
            assert texts == sent


async def test_a_peer_reset_breaks_the_transport_without_raising_from_write_nowait() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        transport = WsTransport(server, max_frames=8, max_message_bytes=MAX_MESSAGE)
        await fill(transport, [10_000] * 100)  # the queue is full
        flushed = trio.Event()

        async def flush_until_broken() -> None:
            await transport.run_flusher()  # returns once the transport breaks
            flushed.set()

        nursery.start_soon(flush_until_broken)
        client.setsockopt(
            stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        await client.aclose()  # RST, with everything unread
        await flushed.wait()
        assert transport.statistics().broken
        assert transport.statistics().queued == 0
        assert transport.write_nowait(frame_text("into the void"))
        with pytest.raises(trio.BrokenResourceError):
            await transport.send_all(b"\x89\x00")


async def test_a_reset_seen_by_write_nowait_itself() -> None:
    async with tcp_pair(small=False) as (server, client):
        transport = WsTransport(server, max_frames=8, max_message_bytes=MAX_MESSAGE)
        client.setsockopt(
            stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        await client.aclose()
        await trio.lowlevel.wait_readable(server.socket)  # the RST has arrived
        for _ in range(3):
            assert transport.write_nowait(frame_text("x" * 1000))
        assert transport.statistics().broken
        await transport.run_flusher()  # returns at once: nothing will ever be written


async def test_send_eof_writes_the_queue_first_and_aclose_drops_it() -> None:
    async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
        transport = WsTransport(server, max_frames=8, max_message_bytes=MAX_MESSAGE)
        sent = await fill(transport, [10_000] * 100)
        frames: list[tuple[int, bytes]] = []

        async def read() -> None:
            frames.extend(await read_to_eof(client, b""))

        nursery.start_soon(read)
        await transport.send_eof()
        assert transport.write_nowait(frame_text("after EOF")), "dropped, quietly"
        with pytest.raises(trio.ClosedResourceError):
            await transport.send_all(b"\x89\x00")
        await transport.aclose()
        await transport.aclose()  # idempotent
    assert frames == [(0x1, t.encode()) for t in sent]
    assert transport.write_nowait(frame_text("after close"))
    with pytest.raises(trio.ClosedResourceError):
        await transport.send_all(b"\x89\x00")
    with pytest.raises(trio.ClosedResourceError):
        await transport.wait_send_all_might_not_block()


async def test_aclose_wakes_a_writer_waiting_for_a_stuck_peer() -> None:
    async with tcp_pair() as (server, _client), trio.open_nursery() as nursery:
        transport = WsTransport(server, max_frames=8, max_message_bytes=MAX_MESSAGE)
        await fill(transport, [10_000] * 100)
        failed = trio.Event()

        async def send_ping(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            with pytest.raises(trio.ClosedResourceError):
                await transport.send_all(b"\x89\x00")  # behind a full queue
            failed.set()

        await nursery.start(send_ping)
        await trio.testing.wait_all_tasks_blocked()  # it waits for the socket
        await transport.aclose()
        await failed.wait()
        assert transport.statistics().queued == 0


# ---------------------------------------------------------------- reading


class Sink:
    """A message sink that keeps what it gets and says when ``count`` have come."""

    def __init__(self, count: int) -> None:
        self.got: list[str | bytes] = []
        self.count = count
        self.full = trio.Event()

    async def __call__(self, message: str | bytes) -> None:
        self.got.append(message)
        if len(self.got) >= self.count:
            self.full.set()


async def test_client_messages_go_to_the_sink_and_pings_still_get_pongs() -> None:
    async with websocket_pair(max_frames=8) as (transport, _, client):
        sink = Sink(100)
        transport.deliver_to(sink)
        expected: list[str | bytes] = []
        with trio.fail_after(10):
            for i in range(50):
                await client.send_message(f"text {i}")
                await client.send_message(f"binary {i}".encode())
                expected += [f"text {i}", f"binary {i}".encode()]
                if i % 10 == 0:
                    await client.ping()  # returns once trio-websocket on the server answered
            await sink.full.wait()
        assert sink.got == expected


async def test_after_a_fragmented_message_the_rest_comes_through_trio_websocket() -> None:
    async with raw_client_pair() as (transport, server, client):
        sink = Sink(1)
        transport.deliver_to(sink)
        await client.send_all(
            frame(0x81, b"one") + frame(0x01, b"tw") + frame(0x80, b"o") + frame(0x81, b"three")
        )
        with trio.fail_after(10):
            assert await server.get_message() == "two"
            assert await server.get_message() == "three"
        assert sink.got == ["one"]


async def test_messages_wait_for_the_sink_and_none_drops_them() -> None:
    async with raw_client_pair() as (transport, server, client):
        await client.send_all(frame(0x81, b"early"))
        await trio.testing.wait_all_tasks_blocked()
        sink = Sink(2)
        transport.deliver_to(sink)
        await client.send_all(frame(0x81, b"later"))
        with trio.fail_after(10):
            await sink.full.wait()
        assert sink.got == ["early", "later"]
    async with raw_client_pair() as (transport, server, client):
        transport.deliver_to(None)
        await client.send_all(frame(0x81, b"dropped") + frame(0x88, b"\x03\xe8"))
        with pytest.raises(ConnectionClosed), trio.fail_after(10):
            await server.get_message()  # the close frame still reached trio-websocket


async def test_frames_sent_with_the_handshake_request_are_left_to_trio_websocket() -> None:
    # wsproto may hold part of a frame then, so this connection is never split.
    async with raw_client_pair(before_response=frame(0x81, b"eager")) as (
        transport,
        server,
        client,
    ):
        sink = Sink(1)
        transport.deliver_to(sink)
        await client.send_all(frame(0x81, b"next"))
        with trio.fail_after(10):
            # (trio-websocket drops a frame that came before its response, with or
            # without this transport: a client must wait for the response.)
            assert await server.get_message() == "next"
        assert sink.got == []


async def test_reading_a_reset_or_closed_transport_raises_what_trio_websocket_expects() -> None:
    async with tcp_pair() as (server, client):
        transport = WsTransport(server, max_frames=8, max_message_bytes=MAX_MESSAGE)
        await client.send_all(b"bytes before the reset")
        assert await transport.receive_some() == b"bytes before the reset"
        linger = struct.pack("ii", 1, 0)  # close with RST, not FIN
        client.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, linger)
        client.socket.close()
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(5):
            await transport.receive_some()
        await transport.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await transport.receive_some()
