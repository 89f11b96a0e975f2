"""A raw WebSocket client over a plain socket, for tests that must misbehave.

Library clients cannot send a text frame of invalid UTF-8, vanish without a close frame, or
close in the middle of a burst with a TCP reset; this one can. Pure stdlib, blocking, with
timeouts everywhere (a test never hangs on it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import time
from typing import Any

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.head = head
        self.body = body


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One client frame (masked, as RFC 6455 requires of clients)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


class RawWebSocket:
    """`RawWebSocket(port, "/spectate/ws?room=x")` connects and completes the upgrade."""

    def __init__(
        self,
        port: int,
        path: str,
        *,
        host: str = "127.0.0.1",
        timeout: float = 10.0,
        receive_buffer: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Before connecting, so the window the server may fill stays this small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self._buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode("latin-1"))
        head = self._read_until(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            body = self._buffer
            with contextlib.suppress(OSError):
                self.sock.settimeout(1.0)
                while chunk := self.sock.recv(65536):
                    body += chunk
            self.sock.close()
            raise HandshakeRefused(status, head, body)

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    # --- sending -------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, fin=fin))

    def send_text(self, text: str | bytes) -> None:
        """A text frame; bytes are sent as they are (invalid UTF-8 included)."""
        self.send_frame(TEXT, text.encode() if isinstance(text, str) else text)

    def send_binary(self, data: bytes) -> None:
        self.send_frame(BINARY, data)

    def send_close(self, code: int | None = 1000, reason: bytes = b"") -> None:
        self.send_frame(CLOSE, close_payload(code, reason))

    # --- receiving -----------------------------------------------------------------------

    def recv_frame(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next whole message (fragments joined) as (opcode, payload); pings answered."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        opcode_first = None
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read_exact(2)
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read_exact(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read_exact(8))
            if b1 & 0x80:
                key = self._read_exact(4)
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(self._read_exact(length)))
            else:
                payload = self._read_exact(length)
            if opcode == PING:
                with contextlib.suppress(OSError):
                    self.send_frame(PONG, payload)
                continue
            if opcode == PONG:
                continue
            if opcode >= CLOSE:
                return opcode, payload
            if opcode_first is None:
                opcode_first = opcode
            parts.append(payload)
            if b0 & 0x80:
                return opcode_first, b"".join(parts)

    def recv_json(self, timeout: float | None = None) -> dict[str, Any]:
        opcode, payload = self.recv_frame(timeout)
        if opcode == CLOSE:
            raise ConnectionError(f"closed: {close_code(payload)}")
        return json.loads(payload)

    def until_close(self, timeout: float = 10.0) -> tuple[list[tuple[int, bytes]], int | None]:
        """Read until a close frame (or EOF): the messages before it, and the close code
        (None if the connection ended without one)."""
        deadline = time.monotonic() + timeout
        seen: list[tuple[int, bytes]] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no close within {timeout} s; got {seen[-3:]!r}")
            try:
                opcode, payload = self.recv_frame(remaining)
            except ConnectionError:
                return seen, None
            if opcode == CLOSE:
                return seen, close_code(payload)
            seen.append((opcode, payload))

    # --- leaving ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Vanish with a TCP reset (SO_LINGER 0): no close frame, no FIN."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload (1005, "no status", when it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
