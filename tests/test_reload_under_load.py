"""Ten reloads in a row under a steady 20,000 requests per second lose no
request: the C load generator of the benchmark checks every answer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serveproc import ServeProcess

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
RATE = 20_000
DURATION = 6.0
RELOADS = 10


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory):
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        reason = "the load generator needs a C compiler (apt-get install gcc)"
        if os.environ.get("FASTREDIR_REQUIRE_INTEROP") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from bench import native, template

    directory = tmp_path_factory.mktemp("loadgen")
    binary = native.build("loadgen", directory)
    request, offset, length = template.write_template(directory)
    return binary, request, offset, length


def config_text(port: int, control: Path, workers: int, gateways: list[str]) -> str:
    listed = "".join(f"  - {g}\n" for g in gateways)
    return (
        f"listen:\n  - address: 127.0.0.1\n    port: {port}\n"
        f"gateways:\n{listed}workers: {workers}\n"
        f"control: {{socket: {control}}}\nlogging: {{stats_interval: 0}}\n"
    )


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
def test_reloads_lose_nothing(loadgen, tmp_path, workers):
    binary, request, offset, length = loadgen
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    control = tmp_path / "control.sock"
    path = tmp_path / "fastredir.yaml"
    layouts = [["192.0.2.11", "192.0.2.12"], ["192.0.2.11", "192.0.2.12", "192.0.2.13"]]
    path.write_text(config_text(port, control, workers, layouts[0]))
    with ServeProcess("--config", str(path)) as process:
        process.start(listeners=1)
        generator = subprocess.Popen(
            [
                str(binary), "--target", "127.0.0.1", "--port", str(port),
                "--template", str(request), "--nonce-offset", str(offset), "--nonce-length", str(length),
                "--rate", str(RATE), "--duration", str(DURATION), "--sockets", "16", "--gso", "1",
                "--batch", "16", "--drain", "1.0", "--wait-ready", "10",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        time.sleep(1.0)
        outcomes = []
        for index in range(RELOADS):
            path.write_text(config_text(port, control, workers, layouts[(index + 1) % 2]))
            outcomes.append(
                subprocess.run(
                    [sys.executable, "-m", "fastredir", "reload", "--control", str(control)],
                    cwd=REPOSITORY_ROOT,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            )
            time.sleep(0.3)
        output, errors = generator.communicate(timeout=DURATION + 60)
        log = process.stop_and_output()
    assert generator.returncode == 0, errors
    result = json.loads(output)
    for outcome in outcomes:
        assert outcome.returncode == 0, outcome.stderr
    assert log.count("reload done from") == RELOADS
    assert result["sent"] >= RATE * DURATION * 0.9
    assert result["answers_invalid"] == 0, result["invalid_reasons"]
    assert result["not_answered"] == 0, f"{result}\n{log[-3000:]}"
