"""The two fast-path implementations against each other and against the RFCs.

`fastredir._fastpath` (Cython) and `fastredir.fallback` (pure Python) must
return the same (verdict, reply, gateway) for every datagram.  Beyond that
agreement, each REDIRECT is decoded here and checked field by field, and
each drop reason is produced from a recorded strongSwan request by one
targeted edit.  The layouts built here follow RFC 7296: section 3.1 (IKE
header), 3.2 (generic payload header), 3.9 (Nonce) and 3.10 (Notify).  The
redirect notifies follow RFC 5685 sections 3 and 9, and the NAT-T framing
follows RFC 3948 sections 2.2 (non-ESP marker) and 2.3 (NAT keepalive).
"""

from __future__ import annotations

import ipaddress
import pathlib
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from fastredir import _fastpath, fallback
from fastredir.message import GatewayIdentity, Message, Notify, Redirect
from fastredir.selection import NO_GATEWAY, Gateway, KeyMode, build_table, client_hash
from fastredir.verdict import Verdict
from tests.captures import client_requests, read_capture

# Protocol numbers written out from the RFCs, not imported from the code
# under test.
EXCHANGE_IKE_SA_INIT = 34  # RFC 7296 section 3.1
EXCHANGE_IKE_AUTH = 35
FLAG_INITIATOR = 0x08  # RFC 7296 section 3.1, flags octet
FLAG_VERSION = 0x10
FLAG_RESPONSE = 0x20
PAYLOAD_SA = 33  # RFC 7296 section 3.2
PAYLOAD_KE = 34
PAYLOAD_NONCE = 40
PAYLOAD_NOTIFY = 41
CRITICAL = 0x80  # RFC 7296 section 3.2, first bit of the second octet
REDIRECT_SUPPORTED = 16406  # RFC 5685 section 9
REDIRECT = 16407
REDIRECTED_FROM = 16408
NAT_DETECTION_SOURCE_IP = 16388  # RFC 7296 section 3.10.1
IDENTITY_IPV4 = 1  # RFC 5685 section 9, Gateway Identity Type
IDENTITY_IPV6 = 2
IDENTITY_FQDN = 3
NON_ESP_MARKER = bytes(4)  # RFC 3948 section 2.2
KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
IKE_HEADER = struct.Struct("!8s8sBBBBII")  # RFC 7296 section 3.1

# Payload types RFC 7296 and later RFCs assign are 33 to 49, 53 and 54.
# The rest of 1..255 is unknown to a responder.
ASSIGNED_PAYLOAD_TYPES = frozenset(range(33, 50)) | {53, 54}
UNASSIGNED_PAYLOAD_TYPES = [t for t in range(1, 256) if t not in ASSIGNED_PAYLOAD_TYPES]

IMPLEMENTATIONS = [_fastpath, fallback]

CLIENT_V4 = ipaddress.IPv4Address("192.0.2.10").packed
CLIENT_V6 = ipaddress.IPv6Address("2001:db8::10").packed

MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# Test-side reference code
# ---------------------------------------------------------------------------


def fnv1a64(data: bytes, basis: int = 0xCBF29CE484222325) -> int:
    """FNV-1a, 64-bit (offset basis and prime from the FNV specification)."""
    h = basis
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def fmix64(h: int) -> int:
    """The MurmurHash3 64-bit finalizer."""
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    h ^= h >> 33
    return h


def reference_hash(key: bytes, seed: int) -> int:
    """The client hash as the selection module documents it: FNV-1a with
    the seed XORed into the offset basis, then fmix64."""
    return fmix64(fnv1a64(key, 0xCBF29CE484222325 ^ seed))


@dataclass
class Chunk:
    """One payload: type, second octet (critical bit and reserved bits) and body."""

    type: int
    flags: int
    body: bytes


def split_message(message: bytes) -> tuple[bytes, list[Chunk]]:
    """Split a well-framed IKE message into its 28-byte header and its
    payloads (RFC 7296 sections 3.1 and 3.2)."""
    header = message[:28]
    chunks = []
    next_type = message[16]
    position = 28
    while next_type != 0:
        following, flags, length = struct.unpack_from("!BBH", message, position)
        chunks.append(Chunk(next_type, flags, message[position + 4 : position + length]))
        next_type = following
        position += length
    assert position == len(message), "test input is not well framed"
    return header, chunks


def join_message(header: bytes, chunks: list[Chunk]) -> bytes:
    """Chain `chunks` behind `header`, setting every Next Payload field and
    the header Length."""
    body = b""
    for index, chunk in enumerate(chunks):
        following = chunks[index + 1].type if index + 1 < len(chunks) else 0
        body += struct.pack("!BBH", following, chunk.flags, 4 + len(chunk.body)) + chunk.body
    first = chunks[0].type if chunks else 0
    total = 28 + len(body)
    return header[:16] + bytes((first,)) + header[17:24] + struct.pack("!I", total) + body


def set_header(message: bytes, **fields: int | bytes) -> bytes:
    """Rewrite fields of the IKE header (RFC 7296 section 3.1)."""
    ispi, rspi, next_payload, version, exchange, flags, message_id, length = IKE_HEADER.unpack_from(message)
    values = {
        "ispi": ispi,
        "rspi": rspi,
        "next_payload": next_payload,
        "version": version,
        "exchange": exchange,
        "flags": flags,
        "message_id": message_id,
        "length": length,
    }
    values.update(fields)
    return IKE_HEADER.pack(*values.values()) + message[28:]


def notify_body(notify_type: int, data: bytes = b"", spi: bytes = b"", protocol_id: int = 0) -> bytes:
    """A Notify payload body (RFC 7296 section 3.10)."""
    return struct.pack("!BBH", protocol_id, len(spi), notify_type) + spi + data


def identity_bytes(identity_type: int, raw: bytes) -> bytes:
    """GW Ident Type, GW Ident Len and the identity (RFC 5685 section 9)."""
    return bytes((identity_type, len(raw))) + raw


def notify_type_of(chunk: Chunk) -> int | None:
    if chunk.type != PAYLOAD_NOTIFY or len(chunk.body) < 4:
        return None
    return struct.unpack_from("!H", chunk.body, 2)[0]


def nonce_of(message: bytes) -> bytes:
    _, chunks = split_message(message)
    nonces = [c.body for c in chunks if c.type == PAYLOAD_NONCE]
    assert len(nonces) == 1
    return nonces[0]


def run_both(table_pair, datagram: bytes, nat_t: bool, address: bytes, port: int):
    """Run both implementations; require the same result and return it."""
    cython_result = _fastpath.process(table_pair[0], datagram, nat_t, address, port)
    python_result = fallback.process(table_pair[1], datagram, nat_t, address, port)
    assert cython_result == python_result, f"twins disagree on {datagram.hex()} nat_t={nat_t}"
    return python_result


def compile_both(table):
    return (_fastpath.compile_table(table), fallback.compile_table(table))


def expected_gateway(table, address: bytes, initiator_spi: bytes, excluded: bytes | None) -> int:
    """The gateway a client must get, from the table arrays and the
    test-side hash: the slot's gateway, or its alternate when
    REDIRECTED_FROM names the slot's gateway."""
    if table.size == 0:
        return NO_GATEWAY
    key = address + initiator_spi if table.key_mode == KeyMode.ADDRESS_SPI else address
    slot = reference_hash(key, table.seed) % table.size
    gateway = table.gateway_at(slot)
    if excluded is not None and dict(table.exclusions).get(excluded) == gateway:
        return table.alternate_at(slot)
    return gateway


def check_redirect(reply: bytes, datagram: bytes, nat_t: bool, identity: GatewayIdentity) -> None:
    """Check a reply against RFC 5685 section 3 for the request `datagram`."""
    assert len(reply) <= len(datagram)
    request = datagram
    if nat_t:
        assert reply[:4] == NON_ESP_MARKER
        reply = reply[4:]
        request = datagram[4:]

    ispi, rspi, next_payload, version, exchange, flags, message_id, length = IKE_HEADER.unpack_from(reply)
    assert ispi == request[:8]
    assert rspi == bytes(8)
    assert next_payload == PAYLOAD_NOTIFY
    assert version >> 4 == 2
    assert exchange == EXCHANGE_IKE_SA_INIT
    assert flags & FLAG_RESPONSE
    assert not flags & FLAG_INITIATOR
    assert message_id == 0
    assert length == len(reply)

    message = Message.parse(reply)
    assert len(message.payloads) == 1
    payload = message.payloads[0]
    assert payload.type == PAYLOAD_NOTIFY
    assert not payload.critical
    notify = Notify.decode(payload.body)
    assert notify.type == REDIRECT
    assert notify.protocol_id == 0
    assert notify.spi == b""
    redirect = Redirect.decode(notify.data)
    assert redirect.gateway == identity
    assert redirect.nonce == nonce_of(request)


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

# In the strongswan-v4-x25519.redirected capture, 192.0.2.1 redirected the
# client to 192.0.2.11.
FIRST_GATEWAY = GatewayIdentity.from_text("192.0.2.1")
SECOND_GATEWAY = GatewayIdentity.from_text("192.0.2.11")
V6_GATEWAY = GatewayIdentity.from_text("2001:db8::11")
FQDN_GATEWAY = GatewayIdentity.from_text("VPN3.Example.NET")
FQDN_ALIAS = GatewayIdentity.from_text("198.51.100.3")

MIXED_TABLE = build_table(
    [
        Gateway(SECOND_GATEWAY),
        Gateway(V6_GATEWAY),
        Gateway(FQDN_GATEWAY, weight=2, aliases=(FQDN_ALIAS,)),
    ],
    size=1009,
)
SPI_TABLE = build_table(
    [Gateway(SECOND_GATEWAY), Gateway(V6_GATEWAY), Gateway(FQDN_GATEWAY)],
    size=1013,
    seed=7,
    key_mode=KeyMode.ADDRESS_SPI,
)
PAIR_TABLE = build_table([Gateway(FIRST_GATEWAY), Gateway(SECOND_GATEWAY)], size=1019)
SINGLE_TABLE = build_table([Gateway(FIRST_GATEWAY)], size=1021)
EMPTY_TABLE = build_table([], size=1031)
LONG_NAME_GATEWAY = GatewayIdentity.from_text("a" * 251 + ".net")
LONG_NAME_TABLE = build_table([Gateway(LONG_NAME_GATEWAY)], size=1033)

MIXED = compile_both(MIXED_TABLE)
SPI = compile_both(SPI_TABLE)
PAIR = compile_both(PAIR_TABLE)
SINGLE = compile_both(SINGLE_TABLE)
EMPTY = compile_both(EMPTY_TABLE)
LONG_NAME = compile_both(LONG_NAME_TABLE)

TABLES = [(MIXED_TABLE, MIXED), (SPI_TABLE, SPI), (PAIR_TABLE, PAIR), (SINGLE_TABLE, SINGLE)]


# ---------------------------------------------------------------------------
# Recorded requests
# ---------------------------------------------------------------------------

REQUESTS = client_requests()
# strongswan-v4-x25519.request: SA, KE, Nonce (32 bytes) and five Notify
# payloads, the last REDIRECT_SUPPORTED.
BASE = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
NATT_REQUEST = read_capture("strongswan-v4-natt4500.request.pcap")[0].payload
REDIRECTED_CAPTURE = read_capture("strongswan-v4-x25519.redirected.pcap")
IKE_AUTH_REQUEST = REDIRECTED_CAPTURE[2].payload  # NAT-T, marker first


def test_captures_loaded():
    names = {d.capture for d in REQUESTS}
    assert len(names) == 7
    assert len(REQUESTS) == 8
    # The payload indexes the drop cases use (7 is the last).
    _, chunks = split_message(BASE)
    assert [c.type for c in chunks] == [PAYLOAD_SA, PAYLOAD_KE, PAYLOAD_NONCE] + [PAYLOAD_NOTIFY] * 5


def message_of(datagram) -> bytes:
    return datagram.payload[4:] if datagram.nat_t else datagram.payload


def is_redirect_supported(chunks: list[Chunk]) -> bool:
    types = [notify_type_of(c) for c in chunks]
    return REDIRECT_SUPPORTED in types or REDIRECTED_FROM in types


def redirected_from_key(chunks: list[Chunk]) -> bytes | None:
    """The exclusion key (type octet + identity, FQDN lower-cased) that a
    REDIRECTED_FROM notify names, read by the test."""
    for chunk in chunks:
        if notify_type_of(chunk) == REDIRECTED_FROM:
            data = chunk.body[4 + chunk.body[1] :]
            raw = data[2:]
            return bytes((data[0],)) + (raw.lower() if data[0] == IDENTITY_FQDN else raw)
    return None


# ---------------------------------------------------------------------------
# Constants and hash
# ---------------------------------------------------------------------------


def test_verdict_codes_match():
    assert _fastpath.VERDICT_CODES == {v.name: v.value for v in Verdict}


def test_reference_hash_vectors():
    # Known FNV-1a 64-bit values keep the test-side hash honest.
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


@settings(max_examples=1000, deadline=None)
@given(key=st.binary(max_size=40), seed=st.integers(0, MASK64))
def test_hash_twins_agree(key, seed):
    expected = reference_hash(key, seed)
    assert client_hash(key, seed) == expected
    assert _fastpath.hash_key(key, seed) == expected


# ---------------------------------------------------------------------------
# Recorded requests through both implementations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("datagram", REQUESTS, ids=lambda d: d.name)
def test_capture_request(datagram):
    message = message_of(datagram)
    _, chunks = split_message(message)
    result = run_both(MIXED, datagram.payload, datagram.nat_t, datagram.source, datagram.source_port)
    verdict, reply, gateway = result

    if not is_redirect_supported(chunks):
        assert verdict == Verdict.REDIRECT_NOT_SUPPORTED
        assert reply is None
        assert gateway == NO_GATEWAY
        return

    assert verdict == Verdict.REDIRECTED
    excluded = redirected_from_key(chunks)
    assert gateway == expected_gateway(MIXED_TABLE, datagram.source, message[:8], excluded)
    identity = MIXED_TABLE.gateways[gateway].identity
    check_redirect(reply, datagram.payload, datagram.nat_t, identity)


def test_noredirsup_capture():
    for datagram in read_capture("strongswan-v4-noredirsup.request.pcap"):
        for implementation, table in zip(IMPLEMENTATIONS, MIXED):
            verdict, reply, gateway = implementation.process(
                table, datagram.payload, False, datagram.source, datagram.source_port
            )
            assert verdict == Verdict.REDIRECT_NOT_SUPPORTED
            assert reply is None
            assert gateway == NO_GATEWAY


def test_natt_capture_marker():
    verdict, reply, _ = run_both(MIXED, NATT_REQUEST, True, CLIENT_V4, 4500)
    assert verdict == Verdict.REDIRECTED
    assert reply[:4] == NON_ESP_MARKER


def test_capture_every_table():
    for table, pair in TABLES:
        for datagram in REQUESTS:
            verdict, reply, gateway = run_both(
                pair, datagram.payload, datagram.nat_t, datagram.source, datagram.source_port
            )
            _, chunks = split_message(message_of(datagram))
            if verdict == Verdict.REDIRECTED:
                excluded = redirected_from_key(chunks)
                spi = message_of(datagram)[:8]
                assert gateway == expected_gateway(table, datagram.source, spi, excluded)
                check_redirect(reply, datagram.payload, datagram.nat_t, table.gateways[gateway].identity)


# ---------------------------------------------------------------------------
# Drop reasons, each from the base request by one edit
# ---------------------------------------------------------------------------


def base_chunks() -> tuple[bytes, list[Chunk]]:
    return split_message(BASE)


def without_notify(notify_type: int) -> list[Chunk]:
    _, chunks = base_chunks()
    return [c for c in chunks if notify_type_of(c) != notify_type]


def edited(chunks: list[Chunk]) -> bytes:
    header, _ = base_chunks()
    return join_message(header, chunks)


def with_nonce(length: int) -> bytes:
    _, chunks = base_chunks()
    for chunk in chunks:
        if chunk.type == PAYLOAD_NONCE:
            chunk.body = bytes(range(256))[:length] if length <= 256 else bytes(length)
    return edited(chunks)


def with_redirected_from(*identities: bytes) -> bytes:
    chunks = without_notify(REDIRECT_SUPPORTED)
    for identity in identities:
        chunks.append(Chunk(PAYLOAD_NOTIFY, 0, notify_body(REDIRECTED_FROM, identity)))
    return edited(chunks)


def with_payload_length(index: int, length: int) -> bytes:
    """Overwrite the Payload Length of the payload at `index` and leave
    everything else alone."""
    position = 28
    for _ in range(index):
        position += struct.unpack_from("!H", BASE, position + 2)[0]
    return BASE[: position + 2] + struct.pack("!H", length) + BASE[position + 4 :]


def with_extra(chunk: Chunk) -> bytes:
    _, chunks = base_chunks()
    chunks.insert(3, chunk)
    return edited(chunks)


def two_nonces() -> bytes:
    _, chunks = base_chunks()
    chunks.append(Chunk(PAYLOAD_NONCE, 0, bytes(range(32))))
    return edited(chunks)


def without_nonce() -> bytes:
    _, chunks = base_chunks()
    return edited([c for c in chunks if c.type != PAYLOAD_NONCE])


def with_last_next_payload(payload_type: int) -> bytes:
    """Set the Next Payload octet of the last payload, so that the chain
    promises a payload after the end of the message."""
    _, chunks = base_chunks()
    position = 28
    for _ in range(len(chunks) - 1):
        position += struct.unpack_from("!H", BASE, position + 2)[0]
    return BASE[:position] + bytes((payload_type,)) + BASE[position + 1 :]


def trailing_bytes() -> bytes:
    data = BASE + bytes(4)
    return data[:24] + struct.pack("!I", len(data)) + data[28:]


def ike_auth(rspi: bytes) -> bytes:
    return set_header(BASE, exchange=EXCHANGE_IKE_AUTH, rspi=rspi, message_id=1)


def drop(
    case_id: str,
    datagram: bytes,
    verdict: Verdict,
    nat_t: bool = False,
    address: bytes = CLIENT_V4,
    port: int = 500,
):
    return pytest.param(datagram, nat_t, address, port, verdict, id=case_id)


def natt_drop(case_id: str, datagram: bytes, verdict: Verdict, port: int = 4500):
    return drop(case_id, datagram, verdict, nat_t=True, port=port)


def source_drop(case_id: str, address: str, port: int = 500):
    return drop(case_id, BASE, Verdict.BAD_SOURCE, address=ipaddress.ip_address(address).packed, port=port)


def ipv4_from(raw: bytes) -> bytes:
    return identity_bytes(IDENTITY_IPV4, raw)


NOTIFY_SPI_OVERRUN = struct.pack("!BBH", 0, 9, NAT_DETECTION_SOURCE_IP) + bytes(8)  # SPI Size 9, 8 bytes left

DROP_CASES = [
    drop("empty", b"", Verdict.TRUNCATED),
    drop("truncated_header", BASE[:27], Verdict.TRUNCATED),
    drop("ikev1", set_header(BASE, version=0x10), Verdict.UNSUPPORTED_VERSION),
    drop("major3", set_header(BASE, version=0x30), Verdict.UNSUPPORTED_VERSION),
    drop("length_plus_one", set_header(BASE, length=len(BASE) + 1), Verdict.LENGTH_MISMATCH),
    drop("length_minus_one", set_header(BASE, length=len(BASE) - 1), Verdict.LENGTH_MISMATCH),
    drop("datagram_cut", BASE[:-1], Verdict.LENGTH_MISMATCH),
    drop("response_flag", set_header(BASE, flags=FLAG_INITIATOR | FLAG_RESPONSE), Verdict.RESPONSE),
    drop("initiator_clear", set_header(BASE, flags=0), Verdict.NOT_INITIATOR),
    drop("ispi_zero", set_header(BASE, ispi=bytes(8)), Verdict.INVALID_SPI),
    drop("rspi_set", set_header(BASE, rspi=bytes(7) + b"\x01"), Verdict.INVALID_SPI),
    drop("message_id_set", set_header(BASE, message_id=1), Verdict.INVALID_MESSAGE_ID),
    drop("message_id_high", set_header(BASE, message_id=0x80000000), Verdict.INVALID_MESSAGE_ID),
    drop("ike_auth", ike_auth(b"\x11" * 8), Verdict.SLOW_PATH),
    drop("ike_auth_rspi_zero", ike_auth(bytes(8)), Verdict.INVALID_SPI),
    natt_drop("ike_auth_capture", IKE_AUTH_REQUEST, Verdict.SLOW_PATH),
    drop("exchange_38", set_header(BASE, exchange=38), Verdict.UNSUPPORTED_EXCHANGE),
    drop("exchange_240", set_header(BASE, exchange=240), Verdict.UNSUPPORTED_EXCHANGE),
    drop("exchange_0", set_header(BASE, exchange=0), Verdict.UNSUPPORTED_EXCHANGE),
    drop("payload_length_3", with_payload_length(0, 3), Verdict.MALFORMED),
    drop("payload_length_0", with_payload_length(2, 0), Verdict.MALFORMED),
    drop("payload_overrun", with_payload_length(7, 9), Verdict.MALFORMED),
    drop("payload_underrun", with_payload_length(7, 4), Verdict.MALFORMED),
    drop("trailing_bytes", trailing_bytes(), Verdict.MALFORMED),
    drop("chain_past_end", with_last_next_payload(PAYLOAD_NOTIFY), Verdict.MALFORMED),
    drop("notify_short", with_extra(Chunk(PAYLOAD_NOTIFY, 0, b"\x00\x00\x40")), Verdict.MALFORMED),
    drop("notify_spi_overrun", with_extra(Chunk(PAYLOAD_NOTIFY, 0, NOTIFY_SPI_OVERRUN)), Verdict.MALFORMED),
    drop("critical_unknown", with_extra(Chunk(200, CRITICAL, b"x" * 8)), Verdict.UNSUPPORTED_CRITICAL),
    drop("critical_unknown_50", with_extra(Chunk(50, CRITICAL, b"")), Verdict.UNSUPPORTED_CRITICAL),
    drop("no_nonce", without_nonce(), Verdict.INVALID_NONCE),
    drop("two_nonces", two_nonces(), Verdict.INVALID_NONCE),
    drop("nonce_15", with_nonce(15), Verdict.INVALID_NONCE),
    drop("nonce_257", with_nonce(257), Verdict.INVALID_NONCE),
    drop("nonce_0", with_nonce(0), Verdict.INVALID_NONCE),
    drop("no_redirect_supported", edited(without_notify(REDIRECT_SUPPORTED)), Verdict.REDIRECT_NOT_SUPPORTED),
    drop("from_bad_ipv4_length", with_redirected_from(b"\x01\x05" + bytes(5)), Verdict.INVALID_NOTIFY),
    drop("from_bad_ipv6_length", with_redirected_from(b"\x02\x04" + bytes(4)), Verdict.INVALID_NOTIFY),
    drop("from_length_past_data", with_redirected_from(b"\x01\x08" + bytes(4)), Verdict.INVALID_NOTIFY),
    drop("from_length_short_of_data", with_redirected_from(b"\x01\x04" + bytes(6)), Verdict.INVALID_NOTIFY),
    drop("from_unknown_type", with_redirected_from(b"\x04\x04" + bytes(4)), Verdict.INVALID_NOTIFY),
    drop("from_type_zero", with_redirected_from(b"\x00\x04" + bytes(4)), Verdict.INVALID_NOTIFY),
    drop("from_empty_fqdn", with_redirected_from(b"\x03\x00"), Verdict.INVALID_NOTIFY),
    drop("from_fqdn_space", with_redirected_from(identity_bytes(IDENTITY_FQDN, b"a b")), Verdict.INVALID_NOTIFY),
    drop("from_no_data", with_redirected_from(b""), Verdict.INVALID_NOTIFY),
    drop("from_one_byte", with_redirected_from(b"\x01"), Verdict.INVALID_NOTIFY),
    drop("from_twice", with_redirected_from(ipv4_from(bytes(4)), ipv4_from(bytes(4))), Verdict.INVALID_NOTIFY),
    natt_drop("natt_no_marker", BASE, Verdict.ESP),
    natt_drop("natt_keepalive", KEEPALIVE, Verdict.NAT_KEEPALIVE),
    natt_drop("natt_marker_only", NON_ESP_MARKER, Verdict.TRUNCATED),
    natt_drop("natt_three_bytes", bytes(3), Verdict.TRUNCATED),
    natt_drop("natt_empty", b"", Verdict.TRUNCATED),
    natt_drop("natt_two_ff", b"\xff\xff", Verdict.TRUNCATED),
    natt_drop("natt_marker_short", NON_ESP_MARKER + BASE[:27], Verdict.TRUNCATED),
    natt_drop("natt_port_zero", NON_ESP_MARKER + BASE, Verdict.BAD_SOURCE, port=0),
    source_drop("port_zero", "192.0.2.10", port=0),
    source_drop("source_unspecified", "0.0.0.0"),
    source_drop("source_multicast", "224.0.0.1"),
    source_drop("source_multicast_top", "239.255.255.255"),
    source_drop("source_broadcast", "255.255.255.255"),
    source_drop("source_v6_unspecified", "::"),
    source_drop("source_v6_multicast", "ff02::1"),
]


@pytest.mark.parametrize("datagram, nat_t, address, port, verdict", DROP_CASES)
def test_drop_reason(implementation, datagram, nat_t, address, port, verdict):
    table = implementation.compile_table(MIXED_TABLE)
    result = implementation.process(table, datagram, nat_t, address, port)
    assert result == (verdict, None, NO_GATEWAY)


def accept(case_id: str, datagram: bytes, nat_t: bool = False):
    return pytest.param(datagram, nat_t, id=case_id)


REDIRECT_SUPPORTED_WITH_DATA = Chunk(PAYLOAD_NOTIFY, 0, notify_body(REDIRECT_SUPPORTED, b"junk"))
FROM_FIRST_GATEWAY = Chunk(PAYLOAD_NOTIFY, 0, notify_body(REDIRECTED_FROM, ipv4_from(FIRST_GATEWAY.raw)))

ACCEPTED_CASES = [
    accept("base", BASE),
    accept("natt_marker", NON_ESP_MARKER + BASE, nat_t=True),
    accept("nonce_16", with_nonce(16)),
    accept("nonce_256", with_nonce(256)),
    accept("minor_version", set_header(BASE, version=0x2F)),
    # RFC 7296 section 3.1: reserved flag bits are ignored on receipt.
    accept("version_flag", set_header(BASE, flags=FLAG_INITIATOR | FLAG_VERSION)),
    accept("reserved_flags", set_header(BASE, flags=FLAG_INITIATOR | 0xC7)),
    accept("unknown_noncritical", with_extra(Chunk(200, 0, b"x" * 8))),
    accept("unknown_reserved_bits", with_extra(Chunk(200, 0x7F, b""))),
    # RFC 7296 section 2.5: the critical bit matters only for unknown types.
    accept("known_critical", with_extra(Chunk(43, CRITICAL, b"vendor"))),
    accept("redirect_supported_data", edited(without_notify(REDIRECT_SUPPORTED) + [REDIRECT_SUPPORTED_WITH_DATA])),
    accept("redirected_from", with_redirected_from(ipv4_from(FIRST_GATEWAY.raw))),
    accept("redirected_from_fqdn", with_redirected_from(identity_bytes(IDENTITY_FQDN, b"old.example.net"))),
    accept("redirected_from_v6", with_redirected_from(identity_bytes(IDENTITY_IPV6, V6_GATEWAY.raw))),
    accept("both_notifies", edited(base_chunks()[1] + [FROM_FIRST_GATEWAY])),
]


@pytest.mark.parametrize("datagram, nat_t", ACCEPTED_CASES)
def test_accepted_edit(implementation, datagram, nat_t):
    table = implementation.compile_table(MIXED_TABLE)
    port = 4500 if nat_t else 500
    verdict, reply, gateway = implementation.process(table, datagram, nat_t, CLIENT_V4, port)
    assert verdict == Verdict.REDIRECTED
    message = datagram[4:] if nat_t else datagram
    _, chunks = split_message(message)
    assert gateway == expected_gateway(MIXED_TABLE, CLIENT_V4, message[:8], redirected_from_key(chunks))
    check_redirect(reply, datagram, nat_t, MIXED_TABLE.gateways[gateway].identity)


def test_ipv6_source_redirected(implementation):
    table = implementation.compile_table(MIXED_TABLE)
    verdict, reply, gateway = implementation.process(table, BASE, False, CLIENT_V6, 500)
    assert verdict == Verdict.REDIRECTED
    assert gateway == expected_gateway(MIXED_TABLE, CLIENT_V6, BASE[:8], None)
    check_redirect(reply, BASE, False, MIXED_TABLE.gateways[gateway].identity)


def client_addresses(count: int) -> list[bytes]:
    v4 = [ipaddress.IPv4Address(0x0A000000 + 7919 * i).packed for i in range(count // 2)]
    v6 = [ipaddress.IPv6Address((0x20010DB8 << 96) + 104729 * i).packed for i in range(count - count // 2)]
    return v4 + v6


def test_redirected_from_excluded():
    # RFC 5685 section 3: a client redirected by 192.0.2.1 names it in
    # REDIRECTED_FROM, and sending the client back there would loop.
    datagram = with_redirected_from(identity_bytes(IDENTITY_IPV4, FIRST_GATEWAY.raw))
    chosen = set()
    for address in client_addresses(400):
        verdict, reply, gateway = run_both(PAIR, datagram, False, address, 500)
        assert verdict == Verdict.REDIRECTED
        assert PAIR_TABLE.gateways[gateway].identity == SECOND_GATEWAY
        check_redirect(reply, datagram, False, SECOND_GATEWAY)
        chosen.add(gateway)
    assert chosen == {1}


def test_without_exclusion_both_chosen():
    chosen = {run_both(PAIR, BASE, False, address, 500)[2] for address in client_addresses(400)}
    assert chosen == {0, 1}


def test_redirected_from_capture_excluded():
    # The recorded request to 192.0.2.11 names 192.0.2.1 in REDIRECTED_FROM.
    datagram = REDIRECTED_CAPTURE[0].payload
    for address in client_addresses(200):
        verdict, _, gateway = run_both(PAIR, datagram, False, address, 500)
        assert verdict == Verdict.REDIRECTED
        assert gateway == 1


def test_redirected_from_fqdn_case():
    # DNS names compare without case, and the table names VPN3.Example.NET.
    table = build_table([Gateway(FQDN_GATEWAY), Gateway(SECOND_GATEWAY)], size=1019)
    pair = compile_both(table)
    datagram = with_redirected_from(identity_bytes(IDENTITY_FQDN, b"vpn3.EXAMPLE.net"))
    for address in client_addresses(200):
        verdict, _, gateway = run_both(pair, datagram, False, address, 500)
        assert verdict == Verdict.REDIRECTED
        assert gateway == 1


def test_redirected_from_alias():
    table = build_table([Gateway(FQDN_GATEWAY, aliases=(FQDN_ALIAS,)), Gateway(SECOND_GATEWAY)], size=1019)
    pair = compile_both(table)
    datagram = with_redirected_from(identity_bytes(IDENTITY_IPV4, FQDN_ALIAS.raw))
    for address in client_addresses(200):
        verdict, _, gateway = run_both(pair, datagram, False, address, 500)
        assert verdict == Verdict.REDIRECTED
        assert gateway == 1


def test_redirected_from_only_gateway():
    datagram = with_redirected_from(identity_bytes(IDENTITY_IPV4, FIRST_GATEWAY.raw))
    result = run_both(SINGLE, datagram, False, CLIENT_V4, 500)
    assert result == (Verdict.NO_GATEWAY, None, NO_GATEWAY)


def test_empty_table(implementation):
    table = implementation.compile_table(EMPTY_TABLE)
    result = implementation.process(table, BASE, False, CLIENT_V4, 500)
    assert result == (Verdict.NO_GATEWAY, None, NO_GATEWAY)


def small_request(total_length: int) -> bytes:
    """Build a request of exactly `total_length` bytes: a 16-byte Nonce,
    N(REDIRECT_SUPPORTED) and an unknown non-critical padding payload."""
    header, _ = base_chunks()
    padding = total_length - 28 - 20 - 8 - 4
    assert padding >= 0
    chunks = [
        Chunk(PAYLOAD_NONCE, 0, bytes(range(16))),
        Chunk(PAYLOAD_NOTIFY, 0, notify_body(REDIRECT_SUPPORTED)),
        Chunk(200, 0, bytes(padding)),
    ]
    message = join_message(header, chunks)
    assert len(message) == total_length
    return message


def test_reply_too_long(implementation):
    # The reply: 28-byte header, 8-byte Notify header, 2 + 255 identity
    # octets and the 16-byte nonce = 309 bytes.
    table = implementation.compile_table(LONG_NAME_TABLE)
    result = implementation.process(table, small_request(308), False, CLIENT_V4, 500)
    assert result == (Verdict.REPLY_TOO_LONG, None, NO_GATEWAY)


def test_reply_too_long_natt(implementation):
    # The marker counts on both sides, so the limit is unchanged.
    table = implementation.compile_table(LONG_NAME_TABLE)
    result = implementation.process(table, NON_ESP_MARKER + small_request(308), True, CLIENT_V4, 4500)
    assert result == (Verdict.REPLY_TOO_LONG, None, NO_GATEWAY)


def test_reply_same_length(implementation):
    table = implementation.compile_table(LONG_NAME_TABLE)
    datagram = small_request(309)
    verdict, reply, gateway = implementation.process(table, datagram, False, CLIENT_V4, 500)
    assert verdict == Verdict.REDIRECTED
    assert len(reply) == 309
    check_redirect(reply, datagram, False, LONG_NAME_GATEWAY)


# ---------------------------------------------------------------------------
# process_many (the per-packet work without sockets)
# ---------------------------------------------------------------------------


def test_process_many_counts(implementation):
    table = implementation.compile_table(MIXED_TABLE)
    plain = [d.payload for d in REQUESTS if not d.nat_t]
    # Five of the seven port-500 requests carry REDIRECT_SUPPORTED or
    # REDIRECTED_FROM, but the two noredirsup ones do not.
    assert implementation.process_many(table, plain, False, CLIENT_V4, 500) == 5
    assert implementation.process_many(table, plain * 3, False, CLIENT_V6, 500) == 15
    assert implementation.process_many(table, plain, False, CLIENT_V4, 0) == 0
    assert implementation.process_many(table, [NATT_REQUEST, KEEPALIVE], True, CLIENT_V4, 4500) == 1
    assert implementation.process_many(table, [], False, CLIENT_V4, 500) == 0


PROCESS_MANY_PROBE = """
    from fastredir import _fastpath
    from fastredir.message import GatewayIdentity
    from fastredir.selection import Gateway, build_table

    table = _fastpath.compile_table(build_table([Gateway(GatewayIdentity.from_text("192.0.2.1"))], size=1009))
    try:
        result = _fastpath.process_many(table, [{element}], False, bytes((192, 0, 2, 10)), 500)
    except TypeError:
        print("TypeError")
    else:
        print("returned", result)
"""


@pytest.mark.parametrize("source, element", [("None", None), ("'x' * 300", "x" * 300)], ids=["none", "str"])
def test_process_many_non_bytes(source, element):
    # fallback.process_many raises TypeError for these elements; the C one
    # must not read them as bytes objects.  A child process contains a crash.
    code = textwrap.dedent(PROCESS_MANY_PROBE).format(element=source)
    project = pathlib.Path(__file__).parents[1]
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=project)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "TypeError"
    with pytest.raises(TypeError):
        fallback.process_many(fallback.compile_table(SINGLE_TABLE), [element], False, CLIENT_V4, 500)


# ---------------------------------------------------------------------------
# Determinism and key modes
# ---------------------------------------------------------------------------


def test_retransmit_same_gateway():
    for datagram in REQUESTS:
        first = run_both(MIXED, datagram.payload, datagram.nat_t, datagram.source, datagram.source_port)
        second = run_both(MIXED, datagram.payload, datagram.nat_t, datagram.source, datagram.source_port)
        assert first == second


def with_spi(spi: bytes) -> bytes:
    return set_header(BASE, ispi=spi)


def test_address_mode_ignores_spi():
    gateways = {run_both(MIXED, with_spi(i.to_bytes(8, "big")), False, CLIENT_V4, 500)[2] for i in range(1, 101)}
    assert len(gateways) == 1


def test_address_spi_mode_uses_spi():
    gateways = set()
    for i in range(1, 101):
        spi = (i * 0x9E3779B97F4A7C15 & MASK64).to_bytes(8, "big")
        verdict, _, gateway = run_both(SPI, with_spi(spi), False, CLIENT_V4, 500)
        assert verdict == Verdict.REDIRECTED
        assert gateway == expected_gateway(SPI_TABLE, CLIENT_V4, spi, None)
        gateways.add(gateway)
    assert gateways == {0, 1, 2}


def test_address_spi_retransmit():
    first = run_both(SPI, BASE, False, CLIENT_V6, 500)
    second = run_both(SPI, BASE, False, CLIENT_V6, 500)
    assert first == second


def test_source_port_ignored():
    gateways = {run_both(MIXED, BASE, False, CLIENT_V4, port)[2] for port in (500, 4500, 1024, 65535)}
    assert len(gateways) == 1


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------

SPECIAL_ADDRESSES = [
    bytes(4),
    b"\xff" * 4,
    ipaddress.ip_address("224.0.0.1").packed,
    ipaddress.ip_address("239.1.2.3").packed,
    ipaddress.ip_address("223.255.255.255").packed,
    ipaddress.ip_address("240.0.0.1").packed,
    ipaddress.ip_address("127.0.0.1").packed,
    bytes(16),
    ipaddress.ip_address("ff02::1").packed,
    ipaddress.ip_address("fe80::1").packed,
    ipaddress.ip_address("::1").packed,
    ipaddress.ip_address("::ffff:224.0.0.1").packed,
    CLIENT_V4,
    CLIENT_V6,
]



@st.composite
def addresses(draw):
    """Draw a packed source address, usually one a reply may go to (first
    IPv4 octet 1 to 223, or IPv6 in 2000::/3), so later checks are reached.

    Hypothesis favours zero draws, so a zero selector picks such an address.
    """
    kind = draw(st.integers(0, 9))
    if kind < 4:
        raw = draw(st.binary(min_size=4, max_size=4))
        return bytes((raw[0] % 223 + 1,)) + raw[1:]
    if kind < 7:
        raw = draw(st.binary(min_size=16, max_size=16))
        return bytes((0x20 | raw[0] & 0x1F,)) + raw[1:]
    if kind == 7:
        return draw(st.binary(min_size=4, max_size=4))
    if kind == 8:
        return draw(st.binary(min_size=16, max_size=16))
    return draw(st.sampled_from(SPECIAL_ADDRESSES))


@st.composite
def ports(draw):
    """Draw a source port, 0 about one time in twenty."""
    if draw(st.integers(0, 19)) == 19:
        return 0
    return draw(st.integers(1, 65535))


table_choices = st.sampled_from(TABLES + [(EMPTY_TABLE, EMPTY), (LONG_NAME_TABLE, LONG_NAME)])

# Offsets and sizes of the IKE header fields (RFC 7296 section 3.1).
HEADER_FIELDS = [(0, 8), (8, 8), (16, 1), (17, 1), (18, 1), (19, 1), (20, 4), (24, 4)]


@st.composite
def mutated_requests(draw):
    message = bytearray(message_of(draw(st.sampled_from(REQUESTS))))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "extend", "delete", "field", "payload_length"]))
        if kind == "flip" and message:
            index = draw(st.integers(0, len(message) - 1))
            message[index] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del message[draw(st.integers(0, len(message))) :]
        elif kind == "insert":
            index = draw(st.integers(0, len(message)))
            message[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "extend":
            message += draw(st.binary(min_size=1, max_size=300))
        elif kind == "delete" and message:
            index = draw(st.integers(0, len(message) - 1))
            del message[index : index + draw(st.integers(1, 8))]
        elif kind == "field" and len(message) >= 28:
            offset, size = draw(st.sampled_from(HEADER_FIELDS))
            message[offset : offset + size] = draw(st.binary(min_size=size, max_size=size))
        elif kind == "payload_length" and len(message) >= 32:
            index = draw(st.integers(28, len(message) - 4))
            message[index + 2 : index + 4] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    if len(message) >= 28 and draw(st.booleans()):
        # Fix the header Length so that deeper checks are reached.
        message[24:28] = len(message).to_bytes(4, "big")
    nat_t = draw(st.booleans())
    datagram = bytes(message)
    if nat_t and draw(st.integers(0, 9)) > 0:
        datagram = NON_ESP_MARKER + datagram
    return datagram, nat_t


def check_invariants(datagram: bytes, nat_t: bool, address: bytes, port: int, choice) -> tuple:
    table, pair = choice
    results = [impl.process(t, datagram, nat_t, address, port) for impl, t in zip(IMPLEMENTATIONS, pair)]
    source = f"{address.hex()}:{port}"
    assert results[0] == results[1], f"twins disagree on {datagram.hex()} nat_t={nat_t} source={source}"
    verdict, reply, gateway = results[1]
    assert isinstance(verdict, Verdict)
    event(f"verdict {verdict.name}")
    assert verdict not in (Verdict.OVERSIZE, Verdict.SEND_FAILED, Verdict.SLOW_PATH_FULL)
    if verdict == Verdict.REDIRECTED:
        assert reply is not None
        assert len(reply) <= len(datagram)
        assert gateway < len(table.gateways)
        message = datagram[4:] if nat_t else datagram
        _, chunks = split_message(message)
        assert gateway == expected_gateway(table, address, message[:8], redirected_from_key(chunks))
        check_redirect(reply, datagram, nat_t, table.gateways[gateway].identity)
    else:
        assert reply is None
        assert gateway == NO_GATEWAY
    return results[1]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=mutated_requests(), address=addresses(), port=ports(), choice=table_choices)
def test_mutated_twins_agree(request, address, port, choice):
    datagram, nat_t = request
    check_invariants(datagram, nat_t, address, port, choice)


@settings(max_examples=1500, deadline=None)
@given(
    datagram=st.binary(max_size=400),
    nat_t=st.booleans(),
    address=addresses(),
    port=ports(),
    choice=table_choices,
)
def test_arbitrary_twins_agree(datagram, nat_t, address, port, choice):
    check_invariants(datagram, nat_t, address, port, choice)


@settings(max_examples=1000, deadline=None)
@given(
    header=st.binary(min_size=28, max_size=28),
    version=st.sampled_from([None, 0x20, 0x2F]),
    exchange=st.sampled_from([None, EXCHANGE_IKE_SA_INIT, EXCHANGE_IKE_AUTH]),
    tail=st.binary(max_size=64),
    nat_t=st.booleans(),
    choice=table_choices,
)
def test_header_twins_agree(header, version, exchange, tail, nat_t, choice):
    # An arbitrary header with its Length fixed, and often a version-2
    # IKE_SA_INIT or IKE_AUTH, to get past the first checks.
    message = bytearray(header + tail)
    message[24:28] = len(message).to_bytes(4, "big")
    if version is not None:
        message[17] = version
    if exchange is not None:
        message[18] = exchange
    if nat_t:
        message = NON_ESP_MARKER + message
    check_invariants(bytes(message), nat_t, CLIENT_V4, 500, choice)


def valid_source(address: bytes) -> bool:
    """A source a reply may go to: not unspecified, multicast or the IPv4
    limited broadcast address."""
    if address == bytes(len(address)):
        return False
    if len(address) == 4:
        return address[0] & 0xF0 != 0xE0 and address != b"\xff" * 4
    return address[0] != 0xFF


def redirected_from_identities(table):
    """Identity fields REDIRECTED_FROM may carry: the table's gateways and
    aliases (FQDN case varied by the caller), and others."""
    known = [g.identity for g in table.gateways] + [a for g in table.gateways for a in g.aliases]
    return known + [FIRST_GATEWAY, GatewayIdentity.from_text("other.example.org")]


# REDIRECTED_FROM data that RFC 5685 section 9 does not allow: no data, an
# IPv4 identity of 3 bytes, an IPv6 one of 4, type 5, an empty FQDN, and a
# length beyond the data.
MALFORMED_REDIRECTED_FROM = [b"", b"\x01\x03abc", b"\x02\x04abcd", b"\x05\x01a", b"\x03\x00", b"\x01\x04abc"]


@st.composite
def well_formed_requests(draw, choice):
    """A well-formed IKE_SA_INIT request and the verdict it must get,
    decided from how it was built."""
    table, _ = choice
    chunks = [
        Chunk(PAYLOAD_SA, 0, draw(st.binary(min_size=8, max_size=120))),
        Chunk(PAYLOAD_KE, 0, draw(st.binary(min_size=4, max_size=300))),
        Chunk(PAYLOAD_NONCE, 0, draw(st.binary(min_size=16, max_size=256))),
    ]
    for _ in range(draw(st.integers(0, 4))):
        notify_type = draw(st.sampled_from([NAT_DETECTION_SOURCE_IP, 16389, 16430, 16431, 40000, 9]))
        chunks.append(Chunk(PAYLOAD_NOTIFY, 0, notify_body(notify_type, draw(st.binary(max_size=24)))))
    for _ in range(draw(st.integers(0, 2))):
        unknown = draw(st.sampled_from(UNASSIGNED_PAYLOAD_TYPES))
        chunks.append(Chunk(unknown, draw(st.integers(0, 0x7F)), draw(st.binary(max_size=40))))

    supported = draw(st.booleans())
    if supported:
        data = draw(st.sampled_from([b"", b"\x00"]))
        chunks.append(Chunk(PAYLOAD_NOTIFY, 0, notify_body(REDIRECT_SUPPORTED, data)))
    from_kind = draw(st.sampled_from(["none", "none", "valid", "valid", "malformed", "twice"]))
    excluded = None
    if from_kind in ("valid", "twice"):
        identity = draw(st.sampled_from(redirected_from_identities(table)))
        raw = identity.raw
        if identity.type == IDENTITY_FQDN:
            raw = bytes(c ^ 0x20 if draw(st.booleans()) and chr(c).isalpha() else c for c in raw)
        data = identity_bytes(identity.type, raw)
        excluded = bytes((identity.type,)) + (raw.lower() if identity.type == IDENTITY_FQDN else raw)
        chunks.append(Chunk(PAYLOAD_NOTIFY, 0, notify_body(REDIRECTED_FROM, data)))
        if from_kind == "twice":
            chunks.append(Chunk(PAYLOAD_NOTIFY, 0, notify_body(REDIRECTED_FROM, data)))
    elif from_kind == "malformed":
        data = draw(st.sampled_from(MALFORMED_REDIRECTED_FROM))
        chunks.append(Chunk(PAYLOAD_NOTIFY, 0, notify_body(REDIRECTED_FROM, data)))

    chunks = draw(st.permutations(chunks))
    ispi = draw(st.binary(min_size=8, max_size=8).filter(lambda b: b != bytes(8)))
    version = 0x20 | draw(st.integers(0, 15))
    flags = FLAG_INITIATOR | draw(st.sampled_from([0, FLAG_VERSION, 0x01, 0x47, 0xD7]))
    header = IKE_HEADER.pack(ispi, bytes(8), 0, version, EXCHANGE_IKE_SA_INIT, flags, 0, 0)
    message = join_message(header, chunks)

    if from_kind in ("malformed", "twice"):
        verdict = Verdict.INVALID_NOTIFY
    elif not supported and from_kind == "none":
        verdict = Verdict.REDIRECT_NOT_SUPPORTED
    else:
        verdict = Verdict.REDIRECTED
    return message, verdict, excluded


@st.composite
def well_formed_cases(draw):
    choice = draw(st.sampled_from(TABLES + [(LONG_NAME_TABLE, LONG_NAME)]))
    message, verdict, excluded = draw(well_formed_requests(choice))
    address = draw(st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16)))
    return choice, message, verdict, excluded, address


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=well_formed_cases(), nat_t=st.booleans(), port=st.integers(1, 65535))
def test_well_formed_redirected(case, nat_t, port):
    choice, message, verdict, excluded, address = case
    assume(valid_source(address))
    table, _ = choice
    datagram = NON_ESP_MARKER + message if nat_t else message
    result_verdict, reply, gateway = check_invariants(datagram, nat_t, address, port, choice)

    if verdict == Verdict.REDIRECTED:
        gateway_expected = expected_gateway(table, address, message[:8], excluded)
        if gateway_expected == NO_GATEWAY:
            verdict = Verdict.NO_GATEWAY
        else:
            identity_length = len(table.gateways[gateway_expected].identity.raw)
            reply_length = 28 + 8 + 2 + identity_length + len(nonce_of(message))
            if reply_length > len(message):
                verdict = Verdict.REPLY_TOO_LONG
    assert result_verdict == verdict


def test_redirected_from_fqdn_trailing_dot():
    # A DNS name and the same name with the root's trailing dot are one name.
    table = build_table([Gateway(FQDN_GATEWAY), Gateway(SECOND_GATEWAY)], size=1019)
    pair = compile_both(table)
    datagram = with_redirected_from(identity_bytes(IDENTITY_FQDN, b"vpn3.example.net."))
    for address in client_addresses(200):
        verdict, _, gateway = run_both(pair, datagram, False, address, 500)
        assert verdict == Verdict.REDIRECTED
        assert gateway == 1


@pytest.mark.parametrize("encrypted_type", [46, 53], ids=["SK", "SKF"])
def test_encrypted_payload_malformed(implementation, encrypted_type):
    # RFC 7296 section 3.14: the Encrypted payload is the last one and
    # IKE_SA_INIT carries none.  Here an empty SK or SKF payload comes
    # first and the whole valid chain of the request follows it.
    header, chunks = split_message(BASE)
    datagram = join_message(header, [Chunk(encrypted_type, 0, b""), *chunks])
    table = implementation.compile_table(MIXED_TABLE)
    verdict, reply, _ = implementation.process(table, datagram, False, bytes([192, 0, 2, 10]), 500)
    assert verdict == Verdict.MALFORMED
    assert reply is None
