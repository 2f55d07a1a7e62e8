"""fastredir's fleet features against real strongSwan 5.9.8 gateways.

Each test writes a configuration file into the lab's directory and runs
`fastredir serve --config FILE` in the redirector namespace. The test drives
it from its own namespace with `fastredir status`, `drain`, `undrain` and
`reload`, which reach it over a unix socket in the lab's directory. Frequent
status reads send the status request over that socket directly.

The health and load tests dial real strongSwan clients through the
redirector and check where their IKE SAs end up. The drain and reload tests
run the C load generator of bench/ in the client namespace at LOAD_RATE
requests per second from LOAD_SOCKETS extra client addresses, and require
every request to get a valid REDIRECT while the gateway table changes.
IPv4 only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import pytest
import yaml

from .conftest import FASTREDIR_START_TIMEOUT, REPOSITORY_ROOT, LoadGenerator
from .lab import REDIRECTOR, Lab, Process, extra_clients
from .test_strongswan_redirect import established_with_client, predicted_gateways

pytestmark = pytest.mark.interop

REDIRECTOR_ADDRESS = "192.0.2.1"
GW1 = "192.0.2.11"
GW2 = "192.0.2.12"
GATEWAY_HOSTS = {GW1: "gw1", GW2: "gw2"}
LISTEN = ({"address": REDIRECTOR_ADDRESS, "port": 500}, {"address": REDIRECTOR_ADDRESS, "port": 4500})

HEALTH = {"enabled": True, "interval": 0.5, "timeout": 0.4, "fall": 2, "rise": 1}
# The maximum time a dead gateway may stay in the table: `fall` probe rounds,
# plus the last probe's timeout, plus 1 s for scheduling and log polling.
DOWN_DETECTION_LIMIT = HEALTH["fall"] * HEALTH["interval"] + HEALTH["timeout"] + 1.0
LOAD_POLL = {"interval": 0.5, "max_age": 10, "default": 0}

INITIATE_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0  # seconds for one `fastredir status/drain/undrain/reload`
STATE_TIMEOUT = 10.0  # seconds for a gateway state to show in the status

LOAD_RATE = 20_000  # requests per second
# Seconds of sending. The steps of the reload test took up to about 4.5 s of
# it on a 2-CPU machine with another process busy on one CPU.
LOAD_DURATION = 8.0
LOAD_SOCKETS = 64
LOAD_SOURCE_BASE = "192.0.2.128"  # the sockets send from .128 to .191
LOAD_READY_TIMEOUT = 10.0  # seconds the generator waits for a first response
LOAD_DRAIN = 0.5  # seconds the generator waits for responses after its last send
# Requests fastredir must have received before the test changes anything.
RECEIVED_BEFORE_CHANGES = 2_000

# Six clients besides the default one, at 192.0.2.21 to 192.0.2.26.
FLEET_CLIENTS = extra_clients(6)


# ---------------------------------------------------------------------------
# fastredir with a configuration file and a control socket
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Redirector:
    """A running `fastredir serve --config FILE` and its control socket."""

    lab: Lab
    process: Process
    config_path: Path
    control_path: Path

    def write_config(self, config: dict) -> None:
        write_yaml(self.config_path, config)

    def command(self, *args: str) -> subprocess.CompletedProcess:
        """Run `python -m fastredir ARGS --control SOCKET` in the test's namespace."""
        argv = [sys.executable, "-m", "fastredir", *args, "--control", str(self.control_path)]
        try:
            return subprocess.run(
                argv,
                cwd=REPOSITORY_ROOT,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"'fastredir {' '.join(args)}' timed out after {COMMAND_TIMEOUT} s\n{self.describe()}"
            )

    def status(self) -> dict:
        """Return the status, requested over the control socket by this process.

        This takes milliseconds where `cli_status` starts an interpreter,
        which keeps polls and reads right after a change short.
        """
        request = json.dumps({"command": "status"}).encode() + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(COMMAND_TIMEOUT)
            connection.connect(str(self.control_path))
            connection.sendall(request)
            reply = connection.makefile("rb").readline()
        message = json.loads(reply)
        assert message.get("ok"), f"the status request failed: {message}\n{self.describe()}"
        return message["status"]

    def cli_status(self) -> dict:
        """Return the status that `fastredir status --json` prints."""
        result = self.command("status", "--json")
        assert result.returncode == 0, (
            f"fastredir status exited with status {result.returncode}: {result.stderr}\n{self.describe()}"
        )
        return json.loads(result.stdout)

    def wait_for_status(self, condition: Callable[[dict], bool], description: str) -> dict:
        """Poll the status until `condition` is true and return it.

        Fails the test after STATE_TIMEOUT seconds.
        """
        deadline = time.monotonic() + STATE_TIMEOUT
        while True:
            status = self.status()
            if condition(status):
                return status
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {STATE_TIMEOUT} s waiting until {description}; last status:\n"
                    f"{json.dumps(status, indent=1)}\n{self.describe()}"
                )
            time.sleep(0.2)

    def describe(self) -> str:
        return (
            f"===== fastredir (pid {self.process.pid}, exit status "
            f"{self.process.popen.returncode}) =====\n{self.process.output()}"
        )


def write_yaml(path: Path, config: dict) -> None:
    # Written beside the target and renamed, so a reload never reads half a file.
    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(partial, path)


def fleet_config(lab: Lab, gateways: list[dict], **sections) -> dict:
    """Return a configuration serving LISTEN with a control socket in the lab's directory."""
    assert lab.workdir is not None
    return {
        "listen": [dict(listener) for listener in LISTEN],
        "gateways": gateways,
        "control": {"socket": str(lab.workdir / "control.sock")},
        "logging": {"stats_interval": 0},
        **sections,
    }


@pytest.fixture
def start_redirector(lab: Lab) -> Callable[[dict], Redirector]:
    """Return a function that writes a configuration and starts `fastredir serve --config`.

    It waits until every listener and the control endpoint are logged. The
    lab stops the process at teardown if the test has not stopped it.
    """

    def start(config: dict) -> Redirector:
        assert lab.workdir is not None
        config_path = lab.workdir / "fastredir.yaml"
        write_yaml(config_path, config)
        process = lab.spawn(
            REDIRECTOR,
            [sys.executable, "-m", "fastredir", "serve", "--config", str(config_path)],
            "fastredir",
            cwd=REPOSITORY_ROOT,
            env={"FASTREDIR_PURE": "0"},
        )
        lab.wait_for_output(
            process, "listening on", count=len(config["listen"]), timeout=FASTREDIR_START_TIMEOUT
        )
        lab.wait_for_output(process, "control endpoint on", timeout=FASTREDIR_START_TIMEOUT)
        return Redirector(lab, process, config_path, Path(config["control"]["socket"]))

    return start


def gateway_status(status: dict, name: str) -> dict:
    for gateway in status["gateways"]:
        if gateway["name"] == name:
            return gateway
    raise AssertionError(f"gateway {name} is not in the status: {json.dumps(status['gateways'])}")


def stop_redirector(lab: Lab, redirector: Redirector) -> None:
    status = lab.stop(redirector.process)
    assert status == 0, f"fastredir exited with status {status} after SIGTERM\n{redirector.describe()}"


# ---------------------------------------------------------------------------
# strongSwan clients
# ---------------------------------------------------------------------------


def client_address(lab: Lab, host: str) -> str:
    return lab.hosts[host].ipv4


def dial(lab: Lab, hosts: list[str], connection: str) -> dict[str, tuple[int, str]]:
    """Initiate `connection` on each host in turn, and return swanctl's status and output per host."""
    return {host: lab.initiate(connection, host=host, timeout=INITIATE_TIMEOUT) for host in hosts}


def assert_dialled(results: dict[str, tuple[int, str]], details: str) -> None:
    for host, (status, output) in results.items():
        assert status == 0, f"initiate on {host} failed with status {status}\n{output}\n{details}"


def assert_clients_on(
    lab: Lab,
    hosts: list[str],
    expected: str,
    details: str,
    gateways: Iterable[str] = tuple(GATEWAY_HOSTS.values()),
) -> None:
    """Check that each client has ESTABLISHED IKE SAs with gateway host `expected` only.

    Both ends are checked: the client's own SAs, and the SAs of the gateway
    hosts in `gateways`.
    """
    expected_address = lab.hosts[expected].ipv4
    for host in hosts:
        address = client_address(lab, host)
        remotes = {sa.remote_address for sa in lab.ike_sas(host) if sa.state == "ESTABLISHED"}
        assert remotes == {expected_address}, (
            f"{host} ({address}) has ESTABLISHED IKE SAs with {sorted(remotes)}, "
            f"expected only {expected_address}\n{details}"
        )
        for gateway in gateways:
            sas = established_with_client(lab, gateway, address)
            if gateway == expected:
                assert sas, f"{host} ({address}) has no ESTABLISHED IKE SA on {gateway}\n{details}"
            else:
                assert not sas, f"{host} ({address}) has an IKE SA on {gateway}: {sas}\n{details}"


def assert_table_prefers_gw1(lab: Lab, hosts: list[str]) -> None:
    """Check that fastredir's table alone would send these clients to gw1.

    NOTE: this checks the lab's client addresses, not fastredir. A test that
    expects these clients on gw2 proves nothing when the table sends them
    there anyway.
    """
    addresses = [client_address(lab, host) for host in hosts]
    predicted = predicted_gateways(addresses, [f"{GW1}=1", f"{GW2}=1"])
    assert set(predicted.values()) == {GW1}, (
        f"with gw1 and gw2 both usable, the table does not send all of {hosts} to gw1 "
        f"({predicted}); pick other clients"
    )


def describe_lab(lab: Lab, redirector: Redirector) -> str:
    return f"{redirector.describe()}\n{lab.describe()}"


# ---------------------------------------------------------------------------
# The load generator
# ---------------------------------------------------------------------------


def load_source_addresses() -> list[str]:
    base = ipaddress.IPv4Address(LOAD_SOURCE_BASE)
    return [str(base + index) for index in range(LOAD_SOCKETS)]


def start_load(lab: Lab, generator: LoadGenerator) -> Process:
    """Start the load generator in the client namespace, aimed at the redirector's port 500."""
    lab.add_ipv4_addresses("client", load_source_addresses())
    argv = [
        str(generator.binary),
        "--target", REDIRECTOR_ADDRESS,
        "--port", "500",
        "--template", str(generator.template),
        "--nonce-offset", str(generator.nonce_offset),
        "--nonce-length", str(generator.nonce_length),
        "--source-base", LOAD_SOURCE_BASE,
        "--sockets", str(LOAD_SOCKETS),
        "--rate", str(LOAD_RATE),
        "--duration", str(LOAD_DURATION),
        "--wait-ready", str(LOAD_READY_TIMEOUT),
        "--drain", str(LOAD_DRAIN),
    ]  # fmt: skip
    return lab.spawn("client", argv, "loadgen")


def finish_load(lab: Lab, load: Process, redirector: Redirector) -> dict:
    """Wait for the load generator and return its JSON result."""
    timeout = LOAD_READY_TIMEOUT + LOAD_DURATION + LOAD_DRAIN + 30
    try:
        load.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        lab.stop(load)
        pytest.fail(f"the load generator ran longer than {timeout} s\n{redirector.describe()}")
    output = load.output()
    assert load.popen.returncode == 0, (
        f"the load generator exited with status {load.popen.returncode}:\n{output}\n"
        f"{redirector.describe()}"
    )
    # stdout and stderr share the log, and the result is the one JSON object in it.
    return json.loads(output[output.index("{") :])


def wait_until_load_flows(redirector: Redirector) -> dict:
    return redirector.wait_for_status(
        lambda status: status["received"] >= RECEIVED_BEFORE_CHANGES,
        f"fastredir received {RECEIVED_BEFORE_CHANGES} requests from the load generator",
    )


def assert_all_answered(result: dict, redirector: Redirector) -> None:
    details = f"load generator result: {json.dumps(result)}\n{redirector.describe()}"
    # A generator that fell far behind its rate would not test much.
    assert result["sent"] >= 0.8 * LOAD_RATE * LOAD_DURATION, (
        f"the load generator sent {result['sent']} requests, less than 80% of "
        f"{LOAD_RATE}/s for {LOAD_DURATION} s\n{details}"
    )
    assert result["answers_invalid"] == 0, f"{result['answers_invalid']} answers were invalid\n{details}"
    assert result["not_answered"] == 0, (
        f"{result['not_answered']} of {result['sent']} requests were not answered\n{details}"
    )


def assert_load_still_running(load: Process, step: str) -> None:
    # NOTE: a timing limit of the test, not a check of fastredir.
    assert load.is_running(), (
        f"the load generator ended before {step}; raise LOAD_DURATION ({LOAD_DURATION} s)"
    )


# ---------------------------------------------------------------------------
# Health checks
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GatewayFailure:
    """A way to take gw1's charon out of service and to bring it back."""

    description: str
    fail: Callable[[Lab], None]
    recover: Callable[[Lab], None]


def stop_charon(lab: Lab) -> None:
    lab.stop(lab.strongswan["gw1"].process)


def restart_charon(lab: Lab) -> None:
    lab.restart_strongswan("gw1")


def freeze_charon(lab: Lab) -> None:
    os.kill(lab.strongswan["gw1"].process.pid, signal.SIGSTOP)


def thaw_charon(lab: Lab) -> None:
    os.kill(lab.strongswan["gw1"].process.pid, signal.SIGCONT)


GATEWAY_FAILURES = {
    # Port 500 is closed, so each probe gets an ICMP port unreachable at once.
    "stopped": GatewayFailure("its charon stopped", stop_charon, restart_charon),
    # The socket stays open and nothing responds, so each probe times out.
    "frozen": GatewayFailure("its charon was frozen with SIGSTOP", freeze_charon, thaw_charon),
}


@pytest.mark.parametrize("failure", GATEWAY_FAILURES.values(), ids=GATEWAY_FAILURES.keys())
@pytest.mark.parametrize("lab", [extra_clients(3)], indirect=True, ids=["4-clients"])
def test_health_dead_gateway_leaves(lab: Lab, start_redirector, failure: GatewayFailure):
    """gw1 fails: fastredir marks it down in time and sends clients to gw2 only.

    When gw1 responds again, one answered probe (rise 1) brings it back.
    """
    clients_after_down = ["client", "client2", "client3"]
    client_after_up = "client4"
    assert_table_prefers_gw1(lab, [*clients_after_down, client_after_up])
    redirector = start_redirector(
        fleet_config(lab, [{"target": GW1}, {"target": GW2}], health=HEALTH)
    )
    redirector.wait_for_status(
        lambda status: all(gateway["health"] == "up" for gateway in status["gateways"]),
        "both gateways are up",
    )

    failure.fail(lab)
    failed = time.monotonic()
    try:
        lab.wait_for_output(
            redirector.process, f"gateway {GW1} is down", timeout=DOWN_DETECTION_LIMIT + 5
        )
        detection = time.monotonic() - failed
        assert detection <= DOWN_DETECTION_LIMIT, (
            f"fastredir logged gw1 down {detection:.2f} s after {failure.description}, later "
            f"than {DOWN_DETECTION_LIMIT:.1f} s\n{redirector.describe()}"
        )
        gw1 = gateway_status(redirector.cli_status(), GW1)
        assert gw1["health"] == "down", f"gw1 status after it went down: {gw1}"
        assert not gw1["in_table"], f"gw1 status after it went down: {gw1}"

        results = dial(lab, clients_after_down, "redirect-v4")
        # gw1's charon cannot respond to swanctl now, so only the other hosts are described.
        details = f"{redirector.describe()}\n{lab.describe(host for host in lab.hosts if host != 'gw1')}"
        assert_dialled(results, details)
        assert_clients_on(lab, clients_after_down, "gw2", details, gateways=["gw2"])
        assert gateway_status(redirector.status(), GW1)["redirects"] == 0
    finally:
        failure.recover(lab)

    redirector.wait_for_status(
        lambda status: gateway_status(status, GW1)["health"] == "up"
        and gateway_status(status, GW1)["in_table"],
        "gw1 is up and in the table again",
    )
    assert f"gateway {GW1} is up" in redirector.process.output()
    results = dial(lab, [client_after_up], "redirect-v4")
    stop_redirector(lab, redirector)

    details = describe_lab(lab, redirector)
    assert_dialled(results, details)
    assert_clients_on(lab, [client_after_up], "gw1", details)


# ---------------------------------------------------------------------------
# Load read over VICI
# ---------------------------------------------------------------------------


def vici_gateway(lab: Lab, target: str, **settings) -> dict:
    host = GATEWAY_HOSTS[target]
    return {"target": target, **settings, "load": {"vici": lab.strongswan[host].vici_uri}}


@pytest.mark.parametrize("lab", [FLEET_CLIENTS], indirect=True, ids=["7-clients"])
def test_vici_load_steers_clients(lab: Lab, start_redirector):
    """With 4 IKE SAs on gw1 and none on gw2, new clients go to the less loaded gw2."""
    redirected = ["client", "client2", "client3"]
    on_gw1 = ["client4", "client5", "client6", "client7"]
    assert_table_prefers_gw1(lab, redirected)
    redirector = start_redirector(
        fleet_config(
            lab,
            [vici_gateway(lab, GW1, capacity=10), vici_gateway(lab, GW2, capacity=10)],
            load=LOAD_POLL,
        )
    )
    assert_dialled(dial(lab, on_gw1, "gw1-v4"), describe_lab(lab, redirector))
    redirector.wait_for_status(
        lambda status: gateway_status(status, GW1)["load"] == len(on_gw1)
        and gateway_status(status, GW2)["load"] == 0,
        f"fastredir reads a load of {len(on_gw1)} on gw1 and 0 on gw2 over VICI",
    )

    # Each client adds 1 to gw2's load, so gw2 stays below gw1's 4 throughout.
    results = dial(lab, redirected, "redirect-v4")
    details = describe_lab(lab, redirector)
    assert_dialled(results, details)
    assert_clients_on(lab, redirected, "gw2", details)
    status = redirector.wait_for_status(
        lambda status: gateway_status(status, GW2)["load"] == len(redirected),
        f"fastredir reads a load of {len(redirected)} on gw2 over VICI",
    )
    stop_redirector(lab, redirector)

    assert gateway_status(status, GW1)["redirects"] == 0, json.dumps(status["gateways"])
    assert gateway_status(status, GW2)["redirects"] >= len(redirected), json.dumps(status["gateways"])


@pytest.mark.parametrize("lab", [FLEET_CLIENTS], indirect=True, ids=["7-clients"])
def test_high_water_gateway_gets_no_clients(lab: Lab, start_redirector):
    """gw1 is at its high-water mark; clients go to gw2 although gw2's load share is higher.

    gw1 has 2 IKE SAs of a capacity of 100 (2%) with a high-water mark of
    2, and gw2 has 1 of 10 (10%). Load shares alone would pick gw1.
    """
    redirected = ["client", "client2", "client3"]
    on_gw1 = ["client4", "client5"]
    on_gw2 = ["client6"]
    assert_table_prefers_gw1(lab, redirected)
    redirector = start_redirector(
        fleet_config(
            lab,
            [
                vici_gateway(lab, GW1, capacity=100, high_water=len(on_gw1)),
                vici_gateway(lab, GW2, capacity=10),
            ],
            load=LOAD_POLL,
        )
    )
    assert_dialled(dial(lab, on_gw1, "gw1-v4"), describe_lab(lab, redirector))
    assert_dialled(dial(lab, on_gw2, "gw2-v4"), describe_lab(lab, redirector))
    status = redirector.wait_for_status(
        lambda status: gateway_status(status, GW1)["load"] == len(on_gw1)
        and gateway_status(status, GW2)["load"] == len(on_gw2),
        f"fastredir reads a load of {len(on_gw1)} on gw1 and {len(on_gw2)} on gw2 over VICI",
    )
    gw1 = gateway_status(status, GW1)
    assert gw1["full"], f"gw1 is at its high-water mark but not full: {gw1}"
    assert not gateway_status(status, GW2)["full"], json.dumps(status["gateways"])

    results = dial(lab, redirected, "redirect-v4")
    status = redirector.status()
    stop_redirector(lab, redirector)

    details = describe_lab(lab, redirector)
    assert_dialled(results, details)
    assert_clients_on(lab, redirected, "gw2", details)
    assert f"gateway {GW1} is full" in redirector.process.output()
    assert gateway_status(status, GW1)["redirects"] == 0, json.dumps(status["gateways"])


# ---------------------------------------------------------------------------
# Drain and reload under load
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_drain_under_load(lab: Lab, start_redirector, load_generator: LoadGenerator, workers: int):
    """Drain gw1 while 20,000 requests/s arrive: no request goes unanswered, gw1 gets none.

    NOTE: the first status after `drain` returns is read a few milliseconds
    after the command exits, so a redirect to gw1 within that gap goes unseen.
    """
    redirector = start_redirector(
        fleet_config(lab, [{"target": GW1}, {"target": GW2}], workers=workers)
    )
    load = start_load(lab, load_generator)
    wait_until_load_flows(redirector)
    time.sleep(1.0)

    before = redirector.cli_status()
    assert gateway_status(before, GW1)["redirects"] > 0, (
        f"no load generator address maps to gw1: {json.dumps(before['gateways'])}"
    )
    drain = redirector.command("drain", GW1)
    assert drain.returncode == 0, f"drain failed: {drain.stderr}\n{redirector.describe()}"
    assert drain.stdout.strip() == f"{GW1} drained"
    drained = redirector.status()
    time.sleep(1.5)
    later = redirector.status()
    assert_load_still_running(load, "the drained gateway's counter was read")

    gw1, gw1_later = gateway_status(drained, GW1), gateway_status(later, GW1)
    assert gw1["drained"], f"gw1 after drain: {gw1}"
    assert not gw1["in_table"], f"gw1 after drain: {gw1}"
    assert gw1_later["redirects"] == gw1["redirects"], (
        f"gw1 got {gw1_later['redirects'] - gw1['redirects']} redirects after the drain returned"
    )
    assert gateway_status(later, GW2)["redirects"] > gateway_status(drained, GW2)["redirects"]
    text = redirector.command("status")
    assert text.returncode == 0, f"fastredir status failed: {text.stderr}"
    gw1_rows = [line.split() for line in text.stdout.splitlines() if line.startswith(f"{GW1} ")]
    # Columns: gateway, health ("not checked"), drained, in table, ...
    assert gw1_rows and gw1_rows[0][3:5] == ["yes", "no"], f"fastredir status:\n{text.stdout}"

    undrain = redirector.command("undrain", GW1)
    assert undrain.returncode == 0, f"undrain failed: {undrain.stderr}\n{redirector.describe()}"
    assert undrain.stdout.strip() == f"{GW1} undrained"
    time.sleep(1.0)
    undrained = redirector.status()
    assert_load_still_running(load, "the undrained gateway's counter was read")
    gw1_undrained = gateway_status(undrained, GW1)
    assert not gw1_undrained["drained"], f"gw1 after undrain: {gw1_undrained}"
    assert gw1_undrained["in_table"], f"gw1 after undrain: {gw1_undrained}"
    assert gw1_undrained["redirects"] > gw1_later["redirects"], (
        f"gw1 got no redirects after the undrain: {gw1_undrained}"
    )

    result = finish_load(lab, load, redirector)
    stop_redirector(lab, redirector)
    assert_all_answered(result, redirector)


RELOADS = 10


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_reload_under_load(lab: Lab, start_redirector, load_generator: LoadGenerator, workers: int):
    """Ten reloads and one rejected file while 20,000 requests/s arrive: all are answered.

    The reloads alternate between gw1 alone and gw1 with gw2 at other
    weights. The last one is a SIGHUP, the others are `fastredir reload`.
    Half-way, a file with an invalid weight must be rejected and leave the
    running configuration in place.
    """
    one_gateway = fleet_config(lab, [{"target": GW1}], workers=workers)
    two_gateways = fleet_config(
        lab, [{"target": GW1, "weight": 2}, {"target": GW2, "weight": 1}], workers=workers
    )
    invalid = fleet_config(lab, [{"target": GW1, "weight": 0}, {"target": GW2}], workers=workers)
    redirector = start_redirector(two_gateways)
    load = start_load(lab, load_generator)
    wait_until_load_flows(redirector)

    expected_names = [GW1, GW2]
    for number in range(1, RELOADS + 1):
        config = one_gateway if number % 2 else two_gateways
        expected_names = [gateway["target"] for gateway in config["gateways"]]
        redirector.write_config(config)
        if number == RELOADS:
            os.kill(redirector.process.pid, signal.SIGHUP)
            status = redirector.wait_for_status(
                lambda status: status["reloads"]["done"] == RELOADS,
                f"the SIGHUP reload is done ({RELOADS} reloads done)",
            )
        else:
            reload = redirector.command("reload")
            assert reload.returncode == 0, (
                f"reload {number} failed: {reload.stderr}\n{redirector.describe()}"
            )
            assert reload.stdout.strip() == f"reload done from {redirector.config_path}"
            status = redirector.status()
        names = [gateway["name"] for gateway in status["gateways"]]
        assert names == expected_names, f"gateways after reload {number}: {names}"

        if number == RELOADS // 2:
            redirector.write_config(invalid)
            rejected = redirector.command("reload")
            assert rejected.returncode == 1, (
                f"the invalid file was not rejected: {rejected.stdout}{rejected.stderr}\n"
                f"{redirector.describe()}"
            )
            assert "reload refused" in rejected.stderr
            assert "weight" in rejected.stderr, rejected.stderr
            status = redirector.status()
            names = [gateway["name"] for gateway in status["gateways"]]
            assert names == expected_names, f"gateways after the rejected reload: {names}"
            assert status["reloads"] == {"done": number, "refused": 1}
    assert_load_still_running(load, f"the last of {RELOADS} reloads was done")

    result = finish_load(lab, load, redirector)
    status = redirector.cli_status()
    stop_redirector(lab, redirector)
    output = redirector.process.output()

    assert status["reloads"] == {"done": RELOADS, "refused": 1}
    assert sum("reload done from" in line for line in output.splitlines()) == RELOADS, output
    assert sum(
        "reload refused, the running configuration stays" in line for line in output.splitlines()
    ) == 1, output
    assert_all_answered(result, redirector)
