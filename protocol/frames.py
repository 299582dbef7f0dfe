"""A client's WebSocket frames, split into whole messages and everything else (sans-IO).

trio-websocket reads a socket in a task of its own and parses every frame
with wsproto (about 12 µs for a 300-byte frame here), then hands each message
through a memory channel to the task that asked for it: two more scheduler
passes. A game client's messages are nearly all alike — one small masked
text frame, unfragmented, with no extension negotiated — and a node takes
thousands a second, so the server's transport (:mod:`server.ws_transport`)
splits those off itself with :class:`ClientFrameSplitter` (about 2 µs) and
hands them to the connection actor at once, in the reader task, with no
hand-over. Everything else goes on, as the same bytes, to trio-websocket:

* **ping and pong** frames (whole, at most 125 bytes): passed on, and the
  splitting goes on after them. trio-websocket answers a ping; a pong only
  tells the node the peer is alive, and the order in which it is seen
  beside data messages means nothing.
* **anything else** — a close frame, a fragmented message, reserved bits,
  an unmasked frame, an unknown opcode, text that is not UTF-8, a frame over
  ``max_payload`` — is passed on together with every byte after it, for
  good: the splitter stops (:attr:`ClientFrameSplitter.passthrough`) and
  trio-websocket does what RFC 6455 says (close with 1002, 1007, 1009 …).
  A message split off before it was delivered before it, so the order of
  messages is the order of the stream.

A frame that has not fully arrived is held until it has (at most the
header, the mask and ``max_payload`` bytes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
#: RFC 6455 §5.5: a control frame carries at most this many bytes.
MAX_CONTROL_PAYLOAD: Final = 125

# The first byte of a whole (FIN) frame with no reserved bit set, by opcode.
_FIN: Final = 0x80
_WHOLE_TEXT: Final = _FIN | OP_TEXT
_WHOLE_BINARY: Final = _FIN | OP_BINARY
_WHOLE_CONTROL: Final = frozenset((_FIN | OP_PING, _FIN | OP_PONG))
_MASKED: Final = 0x80

#: Takes one whole message split off the stream (text as str, binary as bytes).
MessageSink = Callable[[str | bytes], Awaitable[None]]


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``key`` repeated (RFC 6455 §5.3), as one big-integer
    operation; the same call masks and unmasks."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


class ClientFrameSplitter:
    """Feed the bytes a client sent; get its whole data messages and the bytes to pass on.

    Text messages come out as :class:`str`, binary ones as :class:`bytes`.
    See the module docstring for what is passed on and when splitting stops.
    """

    __slots__ = ("_held", "max_payload", "passthrough")

    def __init__(self, *, max_payload: int, passthrough: bool = False) -> None:
        self.max_payload = max_payload
        #: True once splitting has stopped: every byte is passed on from then on.
        self.passthrough = passthrough
        self._held = b""  # the start of a frame that has not fully arrived

    def feed(self, data: bytes) -> tuple[list[str | bytes], bytes]:
        """(the messages ``data`` completes, the bytes to pass on), both in stream order."""
        if self.passthrough:
            return [], data
        if self._held:
            data, self._held = self._held + data, b""
        messages: list[str | bytes] = []
        passed: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if end - pos < 2:
                self._held = data[pos:]
                break
            first, second = data[pos], data[pos + 1]
            length, head = second & 0x7F, pos + 2
            if length == 127 or not second & _MASKED:
                # Unmasked, or 64 KiB or more (beyond any payload we split off): not ours.
                return self._stop(messages, passed, data[pos:])
            if length == 126:
                if end - pos < 4:
                    self._held = data[pos:]
                    break
                length, head = (data[pos + 2] << 8) | data[pos + 3], pos + 4
            data_frame = first in (_WHOLE_TEXT, _WHOLE_BINARY)
            if not (
                (data_frame and length <= self.max_payload)
                or (first in _WHOLE_CONTROL and length <= MAX_CONTROL_PAYLOAD)
            ):
                return self._stop(messages, passed, data[pos:])
            start = head + 4  # after the masking key
            stop = start + length
            if stop > end:
                self._held = data[pos:]
                break
            if not data_frame:
                passed.append(data[pos:stop])
            else:
                payload = mask(data[start:stop], data[head:start])
                if first == _WHOLE_TEXT:
                    try:
                        messages.append(payload.decode("utf-8"))
                    except UnicodeDecodeError:  # trio-websocket closes with 1007
                        return self._stop(messages, passed, data[pos:])
                else:
                    messages.append(payload)
            pos = stop
        return messages, b"".join(passed)

    def _stop(
        self, messages: list[str | bytes], passed: list[bytes], rest: bytes
    ) -> tuple[list[str | bytes], bytes]:
        self.passthrough = True
        passed.append(rest)
        return messages, b"".join(passed)
