"""The first README command: `fastredir serve` with no arguments, probed
with `fastredir probe`, inside a namespace of its own so that ports 500
and 4500 of its loopback are free."""

from __future__ import annotations

import sys

import pytest

from .conftest import FASTREDIR_START_TIMEOUT, REPOSITORY_ROOT
from .lab import REDIRECTOR

pytestmark = pytest.mark.interop

# The gateways of fastredir/default.yaml.
DEFAULT_GATEWAYS = ("192.0.2.11", "192.0.2.12")


@pytest.mark.parametrize("target", ["127.0.0.1", "127.0.0.1:4500"])
def test_probe_default_serve(lab, target):
    serve = lab.spawn(
        REDIRECTOR, [sys.executable, "-m", "fastredir", "serve"], "fastredir", cwd=REPOSITORY_ROOT
    )
    lab.wait_for_output(serve, "listening on", count=2, timeout=FASTREDIR_START_TIMEOUT)
    result = lab.run(
        REDIRECTOR,
        [sys.executable, "-m", "fastredir", "probe", target, "--timeout", "1", "--attempts", "2"],
        check=False,
        timeout=15,
    )
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{serve.output()}"
    redirect_lines = [line for line in result.stdout.splitlines() if line.startswith("REDIRECT to ")]
    assert len(redirect_lines) == 1, result.stdout
    assert redirect_lines[0].split()[2] in DEFAULT_GATEWAYS
    assert "nonce data equals the Ni sent" in result.stdout
    assert lab.stop(serve) == 0, serve.output()
    assert "final counters: received=1 redirected=1" in serve.output()
