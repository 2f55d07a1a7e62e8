"""`fastredir serve` on loopback, fed the recorded strongSwan requests.

Each answer is decoded twice: by this project's codec and by tshark, an
independent RFC 5685 dissector.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import dpkt
import pytest

from fastredir.ikev2 import ExchangeType, GatewayIdentityType, NotifyType, PayloadType
from fastredir.message import Message, Redirect
from tests.captures import client_requests, read_capture
from tests.serveproc import ServeProcess

GATEWAY_V4 = "192.0.2.11"
GATEWAY_FQDN = "gw.lab.example"
REQUIRED = os.environ.get("FASTREDIR_REQUIRE_INTEROP") == "1"


def free_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", params=["cython", "python"])
def server(request, tmp_path_factory):
    """A serve process with IKE listeners on 127.0.0.1 and ::1 and a NAT-T
    listener on 127.0.0.1, all on free high ports."""
    ports = {
        "v4": free_port(socket.AF_INET, "127.0.0.1"),
        "natt": free_port(socket.AF_INET, "127.0.0.1"),
        "v6": free_port(socket.AF_INET6, "::1"),
    }
    config = tmp_path_factory.mktemp("serve") / "fastredir.yaml"
    config.write_text(
        f"""
listen:
  - address: 127.0.0.1
    port: {ports["v4"]}
  - address: 127.0.0.1
    port: {ports["natt"]}
    nat_t: true
  - address: "::1"
    port: {ports["v6"]}
gateways:
  - target: {GATEWAY_V4}
    weight: 1
  - target: {GATEWAY_FQDN}
    weight: 1
logging:
  stats_interval: 0
"""
    )
    args = ["--config", str(config)]
    if request.param == "python":
        args.append("--pure-python")
    process = ServeProcess(*args).start(listeners=3)
    yield process, ports, request.param
    process.stop()


def exchange(family: int, address: tuple, payload: bytes, timeout: float = 1.0) -> bytes | None:
    """Send one datagram from a fresh socket and return the answer, if any."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, address)
        try:
            return sock.recv(65535)
        except socket.timeout:
            return None


def target_for(datagram, ports) -> tuple[int, tuple]:
    if datagram.nat_t:
        return socket.AF_INET, ("127.0.0.1", ports["natt"])
    if len(datagram.source) == 16:
        return socket.AF_INET6, ("::1", ports["v6"])
    return socket.AF_INET, ("127.0.0.1", ports["v4"])


def redirect_capable(datagram) -> bool:
    message = datagram.payload[4:] if datagram.nat_t else datagram.payload
    types = {n.type for n in Message.parse(message).notifies()}
    return bool(types & {NotifyType.REDIRECT_SUPPORTED, NotifyType.REDIRECTED_FROM})


def write_pcap(path, answers) -> None:
    """Store answers as UDP datagrams from the listener to the client."""
    with open(path, "wb") as stream:
        writer = dpkt.pcap.Writer(stream, linktype=dpkt.pcap.DLT_RAW)
        for family, listener, client, payload in answers:
            udp = dpkt.udp.UDP(sport=listener[1], dport=client[1], data=payload)
            udp.ulen = len(udp)
            if family == socket.AF_INET6:
                ip = dpkt.ip6.IP6(
                    src=socket.inet_pton(family, listener[0]),
                    dst=socket.inet_pton(family, client[0]),
                    nxt=dpkt.ip.IP_PROTO_UDP,
                    hlim=64,
                    data=udp,
                    plen=len(udp),
                )
            else:
                ip = dpkt.ip.IP(
                    src=socket.inet_aton(listener[0]),
                    dst=socket.inet_aton(client[0]),
                    p=dpkt.ip.IP_PROTO_UDP,
                    data=udp,
                )
            writer.writepkt(bytes(ip))


TSHARK_FIELDS = [
    "isakmp.ispi",
    "isakmp.rspi",
    "isakmp.exchangetype",
    "isakmp.flags",
    "isakmp.messageid",
    "isakmp.notify.msgtype",
    "isakmp.notify.data.redirect.gw_ident.type",
    "isakmp.notify.data.redirect.new_resp_gw_ident.ipv4",
    "isakmp.notify.data.redirect.new_resp_gw_ident.fqdn",
    "isakmp.notify.data.redirect.nonce_data",
]


def tshark_decode(path, ports) -> list[dict[str, str]]:
    tshark = shutil.which("tshark")
    if tshark is None:
        if REQUIRED:
            pytest.fail("tshark is not installed (Debian package tshark)")
        pytest.skip("tshark is not installed (Debian package tshark)")
    command = [tshark, "-r", str(path), "-T", "fields", "-E", "separator=/t"]
    command += ["-d", f"udp.port=={ports['v4']},isakmp", "-d", f"udp.port=={ports['v6']},isakmp"]
    command += ["-d", f"udp.port=={ports['natt']},udpencap"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return [dict(zip(TSHARK_FIELDS, line.split("\t"))) for line in result.stdout.splitlines()]


def test_requests_answered_as_rfc5685(server, tmp_path):
    process, ports, _ = server
    answers = []
    expected = []
    for datagram in client_requests():
        family, address = target_for(datagram, ports)
        reply = exchange(family, address, datagram.payload)
        if not redirect_capable(datagram):
            assert reply is None, f"{datagram.name}: a client without redirect support got an answer"
            continue
        assert reply is not None, f"{datagram.name}: no answer\n{process.output}"
        client = ("::1" if family == socket.AF_INET6 else "127.0.0.1", 40000)
        answers.append((family, address, client, reply))
        expected.append(datagram)

        # This project's codec.
        message_bytes = reply
        request = datagram.payload
        if datagram.nat_t:
            assert reply[:4] == bytes(4), "a NAT-T reply starts with the non-ESP marker"
            message_bytes, request = reply[4:], request[4:]
        message = Message.parse(message_bytes)
        assert message.header.initiator_spi == request[:8]
        assert message.header.responder_spi == bytes(8)
        assert message.header.exchange_type == ExchangeType.IKE_SA_INIT
        assert message.header.is_response and not message.header.is_initiator
        assert message.header.message_id == 0
        assert [p.type for p in message.payloads] == [PayloadType.NOTIFY]
        notify = message.find_notify(NotifyType.REDIRECT)
        assert notify is not None
        assert notify.protocol_id == 0
        assert notify.spi == b""
        redirect = Redirect.decode(notify.data)
        assert str(redirect.gateway) in (GATEWAY_V4, GATEWAY_FQDN)
        assert redirect.nonce == Message.parse(request).nonces()[0]
        assert len(message_bytes) <= len(request)

    path = tmp_path / "answers.pcap"
    write_pcap(path, answers)
    decoded = tshark_decode(path, ports)
    assert len(decoded) == len(expected)
    for fields, datagram, (_, _, _, reply) in zip(decoded, expected, answers):
        request = datagram.payload[4:] if datagram.nat_t else datagram.payload
        assert fields["isakmp.ispi"] == request[:8].hex()
        assert fields["isakmp.rspi"] == "0000000000000000"
        assert int(fields["isakmp.exchangetype"]) == ExchangeType.IKE_SA_INIT
        assert int(fields["isakmp.flags"], 0) == 0x20
        assert int(fields["isakmp.messageid"], 0) == 0
        assert int(fields["isakmp.notify.msgtype"]) == NotifyType.REDIRECT
        ident_type = int(fields["isakmp.notify.data.redirect.gw_ident.type"])
        if ident_type == GatewayIdentityType.IPV4:
            assert fields["isakmp.notify.data.redirect.new_resp_gw_ident.ipv4"] == GATEWAY_V4
        else:
            assert ident_type == GatewayIdentityType.FQDN
            assert fields["isakmp.notify.data.redirect.new_resp_gw_ident.fqdn"] == GATEWAY_FQDN
        nonce = Message.parse(request).nonces()[0]
        assert fields["isakmp.notify.data.redirect.nonce_data"] == nonce.hex()


def test_same_client_same_gateway(server):
    _, ports, _ = server
    request = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        replies = set()
        for _ in range(5):
            sock.sendto(request, ("127.0.0.1", ports["v4"]))
            replies.add(sock.recv(65535))
    assert len(replies) == 1, "a retransmitted request must get the same answer"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 27, id="short"),
        pytest.param(read_capture("strongswan-v4-x25519.request.pcap")[0].payload[:-1], id="truncated"),
        pytest.param(read_capture("strongswan-v4-x25519.request.pcap")[0].payload + b"\x00", id="trailing"),
        pytest.param(read_capture("strongswan-v4-x25519.redirected.pcap")[1].payload, id="response"),
        pytest.param(b"\x11" * 16 + b"\x01\x10\x02\x00" + bytes(8), id="ikev1-header"),
    ],
)
def test_malformed_gets_no_answer(server, payload):
    _, ports, _ = server
    assert exchange(socket.AF_INET, ("127.0.0.1", ports["v4"]), payload, timeout=0.3) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff", id="nat-keepalive"),
        pytest.param(b"\x01\x02\x03\x04" + bytes(40), id="esp"),
        pytest.param(read_capture("strongswan-v4-x25519.request.pcap")[0].payload, id="no-marker"),
    ],
)
def test_nat_t_non_ike_gets_no_answer(server, payload):
    _, ports, _ = server
    assert exchange(socket.AF_INET, ("127.0.0.1", ports["natt"]), payload, timeout=0.3) is None


def test_burst_answered(server, capsys):
    """A burst of distinct requests is answered in full; the rate is
    printed for information (timing is measured in bench/, not here)."""
    _, ports, implementation = server
    template = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
    count = 2000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.settimeout(2.0)
        started = time.perf_counter()
        received = 0
        window = 64
        for start in range(0, count, window):
            for index in range(start, min(start + window, count)):
                request = (index + 1).to_bytes(8, "big") + template[8:]
                sock.sendto(request, ("127.0.0.1", ports["v4"]))
            for _ in range(min(window, count - start)):
                reply = sock.recv(65535)
                assert start < int.from_bytes(reply[:8], "big") <= start + window
                received += 1
        elapsed = time.perf_counter() - started
    assert received == count
    with capsys.disabled():
        print(f"\n{implementation}: {count} redirects in {elapsed:.3f} s, {count / elapsed:.0f} per second")


def test_counters_reported_on_exit():
    port = free_port(socket.AF_INET, "127.0.0.1")
    request = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
    with ServeProcess("--listen", f"127.0.0.1:{port}", "--gateway", GATEWAY_V4) as process:
        process.start(listeners=1)
        assert exchange(socket.AF_INET, ("127.0.0.1", port), request) is not None
        assert exchange(socket.AF_INET, ("127.0.0.1", port), b"junk", timeout=0.2) is None
        assert process.stop() == 0, process.output
    assert "final counters: received=2 redirected=1 truncated=1" in process.output
    assert f"to[{GATEWAY_V4}]=1" in process.output


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_wildcard_replies_from_destination(pure):
    """On 0.0.0.0 the answer leaves from the address the request was sent
    to: loopback holds all of 127.0.0.0/8, so 127.0.0.2 and 127.0.0.3
    reach the same socket."""
    port = free_port(socket.AF_INET, "0.0.0.0")
    request = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
    args = ["--listen", f"0.0.0.0:{port}", "--gateway", GATEWAY_V4] + (["--pure-python"] if pure else [])
    with ServeProcess(*args) as process:
        process.start(listeners=1)
        for destination in ("127.0.0.2", "127.0.0.3"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1.0)
                sock.sendto(request, (destination, port))
                reply, source = sock.recvfrom(65535)
            assert source == (destination, port)
            assert reply[:8] == request[:8]
