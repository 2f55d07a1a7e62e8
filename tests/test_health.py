"""IKE health probes against responders on loopback."""

from __future__ import annotations

import socket
import threading

import pytest

from fastredir.health import Target, is_answer, probe_round
from fastredir.ikev2 import ExchangeType, FLAG_RESPONSE
from fastredir.message import Message, Notify, build_message


class Responder:
    """A UDP socket on 127.0.0.1 that answers each IKE_SA_INIT request
    with `make_answer(request)`, or stays silent when it returns None."""

    def __init__(self, make_answer) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._make_answer = make_answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            self.requests.append(data)
            answer = self._make_answer(data)
            if answer is not None:
                self.sock.sendto(answer, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def no_proposal_chosen(request: bytes) -> bytes:
    """Any IKEv2 answer means alive, even an error notify (RFC 7296
    section 3.10.1, NO_PROPOSAL_CHOSEN 14)."""
    return build_message(
        initiator_spi=request[:8],
        responder_spi=bytes(8),
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=FLAG_RESPONSE,
        message_id=0,
        payloads=[Notify(14).to_payload()],
    )


@pytest.fixture
def responders():
    made = []

    def make(answer):
        responder = Responder(answer)
        made.append(responder)
        return responder

    yield make
    for responder in made:
        responder.close()


def test_round_reports_each_target(responders):
    alive = responders(no_proposal_chosen)
    silent = responders(lambda request: None)
    wrong_spi = responders(lambda request: no_proposal_chosen(b"\x01" * 8 + request[8:]))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    results = probe_round(
        [
            Target("alive", "127.0.0.1", alive.port),
            Target("silent", "127.0.0.1", silent.port),
            Target("wrong-spi", "127.0.0.1", wrong_spi.port),
            Target("closed", "127.0.0.1", closed_port),
        ],
        timeout=0.5,
    )
    assert results["alive"] == ""
    assert results["silent"] == "no answer within 0.5 s"
    assert results["wrong-spi"] == "no answer within 0.5 s"
    assert "refused" in results["closed"].lower()


def test_unresolvable_name(monkeypatch):
    # No DNS query leaves the machine: the resolver is replaced.
    def fail(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    results = probe_round([Target("gw", "gw.example.net", 500)], timeout=0.2)
    assert results == {"gw": "cannot resolve gw.example.net: [Errno -2] Name or service not known"}


def test_probe_is_plain_ike_sa_init(responders):
    alive = responders(no_proposal_chosen)
    probe_round([Target("alive", "127.0.0.1", alive.port)], timeout=0.5)
    message = Message.parse(alive.requests[0])
    assert message.header.exchange_type == ExchangeType.IKE_SA_INIT
    assert message.header.is_initiator and not message.header.is_response
    assert message.find_notify(16406) is None  # no REDIRECT_SUPPORTED: nothing to redirect


def test_is_answer_rules():
    spi = b"\x05" * 8
    answer = no_proposal_chosen(spi + bytes(20))
    assert is_answer(spi, answer, nat_t=False)
    assert not is_answer(b"\x06" * 8, answer, nat_t=False)
    assert not is_answer(spi, answer[:27], nat_t=False)
    assert not is_answer(spi, answer[:19] + b"\x08" + answer[20:], nat_t=False)  # Response flag clear
    assert not is_answer(spi, answer[:17] + b"\x10" + answer[18:], nat_t=False)  # IKEv1 version octet
    assert is_answer(spi, bytes(4) + answer, nat_t=True)
    assert not is_answer(spi, answer, nat_t=True)
