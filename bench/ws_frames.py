"""A minimal client side of RFC 6455 for the benchmarks' load: handshake and frames.

``scripts/bench fanout`` runs a thousand WebSocket clients in two processes
on the machine that also runs the node, so every CPU-microsecond a client
spends per frame is taken from the node and shows up in the latencies it
measures. A general library (trio-websocket over wsproto) spends about
110 µs per received frame: a reader task, an event object per frame, a
memory-channel hand-off to the task that asked for the message; the
benchmark's watch clients on this module spend about 11 µs. The node's
frames are simple — unmasked, unfragmented text frames with no extension
negotiated — so this module does only what such a client needs:

* :func:`upgrade_request` and :func:`check_upgrade_response`: the HTTP/1.1
  upgrade (RFC 6455 §4.1), with a random ``Sec-WebSocket-Key`` whose
  ``Sec-WebSocket-Accept`` the response must carry; the bytes after the
  response's head are already frames.
* :func:`client_frame`: one frame to the server, masked with a random key
  (a client MUST mask, §5.3).
* :class:`FrameReader`: bytes in, complete messages out — text and binary
  (continuation fragments reassembled), and ping, pong and close as they come
  (also between fragments). The common case, one whole small text frame per
  read, takes a few comparisons and one slice. Everything a client must not
  accept from a server raises :exc:`FrameError`.
* :func:`connect` and :class:`ClientSocket`: the above over a
  :class:`trio.SocketStream`, for setting a connection up and closing it.
  Callers that count microseconds read the plain socket underneath
  (``ClientSocket.raw``) when it is readable and feed ``ClientSocket.reader``
  themselves (see ``WatchLoad`` in :mod:`bench.ws_bench`).

Text payloads are returned as the raw UTF-8 bytes, undecoded and unchecked:
the benchmark stores identical frames once and decodes each distinct one at
the end. There is no TLS, no extension and no proxy support.

*Resource handling*: a message (all its fragments) is capped at
``max_message_bytes``, checked from the frame header before the payload is
buffered; a handshake response head at :data:`MAX_HANDSHAKE_BYTES`.

*Error handling*: :exc:`FrameError` (a :exc:`ValueError`) for a frame the
server must not send; :exc:`HandshakeError` (also a :exc:`ValueError`) for a
refused or malformed upgrade; :exc:`ConnectionClosed` when the connection
ends while :meth:`ClientSocket.message` waits. Nothing here has a timeout:
callers bound every wait.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from collections import deque
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import trio

from protocol.frames import mask

#: RFC 6455 §1.3: appended to the key before hashing it into the accept value.
GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_DATA_OPCODES: Final = frozenset({OP_TEXT, OP_BINARY})
_CONTROL_OPCODES: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})

#: A close frame without a code reports this (RFC 6455 §7.1.5); 1006 is "no close frame".
NO_STATUS: Final = 1005
ABNORMAL: Final = 1006
MAX_CONTROL_PAYLOAD: Final = 125
MAX_HANDSHAKE_BYTES: Final = 16 * 1024
DEFAULT_MAX_MESSAGE_BYTES: Final = 1 << 20
#: Bytes asked of the socket per read (trio's own default).
RECV_BYTES: Final = 65536

_HEAD_END: Final = b"\r\n\r\n"
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")
_CLOSE_CODE: Final = struct.Struct("!H")

Message = tuple[int, bytes]


class FrameError(ValueError):
    """The server sent a frame a client must not accept (or a message over the cap)."""


class HandshakeError(ValueError):
    """The upgrade was refused (``status`` is its HTTP status) or its response is not valid."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionClosed(Exception):
    """The connection ended: ``code`` from the server's close frame, or 1006 without one."""

    def __init__(self, code: int) -> None:
        super().__init__(f"connection closed with {code}")
        self.code = code


# ---------------------------------------------------------------- the handshake


def new_key() -> str:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64 (§4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_value(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer ``key`` with: base64(sha1(key + GUID))."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def upgrade_request(
    host: str, path: str, key: str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """The bytes of the HTTP/1.1 upgrade request; ``headers`` are extra (name, value) pairs."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def split_response(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(the response head without its blank line, the bytes after it), or None if incomplete."""
    head, sep, rest = buffer.partition(_HEAD_END)
    return (head, rest) if sep else None


def check_upgrade_response(head: bytes, key: str, rest: bytes = b"") -> None:
    """Raise :exc:`HandshakeError` unless ``head`` accepts the upgrade asked with ``key``.

    It must have status 101 and ``Sec-WebSocket-Accept`` equal to
    :func:`accept_value` of the key; and since this client offers no
    extension, it must not name one. ``rest`` (what followed the head) only
    goes into the message of a refusal, where it is the start of the body.
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HandshakeError(f"not an HTTP response: {lines[0][:100]!r}")
    status = int(parts[1])
    if status != 101:
        body = rest[:200].decode("utf-8", "replace")
        raise HandshakeError(f"upgrade refused with HTTP {status}: {body}", status)
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    if fields.get("sec-websocket-accept") != accept_value(key):
        raise HandshakeError(
            f"Sec-WebSocket-Accept is {fields.get('sec-websocket-accept')!r}, "
            f"expected {accept_value(key)!r}",
            status,
        )
    if fields.get("sec-websocket-extensions"):
        raise HandshakeError("the server named an extension this client did not offer", status)


# ---------------------------------------------------------------- frames out


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final (unfragmented) frame from a client: masked with a random key (§5.3)."""
    if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
        raise ValueError(f"opcode {opcode:#x} is not one a client sends")
    length = len(payload)
    if opcode in _CONTROL_OPCODES and length > MAX_CONTROL_PAYLOAD:
        raise ValueError(f"a control frame carries at most {MAX_CONTROL_PAYLOAD} bytes")
    first = 0x80 | opcode
    if length < 126:
        head = bytes((first, 0x80 | length))
    elif length < 1 << 16:
        head = _HEADER_16.pack(first, 0x80 | 126, length)
    else:
        head = _HEADER_64.pack(first, 0x80 | 127, length)
    key = os.urandom(4)
    return head + key + mask(payload, key)


def text_frame(text: str | bytes) -> bytes:
    """A masked text frame carrying ``text`` (bytes are taken as UTF-8 already)."""
    return client_frame(OP_TEXT, text.encode("utf-8") if isinstance(text, str) else text)


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame: the code, then the reason in UTF-8."""
    return _CLOSE_CODE.pack(code) + reason.encode("utf-8")


def reply_code(code: int) -> int:
    """The code to answer a server's close frame with: its own (§5.5.1), unless it is one
    that must not be sent (1005, 1006, 1015, or outside 1000-4999); then 1000."""
    return code if 1000 <= code <= 4999 and code not in (NO_STATUS, ABNORMAL, 1015) else 1000


def close_code(payload: bytes) -> int:
    """The code in a close frame's payload; 1005 when it has none."""
    if not payload:
        return NO_STATUS
    if len(payload) == 1:
        raise FrameError("a close frame's payload of 1 byte (a code takes 2)")
    code: int = _CLOSE_CODE.unpack_from(payload)[0]
    return code


# ---------------------------------------------------------------- frames in


class FrameReader:
    """Incremental parser of the frames a server sends: :meth:`feed` bytes, get messages.

    Each message is ``(opcode, payload)``: :data:`OP_TEXT` or
    :data:`OP_BINARY` with the whole (reassembled) payload, or a control
    frame — :data:`OP_PING`, :data:`OP_PONG`, :data:`OP_CLOSE` — as it
    comes, possibly between a message's fragments. Bytes that end mid-frame
    are kept for the next :meth:`feed`, joined only once enough have arrived
    for the next step, so a large frame read in many pieces is copied once.
    """

    __slots__ = (
        "_fragment_bytes",
        "_fragment_opcode",
        "_fragments",
        "_have",
        "_need",
        "_pending",
        "max_message_bytes",
    )

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._pending: list[bytes] = []  # bytes of an incomplete frame
        self._have = 0  # their total length
        self._need = 0  # bytes needed before parsing can make progress
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0  # the opcode of the message being reassembled; 0: none
        self._fragment_bytes = 0

    def feed(self, data: bytes) -> list[Message]:
        """The messages that ``data`` completes, in order; raises :exc:`FrameError`."""
        if self._pending:
            self._pending.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._pending)
            self._pending = []
        elif not self._fragment_opcode:
            # The common case: one whole unfragmented text frame, nothing pending.
            n = len(data)
            if n > 3 and data[0] == 0x81:
                length = data[1]
                if length < 126:
                    if n == length + 2 and length <= self.max_message_bytes:
                        return [(OP_TEXT, data[2:])]
                elif length == 126:
                    length = (data[2] << 8) | data[3]
                    if n == length + 4 and length <= self.max_message_bytes:
                        return [(OP_TEXT, data[4:])]
        return self._parse(data)

    def _parse(self, data: bytes) -> list[Message]:
        messages: list[Message] = []
        pos, end = 0, len(data)
        while pos < end:
            if end - pos < 2:
                self._keep(data[pos:], 2)
                break
            first, second = data[pos], data[pos + 1]
            if second & 0x80:
                raise FrameError("a server frame is masked")
            if first & 0x70:
                raise FrameError("reserved bits set, but no extension was negotiated")
            opcode, fin = first & 0x0F, first & 0x80
            length, head = second, 2
            if length == 126:
                if end - pos < 4:
                    self._keep(data[pos:], 4)
                    break
                length, head = (data[pos + 2] << 8) | data[pos + 3], 4
            elif length == 127:
                if end - pos < 10:
                    self._keep(data[pos:], 10)
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
                if length >> 63:
                    raise FrameError("a 64-bit frame length with its most significant bit set")
            if opcode >= 8:
                if opcode not in _CONTROL_OPCODES:
                    raise FrameError(f"unknown control opcode {opcode:#x}")
                if not fin:
                    raise FrameError("a fragmented control frame")
                if length > MAX_CONTROL_PAYLOAD:
                    raise FrameError(f"a control frame of {length} bytes (at most 125)")
            elif opcode == OP_CONTINUATION:
                if not self._fragment_opcode:
                    raise FrameError("a continuation frame with no message to continue")
                if self._fragment_bytes + length > self.max_message_bytes:
                    raise FrameError(f"a message over {self.max_message_bytes} bytes")
            elif opcode in _DATA_OPCODES:
                if self._fragment_opcode:
                    raise FrameError("a new message before the fragmented one ended")
                if length > self.max_message_bytes:
                    raise FrameError(f"a message over {self.max_message_bytes} bytes")
            else:
                raise FrameError(f"unknown data opcode {opcode:#x}")
            if end - pos - head < length:
                self._keep(data[pos:], head + length)
                break
            start = pos + head
            pos = start + length
            payload = data[start:pos]
            if opcode >= 8 or (fin and opcode != OP_CONTINUATION):
                messages.append((opcode, payload))  # a control frame, or a whole message
            else:
                if opcode != OP_CONTINUATION:
                    self._fragment_opcode = opcode
                self._fragments.append(payload)
                self._fragment_bytes += length
                if fin:
                    messages.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments = []
                    self._fragment_opcode = self._fragment_bytes = 0
        return messages

    def _keep(self, rest: bytes, need: int) -> None:
        """Hold the start of a frame until ``need`` bytes of it have arrived."""
        self._pending = [rest]
        self._have = len(rest)
        self._need = need


# ---------------------------------------------------------------- over trio


class ClientSocket:
    """One client WebSocket over a :class:`trio.SocketStream`; made by :func:`connect`.

    :meth:`message` reads the next data message for setting a session up
    (answering pings on the way). A hot loop reads ``stream`` — or ``raw``,
    the non-blocking stdlib socket under it, when it polls many sockets
    itself — and feeds ``reader``, after taking what :meth:`message` left in
    ``backlog``. Sends take a lock, so several tasks may send at once;
    :meth:`send_nowait` is for a single reader that sends nothing else.
    """

    def __init__(
        self, stream: trio.SocketStream, raw: socket.socket, reader: FrameReader, first: bytes
    ) -> None:
        self.stream = stream
        self.raw = raw
        self.reader = reader
        #: Messages read but not yet returned (a read can complete several).
        self.backlog: deque[Message] = deque(reader.feed(first) if first else ())
        self.close_sent = False
        self.closed = False
        self._send_lock = trio.Lock()

    async def send(self, frame: bytes) -> None:
        """Send the bytes of one whole frame (see :func:`client_frame`)."""
        async with self._send_lock:
            await self.stream.send_all(frame)

    def send_nowait(self, frame: bytes) -> bool:
        """Write a whole (small) frame without waiting; False if the socket did not take all
        of it, or is broken — the connection is then unusable: close it."""
        if self._send_lock.locked():
            return False
        try:
            return self.raw.send(frame) == len(frame)
        except OSError:
            return False

    async def send_close(self, code: int = 1000) -> None:
        """Send a close frame with ``code``, once; nothing is sent after it."""
        if not self.close_sent:
            self.close_sent = True
            await self.send(client_frame(OP_CLOSE, close_payload(code)))

    async def message(self) -> Message:
        """The next text or binary message; pings are answered, pongs skipped.

        Raises :exc:`ConnectionClosed` on a close frame (answered), EOF or a reset.
        """
        while True:
            while self.backlog:
                opcode, payload = self.backlog.popleft()
                if opcode in _DATA_OPCODES:
                    return opcode, payload
                if opcode == OP_PING:
                    await self.send(client_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    code = close_code(payload)
                    await self.answer_close(code)
                    raise ConnectionClosed(code)
            try:
                data = await self.stream.receive_some(RECV_BYTES)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.abort()
                raise ConnectionClosed(ABNORMAL)
            self.backlog.extend(self.reader.feed(data))

    async def answer_close(self, code: int) -> None:
        """The server sent a close frame with ``code``: echo it (§5.5.1) and close the stream."""
        try:
            await self.send_close(reply_code(code))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket at once, without a close frame (what SocketStream.aclose does
        before its checkpoint)."""
        self.closed = True
        self.stream.socket.close()

    async def aclose(self, code: int = 1000) -> None:
        """The closing handshake from this side: send a close frame, read until the server's
        close frame or EOF, close the stream. Never raises for a broken connection; the
        stream is closed even if this is cancelled (bound it with :func:`trio.move_on_after`)."""
        if self.closed:
            return
        try:
            await self.send_close(code)
            while not any(opcode == OP_CLOSE for opcode, _ in self.backlog):
                self.backlog.clear()
                data = await self.stream.receive_some(RECV_BYTES)
                if not data:
                    break
                self.backlog.extend(self.reader.feed(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameError):
            pass
        finally:
            self.abort()


async def connect(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> ClientSocket:
    """Open a TCP connection to ``ws://host:port/path`` and upgrade it.

    Raises :exc:`OSError` if the connection cannot be made,
    :exc:`HandshakeError` if the upgrade is refused or its response is
    invalid (the stream is closed then).
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"expected a ws://host:port/path URL, got {url!r}")
    port = parts.port or 80
    host = parts.netloc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    # As trio.open_tcp_stream, minus happy eyeballs, keeping the stdlib socket for ``raw``.
    family, kind, proto, _, address = (
        await trio.socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    )[0]
    raw = socket.socket(family, kind, proto)
    tsock = trio.socket.from_stdlib_socket(raw)  # non-blocking from now on
    try:
        await tsock.connect(address)
    except BaseException:
        tsock.close()
        raise
    stream = trio.SocketStream(tsock)
    try:
        key = new_key()
        await stream.send_all(upgrade_request(host, path, key, headers))
        buffer = b""
        while (split := split_response(buffer)) is None:
            if len(buffer) > MAX_HANDSHAKE_BYTES:
                raise HandshakeError(f"no end of the response head in {len(buffer)} bytes")
            data = await stream.receive_some(RECV_BYTES)
            if not data:
                raise HandshakeError("the server closed the connection during the handshake")
            buffer += data
        head, rest = split
        check_upgrade_response(head, key, rest)
        return ClientSocket(stream, raw, FrameReader(max_message_bytes), rest)
    except BaseException:
        tsock.close()
        raise
