"""The activator's startup negotiation under any input: only a valid startup wakes, and nothing raises.

The properties hold for any byte string split into any chunks; the targeted cases are the kinds of
junk a security review found waking paused databases, each with the answer Postgres itself gives.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import ssl
import struct
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.activator import negotiation, protocol
from controller.activator.negotiation import Close, Refuse, Silence, Wake

# -- a run of the machine --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    replies: bytes
    decision: negotiation.Decision | None


def run(chunks: list[bytes], *, eof: bool = True, tls: bool = False) -> Outcome:
    """Feed the chunks (then EOF), checking the machine's promises on the way."""
    machine = negotiation.Negotiation(tls=tls)
    replies = b""
    decisions: list[negotiation.Decision] = []
    for chunk in chunks:
        assert machine.wanted <= protocol.MAX_PACKET_SIZE  # never asks to hold more than a packet
        if not decisions:
            assert machine.wanted > 0
        for action in machine.receive(chunk):
            if isinstance(action, negotiation.Reply):
                assert not decisions, "a reply after the decision"
                replies += action.data
            else:
                decisions.append(action)
    if eof:
        decisions += [a for a in machine.receive_eof() if not isinstance(a, negotiation.Reply)]
    assert len(decisions) <= 1
    assert machine.decision == (decisions[0] if decisions else None)
    return Outcome(replies, decisions[0] if decisions else None)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- what a valid startup is, said once more and independently of the code -------------------------

LAYOUT = re.compile(rb"(?:[^\0]+\0[^\0]*\0)*\0", re.DOTALL)
"""name\\0value\\0 pairs with non-empty names, then the one terminating \\0."""


def valid_startup(packet: bytes) -> bool:
    if len(packet) < 8:
        return False
    length, version = struct.unpack("!ii", packet[:8])
    body = packet[8:length]
    if length != len(body) + 8 or not 8 <= length <= 10_004 or version >> 16 != 3:
        return False
    if LAYOUT.fullmatch(body) is None:
        return False
    try:
        fields = body[:-1].decode().split("\0")[:-1]
    except UnicodeDecodeError:
        return False
    return bool(dict(zip(fields[0::2], fields[1::2], strict=True)).get("user"))


def encryption_requests(data: bytes, wake: Wake) -> int | None:
    """How many requests came before the woken packet (which ends `data`), if they are at most one
    SSLRequest and one GSSENCRequest; None if anything else came first."""
    if not data.endswith(wake.packet):
        return None
    prefix = data[: len(data) - len(wake.packet)]
    if len(prefix) % 8:
        return None
    requests = [prefix[i : i + 8] for i in range(0, len(prefix), 8)]
    allowed = {protocol.ssl_request(), protocol.gssenc_request()}
    return len(requests) if len(set(requests)) == len(requests) and set(requests) <= allowed else None


# -- generators ------------------------------------------------------------------------------------

characters = st.characters(exclude_characters="\0", exclude_categories=["Cs"])
names = st.text(characters, min_size=1, max_size=12)
values = st.text(characters, max_size=30)


@st.composite
def valid_sessions(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    """(everything the client sends, its StartupMessage, how many encryption requests came first)."""
    parameters = draw(st.dictionaries(names, values, max_size=6))
    parameters["user"] = draw(values.filter(bool))
    minor = draw(st.sampled_from([0, 0, 0, 1, 2]))
    startup = protocol.startup_message(parameters, protocol.PROTOCOL_3_0 + minor)
    requests = draw(
        st.sampled_from(
            [
                [],
                [protocol.ssl_request()],
                [protocol.gssenc_request()],
                [protocol.gssenc_request(), protocol.ssl_request()],
                [protocol.ssl_request(), protocol.gssenc_request()],
            ]
        )
    )
    return b"".join(requests) + startup, startup, len(requests)


@st.composite
def mutated_sessions(draw: st.DrawFn) -> bytes:
    """A valid session with a byte changed, inserted or dropped, or cut short."""
    data, _, _ = draw(valid_sessions())
    at = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["flip", "insert", "drop", "cut"]))
    byte = bytes([draw(st.integers(0, 255))])
    if kind == "flip":
        return data[:at] + byte + data[at + 1 :]
    if kind == "insert":
        return data[:at] + byte + data[at:]
    if kind == "drop":
        return data[:at] + data[at + 1 :]
    return data[:at]


cut_points = st.lists(st.integers(min_value=0), max_size=12)


# -- properties ------------------------------------------------------------------------------------


@settings(max_examples=400)
@given(
    st.one_of(st.binary(max_size=200), mutated_sessions(), valid_sessions().map(lambda s: s[0])), cut_points
)
@example(protocol.ssl_request() * 2 + protocol.startup_message({"user": "a"}), [8, 9])
@example(protocol.cancel_request(1, 2), [3])
def test_no_input_wakes_unless_it_is_a_valid_startup_and_none_raises(data: bytes, cuts: list[int]) -> None:
    whole = run([data])
    assert run(split(data, cuts)) == whole  # however the bytes were split
    if isinstance(whole.decision, Wake):
        requests = encryption_requests(data, whole.decision)
        assert requests is not None
        assert whole.replies == protocol.DECLINE_ENCRYPTION * requests
        startup = whole.decision.packet[: struct.unpack("!i", whole.decision.packet[:4])[0]]
        assert valid_startup(startup)


@settings(max_examples=300)
@given(valid_sessions(), cut_points)
def test_every_valid_startup_wakes_with_its_packet_byte_for_byte(
    session: tuple[bytes, bytes, int], cuts: list[int]
) -> None:
    data, startup, requests = session
    outcome = run(split(data, cuts), eof=False)
    assert outcome.replies == protocol.DECLINE_ENCRYPTION * requests
    assert isinstance(outcome.decision, Wake)
    assert outcome.decision.packet == startup
    assert outcome.decision.startup == protocol.parse_startup(
        struct.unpack("!i", startup[4:8])[0], startup[8:]
    )


@given(st.binary(min_size=1, max_size=100))
def test_anything_after_the_startup_follows_it_unchanged(rest: bytes) -> None:
    startup = protocol.startup_message({"user": "alice"})
    outcome = run([startup + rest], eof=False)
    assert isinstance(outcome.decision, Wake)
    assert outcome.decision.packet == startup + rest


# -- targeted cases: each kind of junk, answered as Postgres answers it ------------------------------

STARTUP = protocol.startup_message({"user": "alice", "database": "orders"})
TLS_CLIENT_HELLO = bytes.fromhex("160301020001") + bytes(512)  # a TLS record header, then a hello body


def body(raw: bytes, version: int = protocol.PROTOCOL_3_0) -> bytes:
    return struct.pack("!ii", len(raw) + 8, version) + raw


LAYOUT_ERROR = Refuse(
    protocol.PROTOCOL_VIOLATION, "invalid startup packet layout: expected terminator as last byte"
)


@pytest.mark.parametrize(
    ("sent", "replies", "decision"),
    [
        pytest.param(b"", b"", Close(Silence.NOTHING_SENT), id="an empty connect"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: db\r\n\r\n", b"", Close(Silence.INVALID_LENGTH), id="an HTTP GET"
        ),
        pytest.param(struct.pack("!ii", 4, 0), b"", Close(Silence.INVALID_LENGTH), id="a length under 8"),
        pytest.param(struct.pack("!i", -1), b"", Close(Silence.INVALID_LENGTH), id="a negative length"),
        pytest.param(
            struct.pack("!ii", 10_005, protocol.PROTOCOL_3_0),  # 10,001 bytes after the length word
            b"",
            Close(Silence.INVALID_LENGTH),
            id="a length over Postgres's 10,000",
        ),
        pytest.param(
            protocol.cancel_request(0x5EED, 0x0BADC0DE),
            b"",
            Close(Silence.CANCEL_REQUEST),
            id="a cancel request",
        ),
        pytest.param(
            struct.pack("!iii", 12, protocol.CANCEL_REQUEST_CODE, 1),
            b"",
            Close(Silence.INVALID_LENGTH),
            id="a short cancel request",
        ),
        pytest.param(
            protocol.ssl_request() + TLS_CLIENT_HELLO,
            b"N",
            Close(Silence.INVALID_LENGTH),
            id="an SSLRequest, then a TLS hello after our N",
        ),
        pytest.param(
            protocol.ssl_request() + bytes(range(8, 16)),
            b"N",
            Close(Silence.INVALID_LENGTH),
            id="an SSLRequest, then garbage",
        ),
        pytest.param(
            protocol.ssl_request() * 2,
            b"N",
            Refuse(
                protocol.FEATURE_NOT_SUPPORTED,
                "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0",
            ),
            id="a second SSLRequest",
        ),
        pytest.param(
            protocol.gssenc_request() + protocol.ssl_request() + protocol.gssenc_request(),
            b"NN",
            Refuse(
                protocol.FEATURE_NOT_SUPPORTED,
                "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0",
            ),
            id="a second GSSENCRequest",
        ),
        pytest.param(
            body(b"user\0alice\0\0", 2 << 16),
            b"",
            Refuse(
                protocol.FEATURE_NOT_SUPPORTED,
                "unsupported frontend protocol 2.0: server supports 3.0 to 3.0",
            ),
            id="protocol 2.0",
        ),
        pytest.param(
            body(b"database\0orders\0\0"),
            b"",
            Refuse(
                protocol.INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            ),
            id="no user",
        ),
        pytest.param(
            body(b"user\0\0\0"),
            b"",
            Refuse(
                protocol.INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            ),
            id="an empty user",
        ),
        pytest.param(body(b"user\0alice\0\0x\0y\0\0"), b"", LAYOUT_ERROR, id="an empty parameter name"),
        pytest.param(body(b"user\0alice\0"), b"", LAYOUT_ERROR, id="no terminator"),
        pytest.param(body(b""), b"", LAYOUT_ERROR, id="no parameters at all"),
        pytest.param(
            body(b"user\0al\xffce\0\0"),
            b"",
            Refuse(protocol.CHARACTER_NOT_IN_REPERTOIRE, 'invalid byte sequence for encoding "UTF8": 0xff'),
            id="a value that is not UTF-8",
        ),
        pytest.param(STARTUP[:-3], b"", Close(Silence.INCOMPLETE), id="a startup cut short"),
        pytest.param(b"\0\0", b"", Close(Silence.INCOMPLETE), id="half a length word"),
    ],
)
def test_junk_never_wakes(sent: bytes, replies: bytes, decision: negotiation.Decision) -> None:
    assert run([sent]) == Outcome(replies, decision)
    assert run([sent[i : i + 1] for i in range(len(sent))]) == Outcome(replies, decision)


def test_a_startup_of_exactly_postgres_s_limit_wakes() -> None:
    padding = 10_004 - len(protocol.startup_message({"user": "alice", "options": ""}))
    packet = protocol.startup_message({"user": "alice", "options": "x" * padding})
    assert len(packet) == 10_004
    assert isinstance(run([packet], eof=False).decision, Wake)
    one_more = protocol.startup_message({"user": "alice", "options": "x" * (padding + 1)})
    assert run([one_more]).decision == Close(Silence.INVALID_LENGTH)


def test_a_bad_length_is_refused_on_its_length_word_alone() -> None:
    """A 1 MB 'startup' is turned away after 4 bytes: nothing waits for the rest."""
    machine = negotiation.Negotiation()
    assert machine.wanted == 4
    assert machine.receive(struct.pack("!i", 1 << 20)) == [Close(Silence.INVALID_LENGTH)]
    assert machine.wanted == 0


# -- with TLS: 'S', then only a ClientHello wakes, and it goes to Postgres as it came ----------------


def client_hello(server_hostname: str = "orders.shop.svc") -> bytes:
    """The first flight of a real TLS client (Python's OpenSSL), as it would follow our 'S'."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def starts_a_client_hello(data: bytes) -> bool:
    """A TLS handshake record (RFC 8446 5.1) of a legal size whose first message is a ClientHello."""
    return (
        len(data) >= 9
        and data[0] == 22
        and data[1] == 3
        and data[2] <= 4
        and 4 <= int.from_bytes(data[3:5], "big") <= 2**14
        and data[5] == 1
    )


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=120).map(lambda junk: protocol.ssl_request() + junk),
        st.binary(max_size=120).map(lambda junk: protocol.gssenc_request() + protocol.ssl_request() + junk),
        mutated_sessions(),
        st.binary(max_size=120),
    ),
    cut_points,
)
@example(protocol.ssl_request() + bytes.fromhex("160301020001000000"), [9])
def test_with_tls_only_a_client_hello_after_s_wakes_encrypted(data: bytes, cuts: list[int]) -> None:
    whole = run([data], tls=True)
    assert run(split(data, cuts), tls=True) == whole
    if not isinstance(whole.decision, Wake):
        return
    if whole.decision.encrypted:
        assert whole.replies.endswith(protocol.ACCEPT_TLS)
        before = data[: len(data) - len(whole.decision.packet)]
        assert before in (protocol.ssl_request(), protocol.gssenc_request() + protocol.ssl_request())
        assert starts_a_client_hello(whole.decision.packet)
    else:  # no SSLRequest was made: a plain startup, as without TLS
        assert protocol.ssl_request() not in data[: len(data) - len(whole.decision.packet)]


def test_a_real_client_hello_wakes_with_the_hello_passed_on_whole() -> None:
    hello = client_hello()
    for chunks in ([protocol.ssl_request() + hello], [protocol.ssl_request(), hello[:3], hello[3:]]):
        outcome = run(chunks, eof=False, tls=True)
        assert outcome.replies == protocol.ACCEPT_TLS
        assert isinstance(outcome.decision, Wake)
        assert outcome.decision.encrypted
        assert outcome.decision.startup is None
        # What the decision did not need is not lost: everything given is handed on, in order.
        assert outcome.decision.packet == hello


@pytest.mark.parametrize(
    "after",
    [
        pytest.param(STARTUP, id="a plaintext startup after S"),
        pytest.param(protocol.ssl_request() + b"\0", id="a second SSLRequest"),
        pytest.param(bytes.fromhex("150303000202280000"), id="an alert record"),
        pytest.param(bytes.fromhex("160303400102000000"), id="a record over 2^14"),
        pytest.param(bytes.fromhex("160303010002000000"), id="a ServerHello"),
        pytest.param(b"GET / HTTP/1.1\r\n", id="HTTP"),
    ],
)
def test_with_tls_anything_but_a_hello_after_s_is_closed_unanswered(after: bytes) -> None:
    outcome = run([protocol.ssl_request() + after], tls=True)
    assert outcome == Outcome(protocol.ACCEPT_TLS, Close(Silence.NOT_TLS))


def test_with_tls_a_gssenc_request_is_still_declined() -> None:
    outcome = run([protocol.gssenc_request() + protocol.ssl_request() + client_hello()], eof=False, tls=True)
    assert outcome.replies == protocol.DECLINE_ENCRYPTION + protocol.ACCEPT_TLS
    assert isinstance(outcome.decision, Wake)
    assert outcome.decision.encrypted
