"""A running `fastredir serve` driven through its control endpoint and
scraped through its metrics endpoint, with one worker and with two."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.captures import read_capture
from tests.serveproc import ServeProcess

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
REQUEST = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
GATEWAYS = ("192.0.2.11", "192.0.2.12", "192.0.2.13")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def config_text(port: int, control: Path, metrics_port: int, workers: int, gateways=GATEWAYS) -> str:
    listed = "".join(f"  - {g}\n" for g in gateways)
    return (
        f"listen:\n  - address: 127.0.0.1\n    port: {port}\n"
        f"gateways:\n{listed}"
        f"workers: {workers}\n"
        f"control: {{socket: {control}}}\n"
        f'metrics: {{listen: "127.0.0.1:{metrics_port}"}}\n'
        "logging: {stats_interval: 0}\n"
    )


def fastredir(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastredir", *args],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def ask(port: int, source: str) -> str | None:
    """Send the recorded request from `source` and return the gateway the
    REDIRECT names (IPv4 identities only), or None without an answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(1.0)
        sock.sendto(REQUEST, ("127.0.0.1", port))
        try:
            reply = sock.recv(65535)
        except socket.timeout:
            return None
    return socket.inet_ntoa(reply[38:42])


SOURCES = [f"127.0.{i // 200}.{i % 200 + 20}" for i in range(60)]


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def instance(request, tmp_path):
    port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
    control = tmp_path / "control.sock"
    path = tmp_path / "fastredir.yaml"
    path.write_text(config_text(port, control, metrics_port, request.param))
    process = ServeProcess("--config", str(path)).start(listeners=1)
    deadline = time.monotonic() + 10
    while not control.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield process, port, str(control), metrics_port, path, request.param
    process.stop()


def status(control: str) -> dict:
    result = fastredir("status", "--control", control, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_lists_gateways(instance):
    process, port, control, *_ = instance
    assert ask(port, "127.0.0.20") in GATEWAYS
    current = status(control)
    assert [g["name"] for g in current["gateways"]] == list(GATEWAYS)
    assert all(g["in_table"] and not g["drained"] for g in current["gateways"])
    assert current["received"] == 1
    assert current["answered"] == 1
    text = fastredir("status", "--control", control)
    assert text.returncode == 0
    assert "192.0.2.12" in text.stdout
    assert "received 1, answered 1" in text.stdout


def test_drain_stops_new_redirects(instance):
    process, port, control, *_ = instance
    before = {ask(port, source) for source in SOURCES}
    assert "192.0.2.12" in before
    result = fastredir("drain", "192.0.2.12", "--control", control)
    assert result.returncode == 0
    assert result.stdout.strip() == "192.0.2.12 drained"
    after = [ask(port, source) for source in SOURCES]
    assert None not in after
    assert "192.0.2.12" not in after
    assert fastredir("undrain", "192.0.2.12", "--control", control).returncode == 0
    assert "192.0.2.12" in {ask(port, source) for source in SOURCES}
    assert "gateway 192.0.2.12 drained: no new clients" in process.stop_and_output()


def test_drain_unknown_gateway(instance):
    _, _, control, *_ = instance
    result = fastredir("drain", "192.0.2.99", "--control", control)
    assert result.returncode == 1
    assert "no gateway '192.0.2.99'; the gateways are: 192.0.2.11, 192.0.2.12, 192.0.2.13" in result.stderr


def test_reload_applies_valid_refuses_invalid(instance):
    process, port, control, metrics_port, path, workers = instance
    path.write_text(config_text(port, Path(control), metrics_port, workers, gateways=("192.0.2.31",)))
    assert fastredir("reload", "--control", control).returncode == 0
    assert {ask(port, source) for source in SOURCES[:10]} == {"192.0.2.31"}

    path.write_text("listen: [\n")
    refused = fastredir("reload", "--control", control)
    assert refused.returncode == 1
    assert "reload refused" in refused.stderr
    assert "invalid YAML" in refused.stderr
    assert {ask(port, source) for source in SOURCES[:10]} == {"192.0.2.31"}
    current = status(control)
    assert current["reloads"] == {"done": 1, "refused": 1}

    path.write_text(config_text(port, Path(control), metrics_port, workers, gateways=("192.0.2.32",)))
    os.kill(process.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ask(port, SOURCES[0]) != "192.0.2.32":
        time.sleep(0.1)
    assert ask(port, SOURCES[0]) == "192.0.2.32"


def scrape(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^(fastredir_\w+)(\{[^}]*\})? (\S+)$", line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics_add_up(instance):
    _, port, control, metrics_port, *_ = instance
    for source in SOURCES[:20]:
        assert ask(port, source) is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"", b"\x00" * 40, REQUEST[:-1], bytes(8) + REQUEST[8:]):
            sock.sendto(junk, ("127.0.0.1", port))
    time.sleep(0.5)
    samples = scrape(metrics_port)
    labels = f'family="ipv4",listener="127.0.0.1:{port}"'
    received = samples[f"fastredir_requests_received_total{{{labels}}}"]
    answered = sum(v for k, v in samples.items() if k.startswith("fastredir_requests_answered_total"))
    dropped = sum(v for k, v in samples.items() if k.startswith("fastredir_requests_dropped_total"))
    assert received == 24
    assert answered == 20
    assert received == answered + dropped
    redirects = sum(v for k, v in samples.items() if k.startswith("fastredir_redirects_total"))
    assert redirects == 20
    assert samples['fastredir_gateway_up{gateway="192.0.2.11"}'] == 1.0
    assert samples["fastredir_table_rebuilds_total"] == 0.0
    assert samples['fastredir_batch_size_bucket{le="+Inf"}'] >= 1


def test_dead_worker_restarted(tmp_path):
    port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
    path = tmp_path / "fastredir.yaml"
    path.write_text(config_text(port, tmp_path / "control.sock", metrics_port, 2))
    with ServeProcess("--config", str(path)) as process:
        process.start(listeners=1)
        process.wait_for("worker 1 started (pid ")
        pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", process.output)]
        os.kill(pids[0], signal.SIGKILL)
        answered = sum(ask(port, source) is not None for source in SOURCES)
        process.wait_for("restarting it in 1 s")
        process.wait_for("worker 0 started (pid ", count=2)
        answered_after = sum(ask(port, source) is not None for source in SOURCES)
        output = process.stop_and_output()
    # The other worker keeps answering its share meanwhile.  The socket of
    # the dead worker stays open in the supervisor, so datagrams hashed to
    # it wait there until the restarted worker reads them (later than this
    # client's one-second timeout, at times).
    assert answered >= len(SOURCES) // 4
    assert answered_after == len(SOURCES)
    assert f"worker 0 (pid {pids[0]}) exited with status -9; restarting it in 1 s" in output


def test_commands_find_endpoint_in_broken_file(instance):
    # While the rest of the file is being fixed, its control section still
    # leads the commands to the instance, and a refused reload is counted.
    process, port, control, metrics_port, path, workers = instance
    path.write_text(config_text(port, Path(control), metrics_port, workers).replace("  - 192.0.2.12\n", "  - target: 192.0.2.12\n    weight: 0\n"))
    refused = fastredir("reload", "--config", str(path))
    assert refused.returncode == 1
    assert "gateways[1].weight: must be an integer from 1 to 65535, not 0" in refused.stderr
    current = json.loads(fastredir("status", "--config", str(path), "--json").stdout)
    assert current["reloads"] == {"done": 0, "refused": 1}


def test_unchanged_reload_keeps_table(instance):
    _, _, control, *_ = instance
    before = status(control)["generation"]
    done = fastredir("reload", "--control", control)
    assert done.returncode == 0, done.stderr
    assert status(control)["generation"] == before


def test_relative_control_path(instance, monkeypatch):
    _, _, control, *_ = instance
    directory, name = os.path.split(control)
    result = subprocess.run(
        [sys.executable, "-m", "fastredir", "status", "--control", name],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_probe_from_source(instance):
    _, port, control, *_ = instance
    result = fastredir("probe", f"127.0.0.1:{port}", "--source", "127.0.0.77", "--json")
    assert result.returncode == 0, result.stderr
    expected = ask(port, "127.0.0.77")
    assert json.loads(result.stdout)["redirect"]["gateway"] == expected
