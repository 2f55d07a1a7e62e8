"""Both socket loops (`_fastpath.Loop` and `pyloop.Loop`) on loopback UDP.

Each test binds its own sockets on ephemeral ports of 127.0.0.1 and ::1,
or of 0.0.0.0 and :: for the source-address tests.  It sends recorded
strongSwan datagrams from a client socket and runs the loop for a bounded
number of 200 ms slices.  Then it checks the replies, the counters and the
slow-path queue.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter

import pytest

from fastredir import sockets as server
from fastredir.config import Listener
from fastredir.selection import Gateway, KeyMode, build_table
from fastredir.verdict import VERDICT_COUNT, Verdict
from tests.captures import all_datagrams, read_capture
from tests.test_fastpath import (
    FQDN_GATEWAY,
    KEEPALIVE,
    NON_ESP_MARKER,
    SECOND_GATEWAY,
    V6_GATEWAY,
    check_redirect,
    expected_gateway,
    redirected_from_key,
    split_message,
)

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value
RUN_SLICE_MS = 200
MAX_SLICES = 25

# Verdicts read off the captures: IKE_SA_INIT requests with
# REDIRECT_SUPPORTED or REDIRECTED_FROM are redirected, the gateway's
# IKE_SA_INIT responses are dropped, and IKE_AUTH in both directions goes
# to the slow path.
EXPECTED_VERDICTS = {
    "strongswan-v4-modp-multi.request.pcap#0": Verdict.REDIRECTED,
    "strongswan-v4-natt4500.request.pcap#0": Verdict.REDIRECTED,
    "strongswan-v4-noredirsup.request.pcap#0": Verdict.REDIRECT_NOT_SUPPORTED,
    "strongswan-v4-noredirsup.request.pcap#1": Verdict.REDIRECT_NOT_SUPPORTED,
    "strongswan-v4-x25519.redirected.pcap#0": Verdict.REDIRECTED,
    "strongswan-v4-x25519.redirected.pcap#1": Verdict.RESPONSE,
    "strongswan-v4-x25519.redirected.pcap#2": Verdict.SLOW_PATH,
    "strongswan-v4-x25519.redirected.pcap#3": Verdict.SLOW_PATH,
    "strongswan-v4-x25519.request.pcap#0": Verdict.REDIRECTED,
    "strongswan-v6-x25519.redirected.pcap#0": Verdict.REDIRECTED,
    "strongswan-v6-x25519.redirected.pcap#1": Verdict.RESPONSE,
    "strongswan-v6-x25519.redirected.pcap#2": Verdict.SLOW_PATH,
    "strongswan-v6-x25519.redirected.pcap#3": Verdict.SLOW_PATH,
    "strongswan-v6-x25519.request.pcap#0": Verdict.REDIRECTED,
}

# Address+SPI keys spread the requests of one loopback client over the gateways.
TABLE = build_table(
    [Gateway(SECOND_GATEWAY), Gateway(V6_GATEWAY), Gateway(FQDN_GATEWAY, weight=2)],
    size=1009,
    seed=11,
    key_mode=KeyMode.ADDRESS_SPI,
)

V4_LOOPBACK = ipaddress.IPv4Address("127.0.0.1").packed
V6_LOOPBACK = ipaddress.IPv6Address("::1").packed


def open_listener(address: str, nat_t: bool = False, pktinfo: bool = True) -> socket.socket:
    """Bind an ephemeral port the way `fastredir serve` binds its listeners,
    with pktinfo (IP_PKTINFO or IPV6_RECVPKTINFO) on when `pktinfo` is set."""
    sock = server.open_socket(Listener(ipaddress.ip_address(address), port=0, nat_t=nat_t), reuse_port=False)
    if pktinfo:
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    return sock


def open_client(address: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setblocking(False)
    return sock


def receive_all(sock: socket.socket) -> list[tuple[bytes, tuple]]:
    """Read every datagram queued on a non-blocking socket."""
    received = []
    for _ in range(10000):
        try:
            received.append(sock.recvfrom(65535))
        except BlockingIOError:
            break
    return received


def serve(loop, clients, sent: int) -> tuple[list, list]:
    """Run `loop` in bounded slices until it has a verdict for all `sent`
    datagrams.  Return the replies the clients received and the slow-path
    queue."""
    replies: list = []
    slow: list = []
    for _ in range(MAX_SLICES):
        loop.run(RUN_SLICE_MS)
        slow += loop.take_slow()
        for client in clients:
            replies += [(client, data, source) for data, source in receive_all(client)]
        if sum(loop.verdict_counts()) >= sent:
            break
    # One more short slice, so a reply or verdict too many would show.
    loop.run(20)
    slow += loop.take_slow()
    for client in clients:
        replies += [(client, data, source) for data, source in receive_all(client)]
    return replies, slow


@pytest.fixture
def sockets():
    """Listeners and clients of one test, all closed afterwards."""
    opened: dict[str, socket.socket] = {}
    yield opened
    for sock in opened.values():
        sock.close()


def counts_list(counter: Counter) -> list[int]:
    return [counter.get(Verdict(code), 0) for code in range(VERDICT_COUNT)]


def test_capture_replies(implementation, sockets):
    sockets["v4"] = open_listener("127.0.0.1")
    sockets["v4_natt"] = open_listener("127.0.0.1", nat_t=True)
    sockets["v6"] = open_listener("::1")
    sockets["v6_natt"] = open_listener("::1", nat_t=True)
    sockets["client_v4"] = open_client("127.0.0.1")
    sockets["client_v6"] = open_client("::1")
    listeners = [("v4", False), ("v4_natt", True), ("v6", False), ("v6_natt", True)]
    pairs = [(sockets[name], nat_t) for name, nat_t in listeners]
    loop = implementation.Loop(pairs, implementation.compile_table(TABLE))

    requests = {}  # initiator SPI -> (datagram, listener index) of each request to redirect
    slow_expected = []
    expected_counts: Counter = Counter()
    datagrams = all_datagrams()
    for datagram in datagrams:
        family = "v4" if len(datagram.source) == 4 else "v6"
        index = [name for name, _ in listeners].index(family + ("_natt" if datagram.nat_t else ""))
        listener = sockets[listeners[index][0]]
        client = sockets["client_" + family]
        client.sendto(datagram.payload, listener.getsockname()[:2])
        verdict = EXPECTED_VERDICTS[datagram.name]
        expected_counts[verdict] += 1
        message = datagram.payload[4:] if datagram.nat_t else datagram.payload
        if verdict == Verdict.REDIRECTED:
            requests[message[:8]] = (datagram, index)
        elif verdict == Verdict.SLOW_PATH:
            loopback = V4_LOOPBACK if family == "v4" else V6_LOOPBACK
            port = client.getsockname()[1]
            slow_expected.append((index, datagram.payload, loopback, port, loopback))

    clients = [sockets["client_v4"], sockets["client_v6"]]
    replies, slow = serve(loop, clients, len(datagrams))

    assert loop.verdict_counts() == counts_list(expected_counts)
    assert sum(loop.verdict_counts()) == len(datagrams)
    assert sorted(slow) == sorted(slow_expected)

    assert len(replies) == len(requests)
    gateway_counts: Counter = Counter()
    for client, reply, source in replies:
        datagram, index = requests[reply[4:12] if reply[:4] == NON_ESP_MARKER else reply[:8]]
        listener = sockets[listeners[index][0]]
        assert source[:2] == listener.getsockname()[:2]
        message = datagram.payload[4:] if datagram.nat_t else datagram.payload
        client_address = V4_LOOPBACK if client.family == socket.AF_INET else V6_LOOPBACK
        _, chunks = split_message(message)
        gateway = expected_gateway(TABLE, client_address, message[:8], redirected_from_key(chunks))
        check_redirect(reply, datagram.payload, datagram.nat_t, TABLE.gateways[gateway].identity)
        gateway_counts[gateway] += 1
    assert loop.gateway_counts() == [gateway_counts.get(i, 0) for i in range(len(TABLE.gateways))]


def test_reply_from_request_address(implementation, sockets):
    # A reply must leave from the address its request was sent to, or the
    # client would not match it to its request.  The listener is bound to
    # 0.0.0.0, and 127.0.0.2 is on loopback too.
    sockets["any"] = open_listener("0.0.0.0", pktinfo=False)
    sockets["client"] = open_client("127.0.0.1")
    port = sockets["any"].getsockname()[1]
    loop = implementation.Loop([(sockets["any"], False)], implementation.compile_table(TABLE))
    request = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
    ike_auth = read_capture("strongswan-v4-x25519.redirected.pcap")[2].payload[4:]

    sockets["client"].sendto(request, ("127.0.0.2", port))
    sockets["client"].sendto(request, ("127.0.0.1", port))
    sockets["client"].sendto(ike_auth, ("127.0.0.2", port))
    replies, slow = serve(loop, [sockets["client"]], 3)

    sources = sorted(source for _, _, source in replies)
    assert sources == [("127.0.0.1", port), ("127.0.0.2", port)]
    client_port = sockets["client"].getsockname()[1]
    destination = ipaddress.IPv4Address("127.0.0.2").packed
    assert slow == [(0, ike_auth, V4_LOOPBACK, client_port, destination)]


def test_ipv6_wildcard_reply(implementation, sockets):
    sockets["any"] = open_listener("::", pktinfo=False)
    sockets["client"] = open_client("::1")
    port = sockets["any"].getsockname()[1]
    loop = implementation.Loop([(sockets["any"], False)], implementation.compile_table(TABLE))
    request = read_capture("strongswan-v6-x25519.request.pcap")[0].payload
    ike_auth = read_capture("strongswan-v6-x25519.redirected.pcap")[2].payload[4:]

    sockets["client"].sendto(request, ("::1", port))
    sockets["client"].sendto(ike_auth, ("::1", port))
    replies, slow = serve(loop, [sockets["client"]], 2)

    assert len(replies) == 1
    _, reply, source = replies[0]
    assert source[:2] == ("::1", port)
    gateway = expected_gateway(TABLE, V6_LOOPBACK, request[:8], None)
    check_redirect(reply, request, False, TABLE.gateways[gateway].identity)
    client_port = sockets["client"].getsockname()[1]
    assert slow == [(0, ike_auth, V6_LOOPBACK, client_port, V6_LOOPBACK)]


def test_bound_without_pktinfo(implementation, sockets):
    # `fastredir serve` turns pktinfo on only for wildcard listeners.  A
    # bound socket replies from its own address, and the slow path gets
    # None for the destination.
    sockets["v4"] = open_listener("127.0.0.1", nat_t=True, pktinfo=False)
    sockets["client"] = open_client("127.0.0.1")
    address = sockets["v4"].getsockname()
    loop = implementation.Loop([(sockets["v4"], True)], implementation.compile_table(TABLE))
    request = read_capture("strongswan-v4-natt4500.request.pcap")[0].payload
    ike_auth = read_capture("strongswan-v4-x25519.redirected.pcap")[2].payload

    sockets["client"].sendto(request, address)
    sockets["client"].sendto(ike_auth, address)
    replies, slow = serve(loop, [sockets["client"]], 2)

    assert len(replies) == 1
    _, reply, source = replies[0]
    assert source == address
    gateway = expected_gateway(TABLE, V4_LOOPBACK, request[4:12], None)
    check_redirect(reply, request, True, TABLE.gateways[gateway].identity)
    client_port = sockets["client"].getsockname()[1]
    assert slow == [(0, ike_auth, V4_LOOPBACK, client_port, None)]


def test_natt_not_answered(implementation, sockets):
    sockets["natt"] = open_listener("127.0.0.1", nat_t=True)
    sockets["client"] = open_client("127.0.0.1")
    address = sockets["natt"].getsockname()
    loop = implementation.Loop([(sockets["natt"], True)], implementation.compile_table(TABLE))
    request = read_capture("strongswan-v4-natt4500.request.pcap")[0].payload
    # ESP: a non-zero SPI where IKE has its zero marker.
    esp = bytes.fromhex("c0ffee01") + (1).to_bytes(4, "big") + bytes(48)

    sockets["client"].sendto(KEEPALIVE, address)
    sockets["client"].sendto(esp, address)
    sockets["client"].sendto(request[4:], address)  # IKE without the marker looks like ESP
    sockets["client"].sendto(NON_ESP_MARKER, address)
    sockets["client"].sendto(request, address)
    replies, slow = serve(loop, [sockets["client"]], 5)

    expected = Counter({Verdict.NAT_KEEPALIVE: 1, Verdict.ESP: 2, Verdict.TRUNCATED: 1, Verdict.REDIRECTED: 1})
    assert loop.verdict_counts() == counts_list(expected)
    assert slow == []
    assert len(replies) == 1
    _, reply, _ = replies[0]
    assert reply[:4] == NON_ESP_MARKER
    gateway = expected_gateway(TABLE, V4_LOOPBACK, request[4:12], None)
    check_redirect(reply, request, True, TABLE.gateways[gateway].identity)


def test_oversize_counted(implementation, sockets):
    sockets["v4"] = open_listener("127.0.0.1")
    sockets["client"] = open_client("127.0.0.1")
    loop = implementation.Loop([(sockets["v4"], False)], implementation.compile_table(TABLE), slot_size=512)
    large = read_capture("strongswan-v4-modp-multi.request.pcap")[0].payload  # 844 bytes
    small = read_capture("strongswan-v4-x25519.request.pcap")[0].payload  # 240 bytes

    sockets["client"].sendto(large, sockets["v4"].getsockname())
    sockets["client"].sendto(small, sockets["v4"].getsockname())
    replies, _ = serve(loop, [sockets["client"]], 2)

    assert loop.verdict_counts() == counts_list(Counter({Verdict.OVERSIZE: 1, Verdict.REDIRECTED: 1}))
    assert len(replies) == 1
    assert replies[0][1][:8] == small[:8]


def test_batches_retransmits(implementation, sockets):
    sockets["v4"] = open_listener("127.0.0.1")
    sockets["client"] = open_client("127.0.0.1")
    loop = implementation.Loop([(sockets["v4"], False)], implementation.compile_table(TABLE), batch=4)
    request = read_capture("strongswan-v4-x25519.request.pcap")[0].payload

    for _ in range(13):
        sockets["client"].sendto(request, sockets["v4"].getsockname())
    replies, _ = serve(loop, [sockets["client"]], 13)

    gateway = expected_gateway(TABLE, V4_LOOPBACK, request[:8], None)
    assert len(replies) == 13
    assert len({reply for _, reply, _ in replies}) == 1
    check_redirect(replies[0][1], request, False, TABLE.gateways[gateway].identity)
    assert loop.verdict_counts()[Verdict.REDIRECTED] == 13
    assert loop.gateway_counts()[gateway] == 13
    assert sum(loop.gateway_counts()) == 13
    assert loop.batch_stats()[1] == 13


def test_slow_path_limit(implementation, sockets):
    sockets["natt"] = open_listener("127.0.0.1", nat_t=True)
    sockets["client"] = open_client("127.0.0.1")
    loop = implementation.Loop([(sockets["natt"], True)], implementation.compile_table(TABLE), slow_limit=1)
    ike_auth = read_capture("strongswan-v4-x25519.redirected.pcap")[2].payload

    for _ in range(3):
        sockets["client"].sendto(ike_auth, sockets["natt"].getsockname())
    _, slow = serve(loop, [sockets["client"]], 3)

    assert len(slow) == 1
    assert slow[0][1] == ike_auth
    expected = Counter({Verdict.SLOW_PATH: 1, Verdict.SLOW_PATH_FULL: 2})
    assert loop.verdict_counts() == counts_list(expected)


def test_set_table_switches(implementation, sockets):
    sockets["v4"] = open_listener("127.0.0.1")
    sockets["client"] = open_client("127.0.0.1")
    loop = implementation.Loop([(sockets["v4"], False)], implementation.compile_table(TABLE))
    request = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
    sockets["client"].sendto(request, sockets["v4"].getsockname())
    serve(loop, [sockets["client"]], 1)
    assert sum(loop.gateway_counts()) == 1

    only_v6 = build_table([Gateway(V6_GATEWAY)], size=1009)
    loop.set_table(implementation.compile_table(only_v6))
    assert loop.gateway_counts() == [0]
    sockets["client"].sendto(request, sockets["v4"].getsockname())
    replies, _ = serve(loop, [sockets["client"]], 2)

    assert len(replies) == 1
    check_redirect(replies[0][1], request, False, V6_GATEWAY)
    assert loop.gateway_counts() == [1]
    assert loop.verdict_counts()[Verdict.REDIRECTED] == 2
