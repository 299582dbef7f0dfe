"""ClientFrameSplitter: whole data messages out, every other byte passed on, in order.

wsproto — what trio-websocket parses with — is the reference: whatever the
splitter passes on must mean to wsproto exactly what it would have meant in
the whole stream, and the messages split off must be the ones wsproto finds.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from protocol.frames import ClientFrameSplitter, mask

MAX_PAYLOAD = 1024


def frame(first: int, payload: bytes, *, masked: bool = True, key: bytes | None = None) -> bytes:
    """One frame from a client: ``first`` is FIN, RSV and the opcode."""
    length = len(payload)
    bit = 0x80 if masked else 0
    if length < 126:
        head = bytes((first, bit | length))
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, bit | 127, length)
    if not masked:
        return head + payload
    key = key if key is not None else os.urandom(4)
    return head + key + mask(payload, key)


def wsproto_view(data: bytes) -> list[tuple[Opcode, object]]:
    """What wsproto finds in ``data`` (a server's side): (opcode, payload) per frame."""
    parser = FrameProtocol(client=False, extensions=[])
    parser.receive_bytes(data)
    return [(f.opcode, f.payload) for f in parser.received_frames()]


def feed_in_pieces(
    splitter: ClientFrameSplitter, data: bytes, cuts: list[int]
) -> tuple[list[str | bytes], bytes]:
    messages: list[str | bytes] = []
    passed = b""
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        got, rest = splitter.feed(data[start:cut]) if cut > start else ([], b"")
        messages += got
        passed += rest
        start = max(start, cut)
    return messages, passed


def test_mask_is_its_own_inverse() -> None:
    key = b"\x01\x02\x03\x04"
    assert mask(b"", key) == b""
    assert mask(b"abcde", key) == bytes(b ^ key[i % 4] for i, b in enumerate(b"abcde"))
    assert mask(mask(b"hello, world", key), key) == b"hello, world"


# A client's ordinary traffic: text and binary messages, pings and pongs.
simple_frames = st.lists(
    st.one_of(
        st.tuples(st.just(0x81), st.text(max_size=300).map(lambda t: t.encode())),
        st.tuples(st.just(0x82), st.binary(max_size=300)),
        st.tuples(st.sampled_from([0x89, 0x8A]), st.binary(max_size=125)),
    ),
    max_size=12,
)


@given(simple_frames, st.lists(st.integers(min_value=0), max_size=8))
@settings(max_examples=300, deadline=None)
def test_ordinary_traffic_splits_alike_however_it_is_read(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    data = b"".join(frame(first, payload) for first, payload in frames)
    splitter = ClientFrameSplitter(max_payload=MAX_PAYLOAD)
    messages, passed = feed_in_pieces(splitter, data, cuts)
    assert not splitter.passthrough
    expected = [
        payload.decode() if first == 0x81 else payload
        for first, payload in frames
        if first in (0x81, 0x82)
    ]
    assert messages == expected
    # The pings and pongs go on whole and in order: wsproto sees just them.
    assert wsproto_view(passed) == [
        (Opcode(first & 0x0F), payload) for first, payload in frames if first in (0x89, 0x8A)
    ]


UNUSUAL = {
    "close": frame(0x88, struct.pack("!H", 1000)),
    "a fragment": frame(0x01, b"part one"),
    "a continuation": frame(0x80, b"the end"),
    "a reserved bit": frame(0xC1, b"deflated?"),
    "unmasked": frame(0x81, b"plain", masked=False),
    "not UTF-8": frame(0x81, b"\xff\xfe"),
    "over the limit": frame(0x81, b"x" * (MAX_PAYLOAD + 1)),
    "a 64-bit length": frame(0x82, b"y" * 70_000),
    "an unknown opcode": frame(0x83, b"?"),
    "a long ping": frame(0x89, b"p" * 126),
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_anything_unusual_is_passed_on_with_all_that_follows(name: str) -> None:
    before, after = frame(0x81, b"before"), frame(0x81, b"after")
    splitter = ClientFrameSplitter(max_payload=MAX_PAYLOAD)
    messages, passed = splitter.feed(before + UNUSUAL[name] + after)
    assert messages == ["before"]
    assert passed == UNUSUAL[name] + after
    assert splitter.passthrough
    # From now on every byte goes on as it came.
    assert splitter.feed(after) == ([], after)


def test_a_frame_held_across_reads_then_split_off() -> None:
    data = frame(0x81, ("é" * 200).encode())
    splitter = ClientFrameSplitter(max_payload=MAX_PAYLOAD)
    for i in range(len(data) - 1):
        assert splitter.feed(data[i : i + 1]) == ([], b"")
    assert splitter.feed(data[-1:]) == (["é" * 200], b"")


def test_a_splitter_made_passing_through_splits_nothing() -> None:
    data = frame(0x81, b"hi")
    assert ClientFrameSplitter(max_payload=MAX_PAYLOAD, passthrough=True).feed(data) == (
        [],
        data,
    )


@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=6))
@settings(max_examples=300, deadline=None)
def test_any_bytes_are_split_or_passed_on_and_nothing_raises(data: bytes, cuts: list[int]) -> None:
    splitter = ClientFrameSplitter(max_payload=MAX_PAYLOAD)
    messages, passed = feed_in_pieces(splitter, data, cuts)
    payloads = sum(len(m.encode() if isinstance(m, str) else m) for m in messages)
    # Each message cost at least its payload and a 6-byte head; what is left is held.
    assert len(passed) + payloads + 6 * len(messages) <= len(data)
    if splitter.passthrough:
        assert data.endswith(passed[-1:])
