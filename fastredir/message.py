"""IKEv2 message codec: header, generic payload chain, Nonce and Notify
payloads, and the RFC 5685 redirect notifies.

Sans-I/O: functions take and return bytes.  Parsing is strict about
framing, because every length is checked against what encloses it, and
lenient about content the RFCs say to ignore (reserved bits, the minor
version, Protocol ID when no SPI is present, unknown non-critical
payloads).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterator, Union

from fastredir.exceptions import (
    InvalidLength,
    InvalidValue,
    UnsupportedCriticalPayload,
    UnsupportedVersion,
    UsageError,
)
from fastredir.ikev2 import (
    CRITICAL_BIT,
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    FQDN_MAX_LENGTH,
    GENERIC_PAYLOAD_HEADER_LENGTH,
    IKE_HEADER_LENGTH,
    KNOWN_PAYLOAD_TYPES,
    MAJOR_VERSION,
    ExchangeType,
    GatewayIdentityType,
    NotifyType,
    PayloadType,
)
from fastredir.wire import Reader, Writer

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclass(frozen=True)
class Header:
    """The fixed IKE header (RFC 7296 section 3.1)."""

    initiator_spi: bytes
    responder_spi: bytes
    next_payload: int
    exchange_type: int
    flags: int
    message_id: int
    length: int
    major_version: int = MAJOR_VERSION
    minor_version: int = 0

    @property
    def is_initiator(self) -> bool:
        return bool(self.flags & FLAG_INITIATOR)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)

    @classmethod
    def pull(cls, reader: Reader) -> Header:
        initiator_spi = reader.pull_bytes(8, "the initiator SPI")
        responder_spi = reader.pull_bytes(8, "the responder SPI")
        next_payload = reader.pull_uint8("the next payload type")
        version = reader.pull_uint8("the version")
        exchange_type = reader.pull_uint8("the exchange type")
        flags = reader.pull_uint8("the flags")
        message_id = reader.pull_uint32("the message ID")
        length = reader.pull_uint32("the length")
        return cls(
            initiator_spi=initiator_spi,
            responder_spi=responder_spi,
            next_payload=next_payload,
            exchange_type=exchange_type,
            flags=flags,
            message_id=message_id,
            length=length,
            major_version=version >> 4,
            minor_version=version & 0x0F,
        )

    def push(self, writer: Writer) -> None:
        if len(self.initiator_spi) != 8 or len(self.responder_spi) != 8:
            raise UsageError("IKE SPIs are 8 bytes each")
        writer.push_bytes(self.initiator_spi)
        writer.push_bytes(self.responder_spi)
        writer.push_uint8(self.next_payload)
        writer.push_uint8((self.major_version << 4) | self.minor_version)
        writer.push_uint8(self.exchange_type)
        writer.push_uint8(self.flags)
        writer.push_uint32(self.message_id)
        writer.push_uint32(self.length)


ENCRYPTED_PAYLOADS = frozenset({PayloadType.SK, PayloadType.SKF})


@dataclass(frozen=True)
class Payload:
    """One payload of the chain: its type, critical bit and body (the bytes
    after the 4-byte generic payload header, RFC 7296 section 3.2).

    `inner_next` is the Next Payload field of an SK or SKF payload, which
    names the first payload inside the encryption (RFC 7296 section 3.14,
    RFC 7383 section 2.5); it is 0 for every other payload.
    """

    type: int
    body: bytes
    critical: bool = False
    inner_next: int = 0


@dataclass(frozen=True)
class Notify:
    """A Notify payload body (RFC 7296 section 3.10)."""

    type: int
    data: bytes = b""
    protocol_id: int = 0
    spi: bytes = b""

    @classmethod
    def decode(cls, body: bytes) -> Notify:
        reader = Reader(body, what="Notify payload")
        protocol_id = reader.pull_uint8("the Protocol ID")
        spi_size = reader.pull_uint8("the SPI Size")
        notify_type = reader.pull_uint16("the Notify Message Type")
        spi = reader.pull_bytes(spi_size, "the SPI")
        return cls(type=notify_type, data=reader.pull_rest(), protocol_id=protocol_id, spi=spi)

    def encode(self) -> bytes:
        if len(self.spi) > 255:
            raise UsageError(f"a Notify SPI is at most 255 bytes, not {len(self.spi)}")
        writer = Writer()
        writer.push_uint8(self.protocol_id)
        writer.push_uint8(len(self.spi))
        writer.push_uint16(self.type)
        writer.push_bytes(self.spi)
        writer.push_bytes(self.data)
        return writer.getvalue()

    def to_payload(self) -> Payload:
        return Payload(PayloadType.NOTIFY, self.encode())


def fqdn_problem(raw: bytes) -> str | None:
    """Return what makes `raw` invalid as an FQDN gateway identity, or None.

    RFC 5685 section 9: no terminators, and the length fits one octet.
    Requiring printable ASCII also keeps control characters out of logs
    and terminals.
    """
    if not 1 <= len(raw) <= FQDN_MAX_LENGTH:
        return f"an FQDN gateway identity has 1 to 255 bytes, not {len(raw)}"
    if any(b < 0x21 or b > 0x7E for b in raw):
        return f"FQDN gateway identity contains a byte outside printable ASCII: {raw!r}"
    return None


def _decode_fqdn(raw: bytes) -> str:
    problem = fqdn_problem(raw)
    if problem is None:
        return raw.decode("ascii")
    if len(raw) == 0:
        raise InvalidLength(problem)
    raise InvalidValue(problem)


@dataclass(frozen=True)
class GatewayIdentity:
    """A gateway named by IPv4 address, IPv6 address or FQDN (RFC 5685
    section 9, the identity fields of REDIRECT and REDIRECTED_FROM)."""

    type: GatewayIdentityType
    value: Address | str

    @classmethod
    def from_text(cls, text: str) -> GatewayIdentity:
        """Make an identity from an address literal or a host name.

        Raises UsageError for a name that is not printable ASCII of 1 to
        255 bytes (an internationalized name must be given as A-labels).
        """
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raw = text.encode("utf-8")
            problem = fqdn_problem(raw)
            if problem is not None:
                raise UsageError(problem) from None
            return cls(GatewayIdentityType.FQDN, text)
        return cls.from_address(address)

    @classmethod
    def from_address(cls, address: Address) -> GatewayIdentity:
        if address.version == 4:
            return cls(GatewayIdentityType.IPV4, address)
        return cls(GatewayIdentityType.IPV6, address)

    @property
    def raw(self) -> bytes:
        """The identity field itself, without type and length octets."""
        if self.type == GatewayIdentityType.FQDN:
            return str(self.value).encode("utf-8")
        return self.value.packed  # type: ignore[union-attr]

    def encode(self) -> bytes:
        """Return GW Ident Type, GW Ident Len and the identity."""
        if self.type == GatewayIdentityType.FQDN:
            raw = str(self.value).encode("utf-8")
            problem = fqdn_problem(raw)
            if problem is not None:
                raise UsageError(problem)
        else:
            raw = self.raw
        return bytes((self.type, len(raw))) + raw

    @classmethod
    def pull(cls, reader: Reader) -> GatewayIdentity:
        ident_type = reader.pull_uint8("the gateway identity type")
        ident_length = reader.pull_uint8("the gateway identity length")
        raw = reader.pull_bytes(ident_length, "the gateway identity")
        if ident_type == GatewayIdentityType.IPV4:
            if ident_length != 4:
                raise InvalidLength(f"an IPv4 gateway identity has 4 bytes, not {ident_length}")
            return cls(GatewayIdentityType.IPV4, ipaddress.IPv4Address(raw))
        if ident_type == GatewayIdentityType.IPV6:
            if ident_length != 16:
                raise InvalidLength(f"an IPv6 gateway identity has 16 bytes, not {ident_length}")
            return cls(GatewayIdentityType.IPV6, ipaddress.IPv6Address(raw))
        if ident_type == GatewayIdentityType.FQDN:
            return cls(GatewayIdentityType.FQDN, _decode_fqdn(raw))
        raise InvalidValue(f"unknown gateway identity type {ident_type}")

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Redirect:
    """The data of a REDIRECT notify (RFC 5685 section 9.2).

    `nonce` is the initiator's Ni data in an IKE_SA_INIT response and empty
    in IKE_AUTH and INFORMATIONAL exchanges.
    """

    gateway: GatewayIdentity
    nonce: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Redirect:
        reader = Reader(data, what="REDIRECT notify data")
        gateway = GatewayIdentity.pull(reader)
        return cls(gateway, reader.pull_rest())

    def encode(self) -> bytes:
        return self.gateway.encode() + self.nonce

    def to_notify(self) -> Notify:
        return Notify(NotifyType.REDIRECT, self.encode())


def decode_redirected_from(data: bytes) -> GatewayIdentity:
    """Decode the data of a REDIRECTED_FROM notify (RFC 5685 section 9.3)."""
    reader = Reader(data, what="REDIRECTED_FROM notify data")
    gateway = GatewayIdentity.pull(reader)
    reader.expect_end()
    return gateway


def encode_redirected_from(gateway: GatewayIdentity) -> bytes:
    return gateway.encode()


@dataclass
class Message:
    """An IKEv2 message: the header and its payloads in order.

    Payloads of an SK (encrypted) payload stay inside its body; this codec
    does not decrypt.
    """

    header: Header
    payloads: list[Payload] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> Message:
        """Parse a whole datagram (without any non-ESP marker).

        Raises a `PeerError` subclass that names the fault.
        """
        reader = Reader(data, what="IKE message")
        header = Header.pull(reader)
        if header.major_version != MAJOR_VERSION:
            raise UnsupportedVersion(f"IKE major version {header.major_version}, expected 2")
        if header.length != len(data):
            raise InvalidLength(
                f"IKE header length {header.length} does not match the message length {len(data)}"
            )
        return cls(header, list(_pull_payload_chain(reader, header.next_payload)))

    def serialize(self) -> bytes:
        """Encode the message, filling in the next-payload links and the length."""
        writer = Writer()
        first = self.payloads[0].type if self.payloads else PayloadType.NONE
        header = Header(
            initiator_spi=self.header.initiator_spi,
            responder_spi=self.header.responder_spi,
            next_payload=first,
            exchange_type=self.header.exchange_type,
            flags=self.header.flags,
            message_id=self.header.message_id,
            length=0,
            major_version=self.header.major_version,
            minor_version=self.header.minor_version,
        )
        header.push(writer)
        for index, payload in enumerate(self.payloads):
            if index + 1 < len(self.payloads):
                following = self.payloads[index + 1].type
            else:
                following = payload.inner_next
            length = GENERIC_PAYLOAD_HEADER_LENGTH + len(payload.body)
            if length > 0xFFFF:
                raise UsageError(f"payload of {length} bytes does not fit the 16-bit length field")
            writer.push_uint8(following)
            writer.push_uint8(CRITICAL_BIT if payload.critical else 0)
            writer.push_uint16(length)
            writer.push_bytes(payload.body)
        writer.patch_uint32(24, len(writer))
        return writer.getvalue()

    def notifies(self) -> Iterator[Notify]:
        for payload in self.payloads:
            if payload.type == PayloadType.NOTIFY:
                yield Notify.decode(payload.body)

    def find_notify(self, notify_type: int) -> Notify | None:
        return next((n for n in self.notifies() if n.type == notify_type), None)

    def nonces(self) -> list[bytes]:
        return [p.body for p in self.payloads if p.type == PayloadType.NONCE]


def _pull_payload_chain(reader: Reader, next_payload: int) -> Iterator[Payload]:
    while next_payload != PayloadType.NONE:
        start = reader.position
        payload_type = next_payload
        next_payload = reader.pull_uint8("the next payload type")
        critical = bool(reader.pull_uint8("the critical bit") & CRITICAL_BIT)
        length = reader.pull_uint16("the payload length")
        if length < GENERIC_PAYLOAD_HEADER_LENGTH:
            raise InvalidLength(f"payload length {length} is less than 4", offset=start)
        if length - GENERIC_PAYLOAD_HEADER_LENGTH > reader.remaining:
            raise InvalidLength(
                f"payload length {length} runs past the end of the message", offset=start
            )
        if critical and payload_type not in KNOWN_PAYLOAD_TYPES:
            raise UnsupportedCriticalPayload(
                f"unknown payload type {payload_type} has the critical bit set", offset=start
            )
        body = reader.sub_reader(length - GENERIC_PAYLOAD_HEADER_LENGTH, "payload").pull_rest()
        if payload_type in ENCRYPTED_PAYLOADS:
            # An SK or SKF payload is the last one in the clear; its Next
            # Payload names the first payload inside the encryption.
            yield Payload(payload_type, body, critical, inner_next=next_payload)
            break
        yield Payload(payload_type, body, critical)
    reader.expect_end()


def build_message(
    *,
    initiator_spi: bytes,
    responder_spi: bytes,
    exchange_type: int,
    flags: int,
    message_id: int,
    payloads: list[Payload],
) -> bytes:
    """Encode a message from its header fields and payloads."""
    header = Header(initiator_spi, responder_spi, 0, exchange_type, flags, message_id, 0)
    return Message(header, payloads).serialize()


def build_redirect_response(request: Message, gateway: GatewayIdentity) -> bytes:
    """Build the IKE_SA_INIT response carrying N(REDIRECT) for `request`
    (RFC 5685 section 3): initiator SPI copied, responder SPI zero, Message
    ID zero, the request's Ni echoed in the notify data."""
    nonces = request.nonces()
    if len(nonces) != 1:
        raise UsageError(f"the request must carry exactly one Nonce, not {len(nonces)}")
    return build_message(
        initiator_spi=request.header.initiator_spi,
        responder_spi=bytes(8),
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=FLAG_RESPONSE,
        message_id=0,
        payloads=[Redirect(gateway, nonces[0]).to_notify().to_payload()],
    )
