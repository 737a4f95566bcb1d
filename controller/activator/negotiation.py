"""One client's startup as a state machine without I/O: bytes in, actions out.

A connection to a resting database starts with at most one SSLRequest and one GSSENCRequest (in
either order), then a StartupMessage. `Negotiation.receive` takes whatever bytes arrived and
returns what to do: `Reply` (bytes for the client), then at most one decision: `Wake` (a valid
StartupMessage: wake the database and relay this packet first), `Refuse` (an ErrorResponse, then
close) or `Close` (close without a word, as Postgres does for these cases). `wanted` says how many
bytes complete the packet under way, so the caller reads no further than the startup and keeps at
most one packet (10,004 bytes) per client.

With `tls`, an SSLRequest is answered 'S' and what must follow is a TLS ClientHello: its record
header and handshake header (`protocol.TLS_HELLO_PREFIX` bytes) decide `Wake`, encrypted. The
StartupMessage is then inside TLS, which only Postgres can read: the relay asks Postgres for TLS
itself and hands it the hello, so the session is encrypted to the server, not to the activator.
GSSENCRequest is always declined.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from controller.activator import protocol


@dataclass(frozen=True)
class Reply:
    data: bytes


@dataclass(frozen=True)
class Wake:
    startup: protocol.StartupMessage | None
    """None when encrypted: the StartupMessage is inside TLS."""
    packet: bytes
    """What Postgres gets first once awake: the StartupMessage as the client sent it, byte for byte,
    or, encrypted, the start of its ClientHello (after the relay's own SSLRequest)."""

    @property
    def encrypted(self) -> bool:
        return self.startup is None


@dataclass(frozen=True)
class Refuse:
    code: str
    message: str


class Silence(enum.StrEnum):
    """Why a connection is closed without an answer; Postgres sends none in these cases either."""

    NOTHING_SENT = "closed before sending anything"
    """A port check, or a client that disliked our 'N': not worth a log line (Postgres logs none)."""
    INCOMPLETE = "incomplete startup packet"
    INVALID_LENGTH = "invalid length of startup packet"
    CANCEL_REQUEST = "cancel request for a database at rest"
    """Nothing runs that it could cancel."""
    NOT_TLS = "not a TLS ClientHello after SSLRequest"
    """Postgres fails the handshake and closes; its log says "could not accept SSL connection"."""


@dataclass(frozen=True)
class Close:
    reason: Silence


Decision = Wake | Refuse | Close
Action = Reply | Decision


class Negotiation:
    """The startup of one connection; `decision` is set once, and nothing is read after it."""

    def __init__(self, *, tls: bool = False) -> None:
        self.tls = tls
        """Whether SSLRequest is accepted (the server behind serves TLS), rather than declined."""
        self.encrypted = False
        """'S' was answered: from here the client speaks TLS, and may only be closed or relayed."""
        self._packet = bytearray()
        self._ssl_done = False
        self._gssenc_done = False
        self.decision: Decision | None = None
        self.received = 0
        """Bytes taken in: a connection that ends at 0 sent nothing at all."""

    @property
    def wanted(self) -> int:
        """Bytes that complete the packet under way (0 once decided): read no more than this."""
        if self.decision is not None:
            return 0
        if self.encrypted:
            return protocol.TLS_HELLO_PREFIX - len(self._packet)
        if len(self._packet) < protocol.LENGTH_SIZE:
            return protocol.LENGTH_SIZE - len(self._packet)
        return self._length() - len(self._packet)

    def receive(self, data: bytes) -> list[Action]:
        """The actions `data` leads to, however the client's bytes were split into calls."""
        if self.decision is not None:
            return []
        actions: list[Action] = []
        self.received += len(data)
        view = memoryview(data)
        while view and self.decision is None:
            take = min(self.wanted, len(view))
            self._packet += view[:take]
            view = view[take:]
            actions += self._step()
        if view and actions and isinstance(wake := actions[-1], Wake):
            # Bytes the client sent after its StartupMessage reach Postgres after it, unchanged.
            self.decision = actions[-1] = Wake(wake.startup, wake.packet + bytes(view))
        return actions

    def receive_eof(self) -> list[Action]:
        if self.decision is not None:
            return []
        reason = Silence.NOTHING_SENT if self.received == 0 else Silence.INCOMPLETE
        return [self._decide(Close(reason))]

    def _length(self) -> int:
        return int(struct.unpack_from("!i", self._packet)[0])

    def _step(self) -> list[Action]:
        """Act on the packet so far: a bad length at once, the rest once the packet is whole."""
        if self.encrypted:
            return self._hello()
        if len(self._packet) < protocol.LENGTH_SIZE:
            return []
        if not protocol.valid_length(self._length()):
            return [self._decide(Close(Silence.INVALID_LENGTH))]
        if self.wanted:
            return []
        packet = bytes(self._packet)
        self._packet.clear()
        (code,) = struct.unpack_from("!i", packet, protocol.LENGTH_SIZE)
        if code == protocol.SSL_REQUEST_CODE and not self._ssl_done:
            self._ssl_done = True
            if self.tls:
                self.encrypted = True
                return [Reply(protocol.ACCEPT_TLS)]
            return [Reply(protocol.DECLINE_ENCRYPTION)]
        if code == protocol.GSSENC_REQUEST_CODE and not self._gssenc_done:
            self._gssenc_done = True
            return [Reply(protocol.DECLINE_ENCRYPTION)]
        if code == protocol.CANCEL_REQUEST_CODE:
            # Either way nothing is answered: a short one is "invalid length" to Postgres.
            if len(packet) != protocol.CANCEL_REQUEST_SIZE:
                return [self._decide(Close(Silence.INVALID_LENGTH))]
            return [self._decide(Close(Silence.CANCEL_REQUEST))]
        # A second SSLRequest or GSSENCRequest falls through as Postgres lets it: its code read as a
        # protocol version (1234.5679 or 1234.5680), which no server supports.
        parsed = protocol.parse_startup(code, packet[protocol.HEADER_SIZE :])
        if isinstance(parsed, protocol.Invalid):
            return [self._decide(Refuse(parsed.code, parsed.message))]
        return [self._decide(Wake(parsed, packet))]

    def _hello(self) -> list[Action]:
        if self.wanted:
            return []
        packet = bytes(self._packet)
        self._packet.clear()
        if not protocol.is_client_hello(packet):
            return [self._decide(Close(Silence.NOT_TLS))]
        return [self._decide(Wake(None, packet))]

    def _decide(self, decision: Decision) -> Decision:
        self.decision = decision
        return decision
