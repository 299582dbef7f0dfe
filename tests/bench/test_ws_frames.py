"""bench/ws_frames.py against real implementations: wsproto as a server, the node's framer."""

from __future__ import annotations

import base64
import struct

import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from bench import ws_frames
from bench.ws_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    HandshakeError,
    Message,
    accept_value,
    check_upgrade_response,
    client_frame,
    close_code,
    close_payload,
    split_response,
    upgrade_request,
)
from protocol.messages import frame_text

#: Each length encoding at its edges: 7-bit up to 125, 16-bit 126 to 65535, then 64-bit.
SIZES = [0, 1, 125, 126, 127, 65535, 65536]


def server() -> tuple[WSConnection, str]:
    """A wsproto server that accepted a handshake from ws_frames; and the key used."""
    conn = WSConnection(ConnectionType.SERVER)
    key = ws_frames.new_key()
    conn.receive_data(upgrade_request("127.0.0.1:8001", "/v1/ws", key))
    (request,) = list(conn.events())
    assert isinstance(request, Request)
    head, rest = split_response(conn.send(AcceptConnection())) or (b"", b"")
    check_upgrade_response(head, key)
    assert rest == b""
    return conn, key


def text_of(size: int) -> str:
    return ("0123456789abcdef" * (size // 16 + 1))[:size]


def feed_all(reader: FrameReader, *chunks: bytes) -> list[Message]:
    got: list[Message] = []
    for chunk in chunks:
        got += reader.feed(chunk)
    return got


def check_every_split(frames: list[bytes], expected: list[Message]) -> None:
    """Each frame split in two at every byte boundary; all of them concatenated; the
    small ones concatenated and fed a byte at a time."""
    for frame, message in zip(frames, expected, strict=True):
        for i in range(len(frame) + 1):
            assert feed_all(FrameReader(), frame[:i], frame[i:]) == [message], (len(frame), i)
    assert FrameReader().feed(b"".join(frames)) == expected
    small = [(f, m) for f, m in zip(frames, expected, strict=True) if len(f) < 1000]
    stream = b"".join(f for f, _ in small)
    got = feed_all(FrameReader(), *(stream[i : i + 1] for i in range(len(stream))))
    assert got == [m for _, m in small]


# ---------------------------------------------------------------- handshake


def test_accept_value_is_rfc_6455s_example() -> None:
    assert accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_upgrade_request_is_accepted_by_wsproto_and_carries_extra_headers() -> None:
    conn = WSConnection(ConnectionType.SERVER)
    key = ws_frames.new_key()
    assert len(base64.b64decode(key)) == 16 and key != ws_frames.new_key()
    conn.receive_data(upgrade_request("h:1", "/v1/ws", key, [("Origin", "http://example.com")]))
    (request,) = list(conn.events())
    assert isinstance(request, Request)
    assert request.target == "/v1/ws" and request.host == "h:1"
    assert (b"origin", b"http://example.com") in list(request.extra_headers)
    response = conn.send(AcceptConnection()) + frame_text('{"type":"welcome"}')
    parts = split_response(response)
    assert parts is not None
    head, rest = parts
    check_upgrade_response(head, key)
    # What follows the head is the first frame.
    assert FrameReader().feed(rest) == [(OP_TEXT, b'{"type":"welcome"}')]
    assert split_response(response[: len(head) + 3]) is None


def test_upgrade_response_checks() -> None:
    key = ws_frames.new_key()
    good = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"sec-websocket-accept:  {accept_value(key)}"
    ).encode()
    check_upgrade_response(good, key)
    with pytest.raises(HandshakeError, match="Sec-WebSocket-Accept"):
        check_upgrade_response(good, ws_frames.new_key())
    with pytest.raises(HandshakeError, match="Sec-WebSocket-Accept"):
        check_upgrade_response(good.rsplit(b"\r\n", 1)[0], key)
    with pytest.raises(HandshakeError, match="extension"):
        check_upgrade_response(good + b"\r\nSec-WebSocket-Extensions: permessage-deflate", key)
    with pytest.raises(HandshakeError, match="not an HTTP response"):
        check_upgrade_response(b"SSH-2.0-OpenSSH", key)

    conn = WSConnection(ConnectionType.SERVER)
    conn.receive_data(upgrade_request("h:1", "/v1/ws", key))
    list(conn.events())
    body = b'{"error":{"code":"unavailable","message":"draining"}}'
    refusal = conn.send(
        RejectConnection(status_code=503, headers=[(b"content-length", b"53")], has_body=True)
    ) + conn.send(RejectData(data=body))
    parts = split_response(refusal)
    assert parts is not None
    with pytest.raises(HandshakeError, match=r"HTTP 503.*draining") as refused:
        check_upgrade_response(parts[0], key, parts[1])
    assert refused.value.status == 503
    assert isinstance(refused.value, ValueError)


# ---------------------------------------------------------------- frames from a server


def test_reader_reads_wsprotos_text_and_binary_frames_at_every_split() -> None:
    conn, _ = server()
    frames, expected = [], []
    for size in SIZES:
        text = text_of(size)
        frames.append(conn.send(TextMessage(data=text)))
        expected.append((OP_TEXT, text.encode()))
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        frames.append(conn.send(BytesMessage(data=payload)))
        expected.append((OP_BINARY, payload))
    # The three length encodings are all there.
    assert {f[1] for f in frames if len(f) > 4} >= {125, 126, 127}
    check_every_split(frames, expected)


def test_reader_reads_the_nodes_own_frames_at_every_split() -> None:
    texts = [text_of(n) for n in SIZES] + ['{"type":"update","seq":1,"entries":["é…"]}']
    frames = [frame_text(t) for t in texts]
    check_every_split(frames, [(OP_TEXT, t.encode()) for t in texts])


def test_the_common_case_takes_the_fast_path_and_matches_the_general_one() -> None:
    for size in (0, 5, 125, 126, 1000, 65535):
        frame = frame_text(text_of(size))
        fast = FrameReader().feed(frame)
        general = FrameReader()._parse(frame)
        assert fast == general == [(OP_TEXT, text_of(size).encode())]


def test_fragments_are_reassembled_with_control_frames_between_them() -> None:
    conn, _ = server()
    frames = [
        conn.send(TextMessage(data="héllo ", message_finished=False)),
        conn.send(Ping(payload=b"hb-1")),
        conn.send(TextMessage(data=text_of(126), message_finished=False)),
        conn.send(Pong(payload=b"")),
        conn.send(TextMessage(data="!", message_finished=True)),
        conn.send(BytesMessage(data=b"\x00" * 65536, message_finished=False)),
        conn.send(Ping(payload=b"x" * 125)),
        conn.send(BytesMessage(data=b"\x01", message_finished=True)),
        conn.send(TextMessage(data="after")),
    ]
    assert frames[0][0] == 0x01 and frames[2][0] == 0x00  # not final; a continuation
    expected = [
        (OP_PING, b"hb-1"),
        (OP_PONG, b""),
        (OP_TEXT, ("héllo " + text_of(126) + "!").encode()),
        (OP_PING, b"x" * 125),
        (OP_BINARY, b"\x00" * 65536 + b"\x01"),
        (OP_TEXT, b"after"),
    ]
    stream = b"".join(frames)
    assert FrameReader().feed(stream) == expected
    for i in range(len(stream) + 1):
        assert feed_all(FrameReader(), stream[:i], stream[i:]) == expected, i
    small = b"".join(frames[:5])
    reader = FrameReader()
    got = feed_all(reader, *(small[i : i + 1] for i in range(len(small))))
    assert got == expected[:3]


def test_close_frames_and_their_codes() -> None:
    conn, _ = server()
    frame = conn.send(CloseConnection(code=4508, reason="too slow"))
    ((opcode, payload),) = FrameReader().feed(frame)
    assert opcode == OP_CLOSE and close_code(payload) == 4508 and payload[2:] == b"too slow"
    assert FrameReader().feed(b"\x88\x00") == [(OP_CLOSE, b"")]
    assert close_code(b"") == 1005
    assert close_code(close_payload(1000)) == 1000
    with pytest.raises(FrameError):
        close_code(b"\x03")
    assert [ws_frames.reply_code(c) for c in (1000, 1001, 4508, 1005, 1006, 1015, 999, 5000)] == [
        1000, 1001, 4508, 1000, 1000, 1000, 1000, 1000,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (client_frame(OP_TEXT, b"hi"), "masked"),
        (b"\xc1\x02hi", "reserved bits"),  # RSV1: permessage-deflate, never negotiated
        (b"\xa1\x02hi", "reserved bits"),
        (b"\x91\x02hi", "reserved bits"),
        (b"\x83\x02hi", "unknown data opcode"),
        (b"\x87\x00", "unknown data opcode"),
        (b"\x8b\x00", "unknown control opcode"),
        (b"\x8f\x00", "unknown control opcode"),
        (b"\x89\x7e\x00\x7e" + b"x" * 126, "control frame of 126 bytes"),
        (b"\x88\x7f" + struct.pack("!Q", 200) + b"x" * 200, "control frame of 200 bytes"),
        (b"\x09\x02hb", "fragmented control frame"),
        (b"\x80\x02hi", "continuation frame with no message"),
        (b"\x01\x02hi\x81\x02hi", "new message before the fragmented one ended"),
        (b"\x82\x7f\x80" + b"\x00" * 7, "most significant bit"),
    ],
)
def test_frames_a_client_must_not_accept(frame: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why) as raised:
        FrameReader().feed(frame)
    assert isinstance(raised.value, ValueError)
    # Also when the frame arrives a byte at a time.
    reader = FrameReader()
    with pytest.raises(FrameError, match=why):
        for i in range(len(frame)):
            reader.feed(frame[i : i + 1])


def test_messages_over_the_bound_are_refused_from_their_header() -> None:
    reader = FrameReader(max_message_bytes=1000)
    assert reader.feed(frame_text(text_of(1000))) == [(OP_TEXT, text_of(1000).encode())]
    assert reader.feed(frame_text(text_of(100))) == [(OP_TEXT, text_of(100).encode())]
    # The header alone is enough to refuse it: nothing of the payload is buffered.
    with pytest.raises(FrameError, match="over 1000 bytes"):
        FrameReader(max_message_bytes=1000).feed(frame_text(text_of(1001))[:4])
    with pytest.raises(FrameError, match="over 1000 bytes"):
        FrameReader(max_message_bytes=1000).feed(b"\x82\x7f" + struct.pack("!Q", 1 << 40))
    with pytest.raises(FrameError, match="over 100 bytes"):
        FrameReader(max_message_bytes=100).feed(frame_text(text_of(101)))
    # Fragments count together.
    conn, _ = server()
    reader = FrameReader(max_message_bytes=1000)
    assert reader.feed(conn.send(TextMessage(data=text_of(600), message_finished=False))) == []
    with pytest.raises(FrameError, match="over 1000 bytes"):
        reader.feed(conn.send(TextMessage(data=text_of(401))))


# ---------------------------------------------------------------- frames to a server


def test_client_frames_are_masked_and_read_by_wsproto() -> None:
    conn, _ = server()
    keys = set()
    for size in SIZES:
        payload = text_of(size).encode()
        frame = client_frame(OP_TEXT, payload)
        assert frame[0] == 0x81 and frame[1] & 0x80, "final text frame, masked"
        head = 2 + {126: 2, 127: 8}.get(frame[1] & 0x7F, 0)
        keys.add(frame[head : head + 4])
        if size >= 16:
            assert payload[:16] not in frame
        conn.receive_data(frame)
        events: list[Event] = list(conn.events())
        assert events == [TextMessage(data=payload.decode())], size
        conn.receive_data(client_frame(OP_BINARY, payload))
        assert list(conn.events()) == [BytesMessage(data=bytearray(payload))]
    assert len(keys) == len(SIZES), "a fresh random mask per frame"
    assert ws_frames.text_frame("é")[0] == 0x81
    conn.receive_data(ws_frames.text_frame('{"type":"ping","id":"é"}'))
    assert list(conn.events()) == [TextMessage(data='{"type":"ping","id":"é"}')]
    conn.receive_data(client_frame(OP_PONG, b"hb-1"))
    assert list(conn.events()) == [Pong(payload=b"hb-1")]
    conn.receive_data(client_frame(OP_PING, b"x" * 125))
    assert list(conn.events()) == [Ping(payload=b"x" * 125)]
    conn.receive_data(client_frame(OP_CLOSE, close_payload(1000, "bye")))
    assert list(conn.events()) == [CloseConnection(code=1000, reason="bye")]


def test_wsproto_refuses_an_unmasked_client_frame() -> None:
    # So the test above does check the masking.
    conn, _ = server()
    conn.receive_data(frame_text("hi"))
    (event,) = list(conn.events())
    assert isinstance(event, CloseConnection) and event.code == 1002


def test_client_frame_refuses_what_a_client_must_not_send() -> None:
    with pytest.raises(ValueError, match="at most 125"):
        client_frame(OP_PING, b"x" * 126)
    with pytest.raises(ValueError, match="opcode"):
        client_frame(0x0, b"x")
    with pytest.raises(ValueError, match="opcode"):
        client_frame(0x3, b"x")


# ---------------------------------------------------------------- over a real socket


async def test_a_session_with_trio_websocket_as_the_server() -> None:
    """Handshake with an Origin, a message past 64 KiB, a heartbeat ping, closes both ways."""
    seen: list[object] = []
    handled_send, handled = trio.open_memory_channel[None](2)

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        seen.append(dict(request.headers).get(b"origin"))
        ws = await request.accept()
        await ws.send_message('{"type":"welcome"}')
        with trio.fail_after(5):
            await ws.ping(b"hb-1")  # returns once the pong came back
        seen.append("pong")
        await ws.send_message(text_of(70000))
        seen.append(await ws.get_message())
        if seen[-1] == "close me":
            await ws.aclose(4508, "too slow")
        else:
            try:
                await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None
                seen.append(exc.reason.code)
        handled_send.send_nowait(None)

    async with trio.open_nursery() as nursery:
        server_ = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server_.port}/v1/ws"
        with trio.fail_after(10):
            ws = await ws_frames.connect(url, headers=[("Origin", "http://example.com")])
            assert await ws.message() == (OP_TEXT, b'{"type":"welcome"}')
            # The ping comes first; message() answers it on the way.
            assert await ws.message() == (OP_TEXT, text_of(70000).encode())
            await ws.send(ws_frames.text_frame("close me"))
            with pytest.raises(ws_frames.ConnectionClosed) as closed:
                await ws.message()
            assert closed.value.code == 4508 and ws.closed and ws.close_sent
            await handled.receive()
            assert seen == [b"http://example.com", "pong", "close me"]

            seen.clear()
            ws = await ws_frames.connect(url)
            await ws.message()
            await ws.message()
            await ws.send(ws_frames.text_frame("stay"))
            await ws.aclose()
            assert ws.closed
            await handled.receive()
            assert seen == [None, "pong", "stay", 1000]
        nursery.cancel_scope.cancel()


async def test_refused_and_unreachable() -> None:
    async def refuse(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(503, body=b'{"error":{"code":"unavailable","message":"draining"}}')

    async with trio.open_nursery() as nursery:
        server_ = await nursery.start(trio_websocket.serve_websocket, refuse, "127.0.0.1", 0, None)
        with trio.fail_after(10), pytest.raises(HandshakeError, match="HTTP 503") as refused:
            await ws_frames.connect(f"ws://127.0.0.1:{server_.port}/v1/ws")
        assert refused.value.status == 503
        nursery.cancel_scope.cancel()
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(10), pytest.raises(OSError):
        await ws_frames.connect(f"ws://127.0.0.1:{port}/v1/ws")
    with pytest.raises(ValueError, match="ws://"):
        await ws_frames.connect("wss://127.0.0.1/v1/ws")
