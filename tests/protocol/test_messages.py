"""The WebSocket codec, sans-IO: synchronous tests, no event loop."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.frame_protocol import FrameProtocol, Opcode

from protocol.messages import (
    Auth,
    CloseCode,
    Error,
    Ping,
    Pong,
    ProtocolError,
    Submit,
    Subscribe,
    Unsubscribe,
    Welcome,
    decode_client,
    encode,
    frame_text,
)

LIMIT = 1024


def test_welcome_has_the_contract_fields() -> None:
    frame = json.loads(encode(Welcome(node_id="n1", heartbeat_s=15.0)))
    assert frame == {"type": "welcome", "protocol": 1, "node_id": "n1", "heartbeat_s": 15.0}


@pytest.mark.parametrize("msg_id", ["c1", 7, None])
def test_ping_round_trips_its_id(msg_id: str | int | None) -> None:
    frame = json.dumps({"type": "ping", "id": msg_id})
    assert decode_client(frame, max_bytes=LIMIT) == Ping(id=msg_id)
    assert json.loads(encode(Pong(id=msg_id))) == {"type": "pong", "id": msg_id}


def test_error_carries_its_request_id_only_when_given() -> None:
    assert json.loads(encode(Error(code="x", message="m"))) == {
        "type": "error",
        "code": "x",
        "message": "m",
    }
    assert json.loads(encode(Error(code="x", message="m", id="c1")))["id"] == "c1"


@pytest.mark.parametrize(
    ("frame", "code", "close"),
    [
        ("{not json", "malformed_json", None),
        ("[1, 2]", "bad_message", None),
        ('{"id": 1}', "bad_message", None),
        ('{"type": 5}', "bad_message", None),
        ('{"type": "teleport"}', "unknown_type", None),
        ('{"type": "ping", "id": true}', "bad_message", None),
        ('{"type": "ping", "id": {"a": 1}}', "bad_message", None),
        ('{"type": "ping", "id": "' + "x" * 65 + '"}', "bad_message", None),
        (b'{"type": "ping"}', "binary_not_supported", None),
        ('{"type": "ping", "pad": "' + "x" * LIMIT + '"}', "message_too_large", CloseCode.POLICY),
        ("[" * 100_000, "message_too_large", CloseCode.POLICY),
    ],
)
def test_bad_frames_get_their_documented_error(
    frame: str | bytes, code: str, close: CloseCode | None
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame, max_bytes=LIMIT)
    assert caught.value.code == code
    assert caught.value.close == close
    assert caught.value.message


def test_deep_nesting_within_the_limit_is_a_protocol_error_not_a_crash() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client("[" * 100_000, max_bytes=1_000_000)
    assert caught.value.code == "malformed_json"


def test_multibyte_text_is_measured_in_bytes() -> None:
    frame = '{"type": "ping", "id": "' + "é" * 40 + '"}'  # 40 chars, 80 bytes
    assert len(frame) < 100 < len(frame.encode())
    with pytest.raises(ProtocolError, match="larger than 100 bytes"):
        decode_client(frame, max_bytes=100)


def test_close_codes_say_whether_to_reconnect() -> None:
    assert CloseCode.DRAINING.should_reconnect
    assert CloseCode.TOO_SLOW.should_reconnect
    assert not CloseCode.UNAUTHORIZED.should_reconnect
    assert not CloseCode.POLICY.should_reconnect


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.one_of(st.text(max_size=2000), st.binary(max_size=2000)))
def test_any_frame_decodes_or_raises_protocol_error(frame: str | bytes) -> None:
    try:
        message = decode_client(frame, max_bytes=LIMIT)
    except ProtocolError as exc:
        assert exc.code and exc.message
    else:
        assert isinstance(message, Auth | Subscribe | Unsubscribe | Submit | Ping)


@given(st.dictionaries(st.sampled_from(["type", "id", "x"]), json_values, max_size=3))
def test_any_json_object_decodes_or_raises_protocol_error(data: dict[str, object]) -> None:
    try:
        decode_client(json.dumps(data), max_bytes=LIMIT)
    except ProtocolError as exc:
        assert exc.code and exc.message


# ---------------------------------------------------------------- framing

FRAME_LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def _accepted_server() -> WSConnection:
    """A wsproto server connection past its handshake, with no extension negotiated."""
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    assert isinstance(next(server.events()), Request)
    server.send(AcceptConnection())
    return server


@pytest.mark.parametrize("length", FRAME_LENGTHS)
def test_a_text_frame_is_what_wsproto_would_send(length: int) -> None:
    text = "x" * length
    assert frame_text(text) == bytes(FrameProtocol(client=False, extensions=[]).send_data(text))
    assert frame_text(text) == _accepted_server().send(TextMessage(data=text))


@pytest.mark.parametrize("length", FRAME_LENGTHS)
def test_the_length_counts_utf8_bytes(length: int) -> None:
    text = "é" * (length // 2) + "x" * (length % 2)  # `length` bytes, fewer characters
    frame = frame_text(text)
    header = 2 if length < 126 else 4 if length < 65536 else 10
    assert len(frame) == header + length
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(frame)
    [received] = client.received_frames()
    assert (received.opcode, received.payload, received.message_finished) == (
        Opcode.TEXT,
        text,
        True,
    )


@given(st.text(max_size=300))
def test_any_text_frames_like_wsproto(text: str) -> None:
    try:
        expected = bytes(FrameProtocol(client=False, extensions=[]).send_data(text))
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            frame_text(text)
    else:
        assert frame_text(text) == expected
