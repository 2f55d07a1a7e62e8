"""Pieces of the serve I/O layer that need no sockets."""

from __future__ import annotations

import ipaddress

from fastredir.config import Listener
from fastredir.counters import summary_line
from fastredir.worker import SlowPath
from tests.captures import read_capture

IKE_AUTH_ON_4500 = read_capture("strongswan-v4-x25519.redirected.pcap")[2].payload  # marker + IKE_AUTH


def test_slow_path_strips_marker_by_listener():
    listeners = [
        Listener(ipaddress.ip_address("127.0.0.1"), 500),
        Listener(ipaddress.ip_address("127.0.0.1"), 4500, nat_t=True),
    ]
    slow_path = SlowPath()
    slow_path.handle([(1, IKE_AUTH_ON_4500, b"\x7f\0\0\1", 4500, None)], listeners)
    assert slow_path.exchanges == {"IKE_AUTH": 1}


def test_slow_path_label_not_chosen_by_peer():
    # On port 500 a message whose initiator SPI starts with four zero bytes
    # is not a NAT-T message; byte 18 is its exchange type.
    listeners = [Listener(ipaddress.ip_address("127.0.0.1"), 500)]
    message = bytes(4) + IKE_AUTH_ON_4500[8:]
    slow_path = SlowPath()
    slow_path.handle([(0, message, b"\x7f\0\0\1", 500, None)], listeners)
    assert slow_path.exchanges == {"IKE_AUTH": 1}


def test_summary_lists_nonzero():
    verdicts = [0] * 25
    verdicts[0] = 3
    verdicts[13] = 2
    line = summary_line(verdicts, {"192.0.2.11": 3}, {"IKE_AUTH": 1})
    assert line == "received=5 redirected=3 malformed=2 to[192.0.2.11]=3 slow[IKE_AUTH]=1"
