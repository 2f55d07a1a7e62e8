"""fastredir against real strongSwan 5.9.8 peers in network namespaces.

The client dials the redirector, follows the REDIRECT and must end with an
established IKE SA on the gateway it was sent to. Besides `swanctl --list-sas`,
the checks read these lines of the charon logs:

    client: received packet: from 192.0.2.1[500] to 192.0.2.10[500] (74 bytes)
    client: parsed IKE_SA_INIT response 0 [ N(REDIR) ]
    client: redirected to 192.0.2.11
    gw1:    parsed IKE_SA_INIT request 0 [ SA KE No ... N(REDIR_FROM) ]

All tests use IKE SAs without CHILD_SAs, so they need no ESP in the kernel.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import time

import pytest

from .lab import CLIENT, Lab, Process, extra_clients
from .strongswan import CLIENT_IDENTITY, IkeSa

pytestmark = pytest.mark.interop

INITIATE_TIMEOUT = 10.0
# After a gateway-initiated redirect the client needs one exchange with
# fastredir and two with the new gateway. In this lab that took under a second.
REDIRECT_BACK_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Family:
    connection: str  # client connection that dials the redirector
    redirector: str
    listen: tuple[str, ...]
    client: str
    gw1: str
    gw2: str


IPV4 = Family(
    connection="redirect-v4",
    redirector="192.0.2.1",
    listen=("192.0.2.1:500", "192.0.2.1:4500"),
    client="192.0.2.10",
    gw1="192.0.2.11",
    gw2="192.0.2.12",
)
IPV6 = Family(
    connection="redirect-v6",
    redirector="2001:db8::1",
    listen=("[2001:db8::1]:500", "[2001:db8::1]:4500"),
    client="2001:db8::10",
    gw1="2001:db8::11",
    gw2="2001:db8::12",
)
FAMILIES = {"ipv4": IPV4, "ipv6": IPV6}


def describe(lab: Lab, initiate_output: str = "", fastredir: Process | None = None) -> str:
    """Return what a failed check needs: swanctl output, fastredir output and charon logs."""
    parts = []
    if initiate_output:
        parts.append(f"===== client: swanctl --initiate =====\n{initiate_output}")
    if fastredir is not None:
        parts.append(
            f"===== fastredir (pid {fastredir.pid}, exit status {fastredir.popen.returncode}) "
            f"=====\n{fastredir.output()}"
        )
    parts.append(lab.describe())
    return "\n".join(parts)


def established_with_client(lab: Lab, host: str, client_address: str) -> list[IkeSa]:
    return [
        sa
        for sa in lab.ike_sas(host)
        if sa.state == "ESTABLISHED"
        and sa.remote_address == client_address
        and sa.remote_identity == CLIENT_IDENTITY
    ]


def log_lines(lab: Lab, host: str, pattern: str) -> list[str]:
    expression = re.compile(pattern)
    return [line for line in lab.read_log(host).splitlines() if expression.search(line)]


def assert_redirected_to_gateway(
    lab: Lab,
    fastredir: Process,
    *,
    redirector: str,
    redirect_target: str,
    client: str,
) -> None:
    """Check the client's log for fastredir's REDIRECT and gw1 for the SA it led to."""
    details = describe(lab, fastredir=fastredir)
    redirector_packets = log_lines(
        lab, "client", rf"received packet: from {re.escape(redirector)}\[500\]"
    )
    assert redirector_packets, f"client received nothing from {redirector}[500]\n{details}"

    # fastredir's response contains N(REDIRECT) and no other payload.
    assert log_lines(lab, "client", r"parsed IKE_SA_INIT response 0 \[ N\(REDIR\) \]"), (
        f"client parsed no IKE_SA_INIT response with only N(REDIR)\n{details}"
    )
    assert log_lines(lab, "client", rf"redirected to {re.escape(redirect_target)}$"), (
        f"client log has no 'redirected to {redirect_target}'\n{details}"
    )
    assert log_lines(lab, "gw1", r"parsed IKE_SA_INIT request 0 \[.* N\(REDIR_FROM\) .*\]"), (
        f"gw1 parsed no IKE_SA_INIT request with N(REDIR_FROM)\n{details}"
    )
    assert established_with_client(lab, "gw1", client), (
        f"gw1 has no ESTABLISHED IKE SA with {client}\n{details}"
    )
    assert not established_with_client(lab, "gw2", client), (
        f"gw2 has an IKE SA with {client}, but fastredir named only gw1\n{details}"
    )


def stop_fastredir(lab: Lab, fastredir: Process) -> None:
    status = lab.stop(fastredir)
    assert status == 0, (
        f"fastredir exited with status {status} after SIGTERM\n{fastredir.output()}"
    )


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_direct_to_gateway(lab: Lab, family: Family):
    # No redirector: a failure here is a lab fault, not a fastredir fault.
    connection = "gw1-v4" if family is IPV4 else "gw1-v6"

    status, output = lab.initiate(connection, timeout=INITIATE_TIMEOUT)

    assert status == 0, f"initiate {connection} failed with status {status}\n{describe(lab, output)}"
    assert established_with_client(lab, "gw1", family.client), (
        f"gw1 has no ESTABLISHED IKE SA with {family.client}\n{describe(lab, output)}"
    )


@pytest.mark.parametrize("fast_path", ["cython", "python"])
@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_redirect_to_address(lab: Lab, start_fastredir, family: Family, fast_path: str):
    fastredir = start_fastredir(family.listen, [family.gw1], pure_python=fast_path == "python")

    status, output = lab.initiate(family.connection, timeout=INITIATE_TIMEOUT)
    stop_fastredir(lab, fastredir)

    assert status == 0, (
        f"initiate {family.connection} failed with status {status}\n"
        f"{describe(lab, output, fastredir)}"
    )
    assert f"fast path: {fast_path}" in fastredir.output(), (
        f"fastredir did not log 'fast path: {fast_path}'\n{fastredir.output()}"
    )
    assert_redirected_to_gateway(
        lab,
        fastredir,
        redirector=family.redirector,
        redirect_target=family.gw1,
        client=family.client,
    )


# Names from the client's hosts file (CLIENT_HOST_NAMES in strongswan.py), each with
# records of one address family only.
FQDN_CASES = {
    "ipv4": (IPV4, "gw1.lab.example"),
    "ipv6": (IPV6, "gw1-v6.lab.example"),
}


@pytest.mark.parametrize("family, gateway_name", FQDN_CASES.values(), ids=FQDN_CASES.keys())
def test_redirect_to_fqdn(lab: Lab, start_fastredir, family: Family, gateway_name: str):
    fastredir = start_fastredir(family.listen, [gateway_name])

    status, output = lab.initiate(family.connection, timeout=INITIATE_TIMEOUT)
    stop_fastredir(lab, fastredir)

    assert status == 0, (
        f"initiate {family.connection} failed with status {status}\n"
        f"{describe(lab, output, fastredir)}"
    )
    assert_redirected_to_gateway(
        lab,
        fastredir,
        redirector=family.redirector,
        redirect_target=gateway_name,
        client=family.client,
    )


def test_redirect_on_nat_t_port(lab: Lab, start_fastredir):
    """The client sends from port 4500 to port 4500, with the non-ESP marker.

    strongSwan 5.9.8 then sends its IKE_SA_INIT to the new gateway from port
    4500 to port 500, without the marker, and drops the gateway's response on
    port 4500 as ESP. So this test checks the REDIRECT and the client's next
    request, not an IKE SA.
    """
    fastredir = start_fastredir(IPV4.listen, [IPV4.gw1])

    # The IKE SA never comes up, so swanctl only needs to start the exchange.
    status, output = lab.initiate("redirect-v4-nat-t", timeout=1)
    request_to_gw1 = lab.wait_for_log(
        "gw1", r"parsed IKE_SA_INIT request 0 \[.* N\(REDIR_FROM\) .*\]", timeout=5
    )
    stop_fastredir(lab, fastredir)

    details = describe(lab, output, fastredir)
    from_nat_t_port = r"received packet: from 192\.0\.2\.1\[4500\] to 192\.0\.2\.10\[4500\]"
    assert log_lines(lab, "client", from_nat_t_port), (
        f"client received nothing from 192.0.2.1[4500] on port 4500\n{details}"
    )
    assert log_lines(lab, "client", r"parsed IKE_SA_INIT response 0 \[ N\(REDIR\) \]"), (
        f"client parsed no IKE_SA_INIT response with only N(REDIR)\n{details}"
    )
    assert log_lines(lab, "client", r"redirected to 192\.0\.2\.11$"), (
        f"client log has no 'redirected to 192.0.2.11'\n{details}"
    )
    assert request_to_gw1, f"gw1 parsed no IKE_SA_INIT request with N(REDIR_FROM)\n{details}"


def wait_for_established(lab: Lab, host: str, client: str, timeout: float) -> list[IkeSa]:
    deadline = time.monotonic() + timeout
    while True:
        sas = established_with_client(lab, host, client)
        if sas or time.monotonic() > deadline:
            return sas
        time.sleep(0.2)


def test_redirect_back_avoids_gateway(lab: Lab, start_fastredir):
    """A gateway sends its client back to fastredir, which must pick the other gateway.

    fastredir selects by client address, so without honoring REDIRECTED_FROM
    it would send the client to the same gateway again.
    """
    fastredir = start_fastredir(IPV4.listen, [f"{IPV4.gw1}=1", f"{IPV4.gw2}=1"])
    status, output = lab.initiate(IPV4.connection, timeout=INITIATE_TIMEOUT)
    assert status == 0, (
        f"initiate {IPV4.connection} failed with status {status}\n{describe(lab, output, fastredir)}"
    )
    gateways = {"gw1": IPV4.gw1, "gw2": IPV4.gw2}
    first = [host for host in gateways if established_with_client(lab, host, IPV4.client)]
    assert len(first) == 1, (
        f"expected an IKE SA on exactly one gateway, found it on {first}\n"
        f"{describe(lab, output, fastredir)}"
    )
    first_host = first[0]
    other_host = "gw2" if first_host == "gw1" else "gw1"

    # The gateway redirects its established client back to the redirector
    # with an INFORMATIONAL exchange. The client then sends IKE_SA_INIT with
    # N(REDIRECTED_FROM) naming that gateway.
    result = lab.swanctl(
        first_host,
        ["--redirect", "--peer-ip", IPV4.client, "--gateway", IPV4.redirector],
        check=False,
    )
    assert result.returncode == 0, (
        f"swanctl --redirect on {first_host} failed\n{result.stdout}{result.stderr}"
    )
    moved = wait_for_established(lab, other_host, IPV4.client, REDIRECT_BACK_TIMEOUT)
    stop_fastredir(lab, fastredir)

    details = describe(lab, output, fastredir)
    assert log_lines(lab, "client", rf"redirected to {re.escape(IPV4.redirector)}$"), (
        f"client did not follow the redirect of {first_host}\n{details}"
    )
    assert log_lines(lab, "client", rf"redirected to {re.escape(gateways[other_host])}$"), (
        f"fastredir did not send the client to {other_host}\n{details}"
    )
    assert moved, f"{other_host} has no ESTABLISHED IKE SA with {IPV4.client}\n{details}"


def predicted_gateways(clients: list[str], gateways: list[str]) -> dict[str, str]:
    """Return the gateway fastredir's own table picks for each client address.

    This uses fastredir's Python table builder and hash with the default
    selection settings (key "address", default table size and seed), the same
    settings `fastredir serve` uses without a configuration file.
    """
    from fastredir.config import parse_gateway_option
    from fastredir.selection import build_table, client_hash

    table = build_table([parse_gateway_option(gateway).to_gateway() for gateway in gateways])
    predicted = {}
    for client in clients:
        slot = client_hash(ipaddress.ip_address(client).packed, table.seed) % table.size
        predicted[client] = table.gateways[table.gateway_at(slot)].name
    return predicted


@pytest.mark.parametrize("lab", [extra_clients(5)], indirect=True, ids=["6-clients"])
def test_clients_follow_gateway_table(lab: Lab, start_fastredir):
    """Each client ends on the gateway that fastredir's table assigns to its address."""
    gateway_targets = [f"{IPV4.gw1}=1", f"{IPV4.gw2}=1"]
    clients = {spec.name: spec.ipv4 for spec in lab.hosts.values() if spec.role == CLIENT}
    predicted = predicted_gateways(list(clients.values()), gateway_targets)
    gateway_hosts = {IPV4.gw1: "gw1", IPV4.gw2: "gw2"}
    # NOTE: this checks the lab's client addresses, not fastredir. With the
    # default seed, the table sends some of these 6 clients to each gateway.
    assert set(predicted.values()) == set(gateway_hosts.keys()), (
        f"all lab clients map to one gateway ({predicted}); pick other client addresses"
    )
    fastredir = start_fastredir(IPV4.listen, gateway_targets)

    results = {}
    for host in clients:
        results[host] = lab.initiate(IPV4.connection, host=host, timeout=INITIATE_TIMEOUT)
    stop_fastredir(lab, fastredir)

    details = describe(lab, fastredir=fastredir)
    for host, (status, output) in results.items():
        assert status == 0, f"initiate on {host} failed with status {status}\n{output}\n{details}"
    for host, address in clients.items():
        expected = gateway_hosts[predicted[address]]
        assert established_with_client(lab, expected, address), (
            f"{host} ({address}) has no ESTABLISHED IKE SA on {expected}, the gateway "
            f"fastredir's table assigns to it\n{details}"
        )
