"""Tests of the `fastredir` command line, run as subprocesses.

Servers listen on 127.0.0.1 only, on high ports the kernel hands out, and
every process a test starts is stopped by its pid when the test ends.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

import fastredir
from fastredir.probe import run_probe

REPO = pathlib.Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT = 20.0  # seconds for a command that should end by itself
STARTUP_TIMEOUT = 10.0  # seconds for `serve` to bind and log its start
STOP_TIMEOUT = 5.0  # seconds for `serve` to exit after SIGTERM

VALID_FILE = """\
listen:
  - address: 127.0.0.1
    port: 40500
gateways:
  - 192.0.2.11
"""

INVALID_FILE = """\
listen:
  - address: 127.0.0.1
gateways:
  - target: 192.0.2.11
    weight: 0
"""


def cli_environment() -> dict[str, str]:
    """Return the environment for a subprocess that imports this checkout."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    environment.pop("FASTREDIR_PURE", None)
    return environment


def fastredir_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastredir", *args]


def run_cli(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        fastredir_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_environment(),
        cwd=REPO,
    )


def free_udp_port() -> int:
    """Return a UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """A `fastredir serve` subprocess with its stderr in a file."""

    def __init__(self, args: tuple[str, ...], log_path: pathlib.Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(
            fastredir_command("serve", *args),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=cli_environment(),
            cwd=REPO,
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def wait_for_log(self, text: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until `text` appears in stderr; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with status {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        pytest.fail(f"serve did not log {text!r} within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        """Send SIGTERM, then SIGKILL if the process outlives STOP_TIMEOUT."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        self._log.close()


def start_serve(args: tuple[str, ...], log_path: pathlib.Path, request) -> ServeProcess:
    """Start serve, stop it when the requesting test or module ends, and
    wait until it has bound its sockets."""
    server = ServeProcess(args, log_path)
    request.addfinalizer(server.stop)
    server.wait_for_log("fast path:")
    return server


@pytest.fixture(scope="module")
def redirector(request, tmp_path_factory):
    """A redirector on a free port sending every client to 192.0.2.11."""
    port = free_udp_port()
    log_path = tmp_path_factory.mktemp("serve") / "stderr.log"
    start_serve(("--listen", f"127.0.0.1:{port}", "--gateway", "192.0.2.11"), log_path, request)
    return port


# ---------------------------------------------------------------------------
# Commands that end by themselves
# ---------------------------------------------------------------------------


def test_version():
    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout.strip() == f"fastredir {fastredir.__version__}"


def test_check_config_valid(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(VALID_FILE, encoding="utf-8")

    result = run_cli("check-config", str(path))

    assert result.returncode == 0
    assert f"{path}: valid: 1 listener, 1 gateway, 1 worker" in result.stdout
    assert result.stderr == ""


def test_check_config_invalid(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(INVALID_FILE, encoding="utf-8")

    result = run_cli("check-config", str(path))

    assert result.returncode == 1
    assert f"{path}:5: gateways[0].weight: " in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_config_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"

    result = run_cli("check-config", str(path))

    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_invalid_file(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(INVALID_FILE, encoding="utf-8")

    result = run_cli("serve", "--config", str(path))

    assert result.returncode == 1
    assert f"{path}:5: gateways[0].weight: " in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_invalid_listen_option():
    result = run_cli("serve", "--listen", "127.0.0.1:99999")

    assert result.returncode == 2
    assert "--listen" in result.stderr
    assert "port must be 1 to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_listen_equals_gateway():
    port = free_udp_port()

    result = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--gateway", "127.0.0.1")

    assert result.returncode == 1
    assert "also a listen address" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_port_in_use():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]

        result = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--gateway", "192.0.2.11")

    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "already" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------
# A running redirector
# ---------------------------------------------------------------------------


def test_probe_redirected(redirector):
    result = run_cli("probe", f"127.0.0.1:{redirector}", "--timeout", "1", "--attempts", "3")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "REDIRECT to 192.0.2.11 (IPV4 identity)" in result.stdout
    assert "nonce data equals the Ni sent" in result.stdout


def test_probe_json(redirector):
    result = run_cli("probe", f"127.0.0.1:{redirector}", "--json", "--timeout", "1", "--attempts", "3")

    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["answered"] is True
    assert outcome["redirect"]["gateway"] == "192.0.2.11"
    assert outcome["redirect"]["type"] == "IPV4"
    assert outcome["redirect"]["nonce_echoed"] is True
    assert outcome["responder_spi"] == "00" * 8
    assert outcome["message_id"] == 0
    assert outcome["problems"] == []


def test_probe_no_redirect_supported(redirector):
    # A client that sent no REDIRECT_SUPPORTED cannot follow a REDIRECT,
    # so the redirector sends nothing back.
    result = run_cli(
        "probe", f"127.0.0.1:{redirector}", "--no-redirect-supported", "--timeout", "0.3", "--attempts", "1"
    )

    # No answer is the correct outcome here, so probe exits 0.
    assert result.returncode == 0
    assert "no answer" in result.stdout
    assert "no REDIRECT is correct for a client without REDIRECT_SUPPORTED" in result.stdout
    assert "REDIRECT to" not in result.stdout


def test_probe_redirected_from(request, tmp_path):
    # A client whose REDIRECTED_FROM names 192.0.2.11 is sent to the other
    # gateway, whatever its hash slot.
    port = free_udp_port()
    args = ("--listen", f"127.0.0.1:{port}", "--gateway", "192.0.2.11", "--gateway", "192.0.2.12")
    start_serve(args, tmp_path / "stderr.log", request)

    for _ in range(3):
        result = run_cli(
            "probe", f"127.0.0.1:{port}", "--redirected-from", "192.0.2.11", "--timeout", "1", "--attempts", "3"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "REDIRECT to 192.0.2.12 " in result.stdout


def test_serve_sigterm(request, tmp_path):
    port = free_udp_port()
    args = ("--listen", f"127.0.0.1:{port}", "--gateway", "192.0.2.11")
    server = start_serve(args, tmp_path / "stderr.log", request)
    outcome = run_probe("127.0.0.1", port, timeout=1.0, attempts=3)
    assert outcome.answer is not None
    assert outcome.answer.is_valid_redirect

    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(timeout=STOP_TIMEOUT)

    assert status == 0
    log = server.log()
    assert "received SIGTERM" in log
    assert "final counters" in log
    assert "redirected=1" in log
    assert "Traceback" not in log
