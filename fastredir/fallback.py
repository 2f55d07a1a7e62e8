"""The pure-Python fast path: the reference twin of `_fastpath.pyx`.

`process()` decides what to do with one datagram and builds the REDIRECT.
The Cython module implements the same contract on raw buffers; tests feed
both the same bytes and require the same verdict and the same reply.
Checks run in a fixed order (framing, header, payload chain, content,
selection), so both report the same verdict for a message with several
faults.
"""

from __future__ import annotations

import ipaddress
import struct

from fastredir.ikev2 import (
    CRITICAL_BIT,
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    FQDN_MAX_LENGTH,
    IKE_HEADER_LENGTH,
    KNOWN_PAYLOAD_TYPES,
    MAJOR_VERSION,
    NONCE_MAX_LENGTH,
    NONCE_MIN_LENGTH,
    NON_ESP_MARKER,
    ExchangeType,
    GatewayIdentityType,
    NotifyType,
    PayloadType,
)
from fastredir.selection import (
    ANYCAST,
    NO_GATEWAY,
    ROOM,
    USABLE,
    GatewayState,
    GatewayTable,
    KeyMode,
    client_hash,
    normalize_fqdn,
)
from fastredir.verdict import Verdict

IMPLEMENTATION = "python"

# Exchanges handed to the Python slow path rather than dropped.
SLOW_PATH_EXCHANGES = frozenset(
    {
        ExchangeType.IKE_AUTH,
        ExchangeType.CREATE_CHILD_SA,
        ExchangeType.INFORMATIONAL,
        ExchangeType.IKE_INTERMEDIATE,
        ExchangeType.IKE_FOLLOWUP_KE,
    }
)

_ZERO_SPI = bytes(8)
_HEADER = struct.Struct("!8s8sBBBBII")
_REDIRECT_FIXED = struct.Struct("!BBHBBH")  # generic header + notify header


class CompiledTable:
    """A `GatewayTable` prepared for `process()`."""

    __slots__ = (
        "source",
        "size",
        "seed",
        "key_mode",
        "slots",
        "alternates",
        "identities",
        "exclusions",
        "counter_ids",
        "flags",
        "scores",
        "spares",
        "overflow_least_loaded",
    )

    def __init__(self, table: GatewayTable) -> None:
        self.source = table
        self.size = table.size
        self.seed = table.seed
        self.key_mode = table.key_mode
        self.slots = [table.gateway_at(i) for i in range(table.size)]
        self.alternates = [table.alternate_at(i) for i in range(table.size)]
        self.identities = table.encoded_identities()
        self.exclusions = dict(table.exclusions)
        self.counter_ids = table.counter_ids()
        self.update_state(table.current_state())

    def update_state(self, state: GatewayState) -> None:
        """Swap in new gateway flags and scores (same gateways, same order)."""
        if len(state.flags) != len(self.identities):
            raise ValueError(f"state for {len(state.flags)} gateways, table has {len(self.identities)}")
        self.flags = state.flags
        self.scores = state.scores
        self.spares = state.spares
        self.overflow_least_loaded = state.overflow_least_loaded


def compile_table(table: GatewayTable) -> CompiledTable:
    return CompiledTable(table)


def is_reply_address_valid(address: bytes, port: int) -> bool:
    """Tell whether a reply may go to `address`:`port` (the request's
    source): not port 0, unspecified, multicast or limited broadcast."""
    if port == 0:
        return False
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified or ip.is_multicast:
        return False
    return address != b"\xff\xff\xff\xff"


def _pull_redirected_from(data: bytes) -> bytes | None:
    """Return the exclusion key named by REDIRECTED_FROM data, or None
    when the data is malformed."""
    if len(data) < 2 or data[1] + 2 != len(data):
        return None
    ident_type, length = data[0], data[1]
    raw = data[2:]
    if ident_type == GatewayIdentityType.IPV4:
        return bytes((ident_type,)) + raw if length == 4 else None
    if ident_type == GatewayIdentityType.IPV6:
        return bytes((ident_type,)) + raw if length == 16 else None
    if ident_type == GatewayIdentityType.FQDN:
        if length == 0 or any(b < 0x21 or b > 0x7E for b in raw):
            return None
        return bytes((ident_type,)) + normalize_fqdn(raw)
    return None


def _classify_header(message: bytes) -> Verdict | None:
    if len(message) < IKE_HEADER_LENGTH:
        return Verdict.TRUNCATED
    _, rspi, _, version, exchange, flags, message_id, length = _HEADER.unpack_from(message)
    ispi = message[:8]
    if version >> 4 != MAJOR_VERSION:
        return Verdict.UNSUPPORTED_VERSION
    if length != len(message):
        return Verdict.LENGTH_MISMATCH
    if exchange != ExchangeType.IKE_SA_INIT:
        if exchange in SLOW_PATH_EXCHANGES:
            return Verdict.SLOW_PATH if rspi != _ZERO_SPI else Verdict.INVALID_SPI
        return Verdict.UNSUPPORTED_EXCHANGE
    if flags & FLAG_RESPONSE:
        return Verdict.RESPONSE
    if not flags & FLAG_INITIATOR:
        return Verdict.NOT_INITIATOR
    if ispi == _ZERO_SPI or rspi != _ZERO_SPI:
        return Verdict.INVALID_SPI
    if message_id != 0:
        return Verdict.INVALID_MESSAGE_ID
    return None


class _Scan:
    """What the payload walk found in an IKE_SA_INIT request."""

    __slots__ = ("nonce", "nonce_count", "supported", "excluded_key", "from_count", "from_valid")

    def __init__(self) -> None:
        self.nonce = b""
        self.nonce_count = 0
        self.supported = False
        self.excluded_key: bytes | None = None
        self.from_count = 0
        self.from_valid = True


def _scan_notify(body: bytes, scan: _Scan) -> bool:
    """Record a Notify payload body; return False when it is malformed."""
    if len(body) < 4 or 4 + body[1] > len(body):
        return False
    notify_type = (body[2] << 8) | body[3]
    data = body[4 + body[1] :]
    if notify_type == NotifyType.REDIRECT_SUPPORTED:
        # RFC 5685 section 9.1 defines no data; any sent is ignored.
        scan.supported = True
    elif notify_type == NotifyType.REDIRECTED_FROM:
        scan.from_count += 1
        scan.excluded_key = _pull_redirected_from(data)
        if scan.excluded_key is None:
            scan.from_valid = False
    return True


def _scan_payloads(message: bytes) -> tuple[Verdict | None, _Scan]:
    scan = _Scan()
    next_payload = message[16]
    position = IKE_HEADER_LENGTH
    end = len(message)
    while next_payload != PayloadType.NONE:
        if end - position < 4:
            return Verdict.MALFORMED, scan
        payload_type = next_payload
        next_payload = message[position]
        critical = message[position + 1] & CRITICAL_BIT
        length = (message[position + 2] << 8) | message[position + 3]
        if length < 4 or length > end - position:
            return Verdict.MALFORMED, scan
        body = message[position + 4 : position + length]
        position += length
        if payload_type == PayloadType.NONCE:
            scan.nonce_count += 1
            scan.nonce = body
        elif payload_type == PayloadType.NOTIFY:
            if not _scan_notify(body, scan):
                return Verdict.MALFORMED, scan
        elif payload_type in (PayloadType.SK, PayloadType.SKF):
            # RFC 7296 section 3.14: nothing of IKE_SA_INIT is encrypted.
            return Verdict.MALFORMED, scan
        elif payload_type not in KNOWN_PAYLOAD_TYPES and critical:
            return Verdict.UNSUPPORTED_CRITICAL, scan
    if position != end:
        return Verdict.MALFORMED, scan
    return None, scan


def _check_content(scan: _Scan) -> Verdict | None:
    if scan.nonce_count != 1 or not NONCE_MIN_LENGTH <= len(scan.nonce) <= NONCE_MAX_LENGTH:
        return Verdict.INVALID_NONCE
    if scan.from_count > 1 or not scan.from_valid:
        return Verdict.INVALID_NOTIFY
    if not scan.supported and scan.from_count == 0:
        return Verdict.REDIRECT_NOT_SUPPORTED
    return None


def _may_take(table: CompiledTable, gateway: int, excluded: int, unicast_only: bool, need_room: bool) -> bool:
    if gateway == NO_GATEWAY or gateway == excluded:
        return False
    flags = table.flags[gateway]
    if not flags & USABLE or (unicast_only and flags & ANYCAST):
        return False
    return bool(flags & ROOM) or not need_room


def select_gateway(
    table: CompiledTable,
    client_address: bytes,
    initiator_spi: bytes,
    excluded_key: bytes | None,
    unicast_only: bool = False,
) -> tuple[Verdict, int]:
    """Choose the gateway for a client.

    The client's slot offers two candidates, the slot's gateway and its
    alternate; of those that may take the client the less loaded wins,
    the slot's own on a tie.  When neither may, the least-loaded spare
    with room does, and when no usable gateway has room the overflow
    action decides.  Returns (REDIRECTED, REDIRECTED_OVERFLOW, ALL_FULL or
    NO_GATEWAY, gateway index or NO_GATEWAY).
    """
    if table.size == 0:
        return Verdict.NO_GATEWAY, NO_GATEWAY
    key = client_address
    if table.key_mode == KeyMode.ADDRESS_SPI:
        key += initiator_spi
    slot = client_hash(key, table.seed) % table.size
    excluded = NO_GATEWAY if excluded_key is None else table.exclusions.get(excluded_key, NO_GATEWAY)

    first, second = table.slots[slot], table.alternates[slot]
    first_ok = _may_take(table, first, excluded, unicast_only, True)
    second_ok = _may_take(table, second, excluded, unicast_only, True)
    if first_ok and second_ok:
        return Verdict.REDIRECTED, second if table.scores[second] < table.scores[first] else first
    if first_ok or second_ok:
        return Verdict.REDIRECTED, first if first_ok else second

    spares = table.spares[1 if unicast_only else 0]
    for spare in spares[:2]:
        if _may_take(table, spare, excluded, unicast_only, True):
            return Verdict.REDIRECTED, spare
    usable = [g for g in spares[2:] if _may_take(table, g, excluded, unicast_only, False)]
    if not usable:
        return Verdict.NO_GATEWAY, NO_GATEWAY
    if table.overflow_least_loaded:
        return Verdict.REDIRECTED_OVERFLOW, usable[0]
    return Verdict.ALL_FULL, NO_GATEWAY


def build_redirect(initiator_spi: bytes, identity: bytes, nonce: bytes) -> bytes:
    """Build the IKE_SA_INIT response carrying only N(REDIRECT)
    (RFC 5685 section 3), `identity` being type, length and value."""
    notify_length = 8 + len(identity) + len(nonce)
    total = IKE_HEADER_LENGTH + notify_length
    header = _HEADER.pack(
        initiator_spi,
        _ZERO_SPI,
        PayloadType.NOTIFY,
        MAJOR_VERSION << 4,
        ExchangeType.IKE_SA_INIT,
        FLAG_RESPONSE,
        0,
        total,
    )
    notify = _REDIRECT_FIXED.pack(0, 0, notify_length, 0, 0, NotifyType.REDIRECT)
    return header + notify + identity + nonce


def process(
    table: CompiledTable,
    datagram: bytes,
    nat_t: bool,
    client_address: bytes,
    client_port: int,
    unicast_only: bool = False,
) -> tuple[Verdict, bytes | None, int]:
    """Decide what to do with one datagram received from
    `client_address`:`client_port` (a packed 4- or 16-byte address).
    `unicast_only` is set for a datagram that reached an anycast listener:
    no anycast gateway may be chosen then.

    Returns (verdict, reply, gateway index).  The reply, including the
    non-ESP marker when `nat_t` is set, is present only for
    REDIRECTED and REDIRECTED_OVERFLOW; the gateway index is NO_GATEWAY
    otherwise.
    """
    if len(client_address) not in (4, 16):
        raise ValueError("client_address must be a packed IPv4 or IPv6 address")
    if not 0 <= client_port <= 0xFFFF:
        raise ValueError(f"client_port must be 0 to 65535, not {client_port}")
    message = datagram
    if nat_t:
        if datagram == b"\xff":
            return Verdict.NAT_KEEPALIVE, None, NO_GATEWAY
        if len(datagram) < 4:
            return Verdict.TRUNCATED, None, NO_GATEWAY
        if datagram[:4] != NON_ESP_MARKER:
            return Verdict.ESP, None, NO_GATEWAY
        message = datagram[4:]

    if not is_reply_address_valid(client_address, client_port):
        return Verdict.BAD_SOURCE, None, NO_GATEWAY

    verdict = _classify_header(message)
    if verdict is None:
        verdict, scan = _scan_payloads(message)
        if verdict is None:
            verdict = _check_content(scan)
    if verdict is not None:
        return verdict, None, NO_GATEWAY

    initiator_spi = message[:8]
    verdict, gateway = select_gateway(table, client_address, initiator_spi, scan.excluded_key, unicast_only)
    if gateway == NO_GATEWAY:
        return verdict, None, NO_GATEWAY
    reply = build_redirect(initiator_spi, table.identities[gateway], scan.nonce)
    if len(reply) > len(message):
        return Verdict.REPLY_TOO_LONG, None, NO_GATEWAY
    if nat_t:
        reply = NON_ESP_MARKER + reply
    return verdict, reply, gateway


def process_many(
    table: CompiledTable, datagrams: list[bytes], nat_t: bool, client_address: bytes, client_port: int
) -> int:
    """Decide about each datagram and return how many were redirected;
    the twin of the Cython process_many() used by microbenchmarks."""
    redirected = 0
    for datagram in datagrams:
        if process(table, datagram, nat_t, client_address, client_port)[0].is_answer:
            redirected += 1
    return redirected
