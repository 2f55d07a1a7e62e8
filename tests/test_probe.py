"""The probe's request builder and answer checks (sans-I/O)."""

from __future__ import annotations

import ipaddress

import pytest

from fastredir.ikev2 import FLAG_INITIATOR, FLAG_RESPONSE, ExchangeType, GatewayIdentityType
from fastredir.message import GatewayIdentity, Message, Redirect, build_message
from fastredir.probe import build_request, interpret_answer

SPI = bytes.fromhex("0102030405060708")
NONCE = bytes(range(32))


def request(nat_t: bool = False):
    return build_request(
        initiator_spi=SPI,
        nonce=NONCE,
        public_key=bytes(32),
        local=("192.0.2.10", 500),
        remote=("192.0.2.1", 500),
        nat_t=nat_t,
    )


def redirect_answer(gateway: GatewayIdentity, *, flags: int = FLAG_RESPONSE, nonce: bytes = NONCE) -> bytes:
    return build_message(
        initiator_spi=SPI,
        responder_spi=bytes(8),
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=flags,
        message_id=0,
        payloads=[Redirect(gateway, nonce).to_notify().to_payload()],
    )


def test_request_is_redirect_capable():
    message = Message.parse(request().datagram)
    assert message.header.is_initiator and not message.header.is_response
    assert message.nonces() == [NONCE]
    assert message.find_notify(16406) is not None  # REDIRECT_SUPPORTED, RFC 5685 section 9.1


def test_valid_redirect_accepted():
    answer = interpret_answer(request(), redirect_answer(GatewayIdentity.from_text("192.0.2.11")))
    assert answer is not None
    assert answer.is_valid_redirect, answer.problems


@pytest.mark.parametrize(
    "gateway",
    [
        GatewayIdentity(GatewayIdentityType.IPV4, ipaddress.IPv4Address("0.0.0.0")),
        GatewayIdentity(GatewayIdentityType.IPV4, ipaddress.IPv4Address("255.255.255.255")),
        GatewayIdentity(GatewayIdentityType.IPV6, ipaddress.IPv6Address("::")),
        GatewayIdentity(GatewayIdentityType.IPV6, ipaddress.IPv6Address("ff02::1")),
        GatewayIdentity(GatewayIdentityType.FQDN, "$(id)`x`;|&y"),
    ],
    ids=["0.0.0.0", "broadcast", "::", "multicast", "shell-text"],
)
def test_unusable_gateway_rejected(gateway):
    answer = interpret_answer(request(), redirect_answer(gateway))
    assert answer is not None
    assert not answer.is_valid_redirect


def test_initiator_flag_rejected():
    gateway = GatewayIdentity.from_text("192.0.2.11")
    answer = interpret_answer(request(), redirect_answer(gateway, flags=FLAG_RESPONSE | FLAG_INITIATOR))
    assert answer is not None
    assert any("Initiator flag" in problem for problem in answer.problems)


def test_nonce_mismatch_rejected():
    gateway = GatewayIdentity.from_text("192.0.2.11")
    answer = interpret_answer(request(), redirect_answer(gateway, nonce=bytes(32)))
    assert answer is not None
    assert any("nonce" in problem for problem in answer.problems)


def test_other_spi_ignored():
    gateway = GatewayIdentity.from_text("192.0.2.11")
    other = bytes(8) + redirect_answer(gateway)[8:]
    assert interpret_answer(request(), other) is None


def test_nat_t_answer_needs_marker():
    gateway = GatewayIdentity.from_text("192.0.2.11")
    answer = redirect_answer(gateway)
    assert interpret_answer(request(nat_t=True), answer) is None
    assert interpret_answer(request(nat_t=True), bytes(4) + answer).is_valid_redirect
