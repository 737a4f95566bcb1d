"""The start of the Postgres wire protocol, without I/O or state: the packets a client sends first,
what makes a StartupMessage valid, and the ErrorResponse that refuses one.

Codes, limits, messages and SQLSTATEs are Postgres's own (`ProcessStartupPacket` in the postmaster),
so a client reads the same answer from a resting database as from a running one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

LENGTH_SIZE = 4
"""The length word that starts every startup packet; it counts itself."""
HEADER_SIZE = 8
"""The length word and the request code or protocol version."""
MAX_STARTUP_PACKET_LENGTH = 10_000
"""Postgres's bound on a startup packet, not counting its length word (MAX_STARTUP_PACKET_LENGTH)."""
MAX_PACKET_SIZE = LENGTH_SIZE + MAX_STARTUP_PACKET_LENGTH
CANCEL_REQUEST_SIZE = 16

DECLINE_ENCRYPTION = b"N"
"""The one-byte answer to SSLRequest or GSSENCRequest: not here; the client goes on in plain text."""
ACCEPT_TLS = b"S"
"""The answer to SSLRequest that starts TLS: the client's next bytes are its ClientHello."""

TLS_HELLO_PREFIX = 9
"""A TLS record header (type, version, length: 5 bytes) and the handshake header in it (type and a
3-byte length): enough to tell a ClientHello from anything else, without reading the hello itself."""
_TLS_HANDSHAKE_RECORD = 22
_TLS_CLIENT_HELLO = 1
_TLS_MAX_RECORD = 2**14
_TLS_ALERT_RECORD = 21
_TLS_FATAL = 2
TLS_INTERNAL_ERROR = 80
TLS_ACCESS_DENIED = 49

# SQLSTATEs, as Postgres names them in errcodes.txt.
CANNOT_CONNECT_NOW = "57P03"
TOO_MANY_CONNECTIONS = "53300"
PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_AUTHORIZATION_SPECIFICATION = "28000"
CHARACTER_NOT_IN_REPERTOIRE = "22021"


@dataclass(frozen=True)
class StartupMessage:
    protocol: int
    parameters: dict[str, str] = field(default_factory=dict)
    """Name to value; a name given twice keeps its last value, as Postgres does."""


@dataclass(frozen=True)
class Invalid:
    """Why a StartupMessage is refused: the SQLSTATE and message Postgres would send."""

    code: str
    message: str


def valid_length(length: int) -> bool:
    """Whether a startup packet's length word is one Postgres reads on (else it closes silently)."""
    return HEADER_SIZE <= length <= MAX_PACKET_SIZE


def parse_startup(version: int, body: bytes) -> StartupMessage | Invalid:
    """The StartupMessage of protocol `version` whose parameters are `body`, or why Postgres refuses it.

    Postgres 3.x takes any minor version and answers a newer one with NegotiateProtocolVersion, so
    only the major version is checked here; the relay leaves that negotiation to Postgres.
    """
    major, minor = version >> 16, version & 0xFFFF
    if major != 3:
        return Invalid(
            FEATURE_NOT_SUPPORTED,
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
        )
    # name\0value\0 ... \0: an empty name ends the list, and must be the packet's last byte.
    fields = body.split(b"\0")
    if len(fields) < 2 or fields[-2:] != [b"", b""] or len(fields) % 2 != 0 or b"" in fields[:-2:2]:
        return Invalid(PROTOCOL_VIOLATION, "invalid startup packet layout: expected terminator as last byte")
    try:
        texts = [each.decode() for each in fields[:-2]]
    except UnicodeDecodeError as error:
        bad = " ".join(f"0x{byte:02x}" for byte in error.object[error.start : error.end])
        return Invalid(CHARACTER_NOT_IN_REPERTOIRE, f'invalid byte sequence for encoding "UTF8": {bad}')
    parameters = dict(zip(texts[0::2], texts[1::2], strict=True))
    if not parameters.get("user"):
        return Invalid(
            INVALID_AUTHORIZATION_SPECIFICATION, "no PostgreSQL user name specified in startup packet"
        )
    return StartupMessage(version, parameters)


def is_client_hello(prefix: bytes) -> bool:
    """Whether the first TLS_HELLO_PREFIX bytes after 'S' start a ClientHello (RFC 8446, 5.1 and 4)."""
    if len(prefix) < TLS_HELLO_PREFIX:
        return False
    kind, major, minor, length = struct.unpack_from("!BBBH", prefix)
    return (
        kind == _TLS_HANDSHAKE_RECORD
        and major == 3
        and minor <= 4
        and 4 <= length <= _TLS_MAX_RECORD
        and prefix[5] == _TLS_CLIENT_HELLO
    )


def tls_alert(description: int) -> bytes:
    """A fatal TLS alert record in the clear: the only answer a client mid-handshake can read."""
    return struct.pack("!BBBHBB", _TLS_ALERT_RECORD, 3, 3, 2, _TLS_FATAL, description)


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
    return struct.pack("!ii", len(body) + HEADER_SIZE, protocol) + body


def ssl_request() -> bytes:
    """The 8 bytes that ask a server for TLS (the relay sends them for an encrypted client)."""
    return struct.pack("!ii", HEADER_SIZE, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", HEADER_SIZE, GSSENC_REQUEST_CODE)


def cancel_request(process_id: int, secret_key: int) -> bytes:
    return struct.pack("!iiii", CANCEL_REQUEST_SIZE, CANCEL_REQUEST_CODE, process_id, secret_key)
