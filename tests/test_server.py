"""Pieces of the serve I/O layer that need no sockets."""

from __future__ import annotations

import ipaddress

from fastredir.config import Listener
from fastredir.server import Counters, SlowPath
from tests.captures import read_capture

IKE_AUTH_ON_4500 = read_capture("strongswan-v4-x25519.redirected.pcap")[2].payload  # marker + IKE_AUTH


def test_slow_path_strips_marker_by_listener():
    listeners = (
        Listener(ipaddress.ip_address("127.0.0.1"), 500),
        Listener(ipaddress.ip_address("127.0.0.1"), 4500, nat_t=True),
    )
    counters = Counters()
    SlowPath(counters, listeners).handle([(1, IKE_AUTH_ON_4500, b"\x7f\0\0\1", 4500, None)])
    assert counters.slow_exchanges == {"IKE_AUTH": 1}


def test_slow_path_label_not_chosen_by_peer():
    # On port 500 a message whose initiator SPI starts with four zero bytes
    # is not a NAT-T message; byte 18 is its exchange type.
    listeners = (Listener(ipaddress.ip_address("127.0.0.1"), 500),)
    message = bytes(4) + IKE_AUTH_ON_4500[8:]
    counters = Counters()
    SlowPath(counters, listeners).handle([(0, message, b"\x7f\0\0\1", 500, None)])
    assert counters.slow_exchanges == {"IKE_AUTH": 1}


def test_counters_summary_lists_nonzero():
    counters = Counters()
    counters.verdicts[0] = 3
    counters.verdicts[13] = 2
    counters.per_gateway["192.0.2.11"] = 3
    assert counters.summary() == "received=5 redirected=3 malformed=2 to[192.0.2.11]=3"
