"""The start of the Postgres wire protocol, without I/O: what a client sends first, and an ErrorResponse.

The activator relays bytes untouched when a wake succeeds. It parses only when it must answer by
itself (the wake failed or was refused): decline encryption requests, read the StartupMessage,
answer with an ErrorResponse carrying a SQLSTATE. `StartupParser.feed` takes whatever bytes
arrived and returns the messages they complete; an empty list means "need more data".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
MAX_STARTUP_LENGTH = 10_000
"""Postgres's own bound on a startup packet (MAX_STARTUP_PACKET_LENGTH)."""

DECLINE_ENCRYPTION = b"N"
"""The one-byte answer to SSLRequest or GSSENCRequest: not here; the client goes on in plain text."""

CANNOT_CONNECT_NOW = "57P03"
PROTOCOL_VIOLATION = "08P01"


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclass(frozen=True)
class StartupMessage:
    protocol: int
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProtocolViolation:
    message: str


Message = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage | ProtocolViolation


class StartupParser:
    """Parses the untyped packets a client sends before the StartupMessage, and that message itself."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.done = False
        """True after a StartupMessage, CancelRequest or violation: nothing more is parsed."""

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while not self.done and len(self._buffer) >= 8:
            length, code = struct.unpack("!ii", self._buffer[:8])
            if length < 8 or length > MAX_STARTUP_LENGTH:
                messages.append(self._violation(f"invalid length of startup packet ({length})"))
                break
            if len(self._buffer) < length:
                break
            body = bytes(self._buffer[8:length])
            del self._buffer[:length]
            messages.append(self._message(code, body))
        return messages

    def _message(self, code: int, body: bytes) -> Message:
        if code == SSL_REQUEST_CODE:
            return SSLRequest()
        if code == GSSENC_REQUEST_CODE:
            return GSSENCRequest()
        self.done = True
        if code == CANCEL_REQUEST_CODE and len(body) == 8:
            process_id, secret = struct.unpack("!ii", body)
            return CancelRequest(process_id, secret)
        if code >> 16 != 3:
            return ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
        fields = body.split(b"\0")
        if len(fields) < 2 or fields[-1] != b"" or len(fields) % 2 != 0:
            return ProtocolViolation("malformed startup packet")
        pairs = fields[:-2] if fields[-2] == b"" else fields[:-1]
        names, values = pairs[0::2], pairs[1::2]
        return StartupMessage(
            code,
            {
                n.decode(errors="replace"): v.decode(errors="replace")
                for n, v in zip(names, values, strict=True)
            },
        )

    def _violation(self, message: str) -> ProtocolViolation:
        self.done = True
        return ProtocolViolation(message)


def error_response(code: str, message: str, *, severity: str = "FATAL", detail: str = "") -> bytes:
    """An ErrorResponse ('E') message, as Postgres sends it before closing a connection it refuses."""
    fields = [(b"S", severity), (b"V", severity), (b"C", code), (b"M", message)]
    if detail:
        fields.append((b"D", detail))
    payload = b"".join(kind + text.encode() + b"\0" for kind, text in fields) + b"\0"
    return b"E" + struct.pack("!i", len(payload) + 4) + payload


def startup_message(parameters: dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    """A StartupMessage as a client sends it (for tests and health checks)."""
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items()) + b"\0"
    return struct.pack("!ii", len(body) + 8, protocol) + body


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)
