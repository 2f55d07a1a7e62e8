"""Recorded strongSwan 5.9.8 client traffic (tests/data/*.pcap) as
datagrams, read with dpkt."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import dpkt

DATA = pathlib.Path(__file__).parent / "data"


@dataclass(frozen=True)
class Datagram:
    """One UDP datagram of a capture."""

    capture: str
    index: int
    source: bytes  # packed IPv4 or IPv6 address
    source_port: int
    destination: bytes
    destination_port: int
    payload: bytes

    @property
    def nat_t(self) -> bool:
        return self.destination_port == 4500

    @property
    def name(self) -> str:
        return f"{self.capture}#{self.index}"


def _reader(stream):
    try:
        return dpkt.pcapng.Reader(stream)
    except ValueError:
        stream.seek(0)
        return dpkt.pcap.Reader(stream)


def read_capture(name: str) -> list[Datagram]:
    with open(DATA / name, "rb") as stream:
        result = []
        for index, (_, frame) in enumerate(_reader(stream)):
            ip = dpkt.ethernet.Ethernet(frame).data
            udp = ip.data
            result.append(
                Datagram(name, index, bytes(ip.src), udp.sport, bytes(ip.dst), udp.dport, bytes(udp.data))
            )
        return result


def all_datagrams() -> list[Datagram]:
    return [d for path in sorted(DATA.glob("*.pcap")) for d in read_capture(path.name)]


def client_requests() -> list[Datagram]:
    """Every IKE_SA_INIT request a client sent (no responses, no IKE_AUTH)."""
    result = []
    for datagram in all_datagrams():
        message = datagram.payload[4:] if datagram.nat_t else datagram.payload
        if len(message) >= 28 and message[18] == 34 and not message[19] & 0x20:
            result.append(datagram)
    return result
