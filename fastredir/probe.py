"""`fastredir probe`: send one real IKE_SA_INIT request and decode the answer.

`build_request()` and `interpret_answer()` are sans-I/O; `run_probe()`
does the sending, with retransmissions, over a UDP socket.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fastredir.exceptions import PeerError
from fastredir.hostname import is_host_name
from fastredir.ikev2 import (
    FLAG_INITIATOR,
    GatewayIdentityType,
    NAT_T_PORT,
    NON_ESP_MARKER,
    ExchangeType,
    NotifyType,
    PayloadType,
    name_of,
)
from fastredir.message import GatewayIdentity, Header, Message, Notify, Payload, Redirect, build_message
from fastredir.wire import Writer

# One IKE proposal: AES-CBC-128, PRF-HMAC-SHA2-256, HMAC-SHA2-256-128 and
# Curve25519, the set strongSwan and libreswan both accept by default.
_ENCR, _PRF, _INTEG, _KE = 1, 2, 3, 4
_TRANSFORMS = (
    (_ENCR, 12, b"\x80\x0e\x00\x80"),  # ENCR_AES_CBC, key length 128
    (_PRF, 5, b""),  # PRF_HMAC_SHA2_256
    (_INTEG, 12, b""),  # AUTH_HMAC_SHA2_256_128
    (_KE, 31, b""),  # Curve25519
)
_CURVE25519 = 31
MAX_ERRORS = 10  # problems kept for the report; more are only counted
_PROTOCOL_IKE = 1


def encode_sa_payload() -> bytes:
    """Return the SA payload body with the one proposal above (RFC 7296
    section 3.3)."""
    transforms = Writer()
    for index, (kind, transform_id, attributes) in enumerate(_TRANSFORMS):
        transforms.push_uint8(0 if index == len(_TRANSFORMS) - 1 else 3)
        transforms.push_uint8(0)
        transforms.push_uint16(8 + len(attributes))
        transforms.push_uint8(kind)
        transforms.push_uint8(0)
        transforms.push_uint16(transform_id)
        transforms.push_bytes(attributes)
    body = transforms.getvalue()
    proposal = Writer()
    proposal.push_uint8(0)  # last proposal
    proposal.push_uint8(0)
    proposal.push_uint16(8 + len(body))
    proposal.push_uint8(1)  # proposal number
    proposal.push_uint8(_PROTOCOL_IKE)
    proposal.push_uint8(0)  # SPI size
    proposal.push_uint8(len(_TRANSFORMS))
    proposal.push_bytes(body)
    return proposal.getvalue()


def nat_detection_hash(initiator_spi: bytes, address: str, port: int) -> bytes:
    """RFC 7296 section 2.23: SHA-1(SPIi | SPIr | IP address | port)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    data = initiator_spi + bytes(8) + packed + port.to_bytes(2, "big")
    return hashlib.sha1(data, usedforsecurity=False).digest()


@dataclass(frozen=True)
class ProbeRequest:
    initiator_spi: bytes
    nonce: bytes
    datagram: bytes
    nat_t: bool


def build_request(
    *,
    initiator_spi: bytes,
    nonce: bytes,
    public_key: bytes,
    local: tuple[str, int],
    remote: tuple[str, int],
    nat_t: bool = False,
    redirect_supported: bool = True,
    redirected_from: GatewayIdentity | None = None,
) -> ProbeRequest:
    """Build an IKE_SA_INIT request as a redirect-capable client sends it."""
    payloads = [
        Payload(PayloadType.SA, encode_sa_payload()),
        Payload(PayloadType.KE, _CURVE25519.to_bytes(2, "big") + bytes(2) + public_key),
        Payload(PayloadType.NONCE, nonce),
        Notify(NotifyType.NAT_DETECTION_SOURCE_IP, nat_detection_hash(initiator_spi, *local)).to_payload(),
        Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_detection_hash(initiator_spi, *remote)).to_payload(),
    ]
    if redirected_from is not None:
        payloads.append(Notify(NotifyType.REDIRECTED_FROM, redirected_from.encode()).to_payload())
    elif redirect_supported:
        payloads.append(Notify(NotifyType.REDIRECT_SUPPORTED).to_payload())
    message = build_message(
        initiator_spi=initiator_spi,
        responder_spi=bytes(8),
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=FLAG_INITIATOR,
        message_id=0,
        payloads=payloads,
    )
    datagram = NON_ESP_MARKER + message if nat_t else message
    return ProbeRequest(initiator_spi, nonce, datagram, nat_t)


@dataclass
class Answer:
    """What a responder sent back to a probe."""

    exchange_type: int
    responder_spi: bytes
    message_id: int
    payload_types: list[int]
    notify_types: list[int]
    redirect: Redirect | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def is_valid_redirect(self) -> bool:
        return self.redirect is not None and not self.problems


def interpret_answer(request: ProbeRequest, datagram: bytes) -> Answer | None:
    """Decode an answer to `request`.

    Returns None for a datagram that is not an IKE response to this request
    (another SPI, no response flag); raises PeerError for one that claims
    to be but cannot be parsed.
    """
    if request.nat_t:
        if datagram[:4] != NON_ESP_MARKER:
            return None
        datagram = datagram[4:]
    if len(datagram) < 28 or datagram[:8] != request.initiator_spi:
        return None
    message = Message.parse(datagram)
    header = message.header
    if not header.is_response:
        return None
    notifies = list(message.notifies())
    answer = Answer(
        exchange_type=header.exchange_type,
        responder_spi=header.responder_spi,
        message_id=header.message_id,
        payload_types=[p.type for p in message.payloads],
        notify_types=[n.type for n in notifies],
    )
    redirects = [n for n in notifies if n.type == NotifyType.REDIRECT]
    if not redirects:
        return answer
    answer.redirect = Redirect.decode(redirects[0].data)
    _check_redirect(answer, header, request.nonce, len(redirects), len(message.payloads))
    return answer


def _check_redirect(
    answer: Answer, header: Header, nonce: bytes, redirect_count: int, payload_count: int
) -> None:
    # RFC 5685 section 3: the IKE_SA_INIT REDIRECT echoes Ni, with
    # responder SPI zero and Message ID zero; RFC 7296 section 3.1: the
    # responder clears the Initiator flag.
    exchange_type = header.exchange_type
    if header.is_initiator:
        answer.problems.append("the Initiator flag is set in a response from the responder")
    gateway = answer.redirect.gateway if answer.redirect is not None else None
    if gateway is not None:
        problem = gateway_problem(gateway)
        if problem:
            answer.problems.append(problem)
    if exchange_type != ExchangeType.IKE_SA_INIT:
        answer.problems.append(f"REDIRECT in {name_of(ExchangeType, exchange_type)}, not IKE_SA_INIT")
    if answer.redirect is not None and answer.redirect.nonce != nonce:
        answer.problems.append("the nonce data differs from the Ni that was sent")
    if answer.responder_spi != bytes(8):
        answer.problems.append(f"responder SPI is {answer.responder_spi.hex()}, not zero")
    if answer.message_id != 0:
        answer.problems.append(f"message ID is {answer.message_id}, not zero")
    if redirect_count != 1 or payload_count != 1:
        answer.problems.append(f"{payload_count} payloads with {redirect_count} REDIRECT notifies, expected only one")


def gateway_problem(gateway: GatewayIdentity) -> str | None:
    """Return why a client cannot use `gateway` as a REDIRECT target, or None."""
    if gateway.type == GatewayIdentityType.FQDN:
        if not is_host_name(str(gateway.value)):
            return f"the gateway {gateway.value!r} is not a host name"
        return None
    address = gateway.value
    if address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
        return f"the gateway {address} is not a unicast address"
    return None


@dataclass
class ProbeOutcome:
    request: ProbeRequest
    remote: tuple[str, int]
    attempts: int
    answer: Answer | None = None
    elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first MAX_ERRORS problems
    error_count: int = 0  # all problems, including those not kept

    def note_error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)


def new_request(local: tuple[str, int], remote: tuple[str, int], **options) -> ProbeRequest:
    """Build a request with a fresh SPI, nonce and Curve25519 key."""
    public_key = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return build_request(
        initiator_spi=os.urandom(8),
        nonce=os.urandom(32),
        public_key=public_key,
        local=local,
        remote=remote,
        **options,
    )


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """Return (family, sockaddr) of the first UDP address of `host`."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def run_probe(
    host: str,
    port: int,
    *,
    timeout: float = 2.0,
    attempts: int = 3,
    nat_t: bool | None = None,
    redirect_supported: bool = True,
    redirected_from: GatewayIdentity | None = None,
    source: str | None = None,
) -> ProbeOutcome:
    """Send the request up to `attempts` times, `timeout` seconds apart,
    and return the first answer that belongs to it.  `source` is the local
    address to send from."""
    if nat_t is None:
        nat_t = port == NAT_T_PORT
    family, sockaddr = resolve(host, port)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if source is not None:
            sock.bind((source, 0))
        sock.connect(sockaddr)
        local = sock.getsockname()[:2]
        remote = sockaddr[:2]
        request = new_request(
            local,
            remote,
            nat_t=nat_t,
            redirect_supported=redirect_supported,
            redirected_from=redirected_from,
        )
        outcome = ProbeOutcome(request, remote, 0)
        started = time.monotonic()
        for _ in range(attempts):
            outcome.attempts += 1
            sock.send(request.datagram)
            answer = _await_answer(sock, request, time.monotonic() + timeout, outcome)
            if answer is not None:
                outcome.answer = answer
                break
        outcome.elapsed = time.monotonic() - started
    return outcome


def _await_answer(sock: socket.socket, request: ProbeRequest, deadline: float, outcome: ProbeOutcome) -> Answer | None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            datagram = sock.recv(65535)
        except socket.timeout:
            return None
        except ConnectionRefusedError:
            outcome.note_error("ICMP port unreachable: nothing listens there")
            continue
        try:
            answer = interpret_answer(request, datagram)
        except PeerError as exc:
            outcome.note_error(f"undecodable answer of {len(datagram)} bytes: {exc}")
            continue
        if answer is not None:
            return answer


def format_outcome(outcome: ProbeOutcome) -> list[str]:
    """Return the report lines for the command line."""
    host, port = outcome.remote[0], outcome.remote[1]
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = outcome.request
    lines = [
        f"sent IKE_SA_INIT to {target}: initiator SPI {request.initiator_spi.hex()}, "
        f"{len(request.nonce)}-byte nonce{', non-ESP marker' if request.nat_t else ''}"
    ]
    lines += [f"ignored {error}" for error in outcome.errors]
    if outcome.error_count > len(outcome.errors):
        lines.append(f"ignored {outcome.error_count - len(outcome.errors)} more undecodable answers")
    answer = outcome.answer
    if answer is None:
        attempts = "1 attempt" if outcome.attempts == 1 else f"{outcome.attempts} attempts"
        lines.append(f"no answer from {target} after {attempts} in {outcome.elapsed:.1f} s")
        return lines
    if answer.redirect is None:
        notifies = ", ".join(name_of(NotifyType, n) for n in answer.notify_types) or "none"
        payloads = ", ".join(name_of(PayloadType, p) for p in answer.payload_types) or "none"
        lines.append(
            f"{name_of(ExchangeType, answer.exchange_type)} response without REDIRECT: "
            f"payloads {payloads}; notifies {notifies}"
        )
        return lines
    gateway = answer.redirect.gateway
    lines.append(f"REDIRECT to {gateway} ({gateway.type.name} identity) after {outcome.elapsed * 1000:.1f} ms")
    lines.append(f"  responder SPI {answer.responder_spi.hex()}, message ID {answer.message_id}")
    if answer.problems:
        lines += [f"  invalid: {problem}" for problem in answer.problems]
    else:
        lines.append("  nonce data equals the Ni sent")
    return lines
