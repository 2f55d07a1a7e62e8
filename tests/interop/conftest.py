"""Fixtures for the strongSwan interoperability tests.

The tests skip when the machine cannot run the lab (not root, no network
namespaces, strongSwan not installed) or, for tests that use the C load
generator, cannot build it (no C compiler, no dpkt). With
FASTREDIR_REQUIRE_INTEROP=1 in the environment, as CI sets it, those
conditions fail the tests instead.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest

from .lab import DEFAULT_HOSTS, NAME_PREFIX, Lab, Process, start_default_peers

REQUIRE_INTEROP_VARIABLE = "FASTREDIR_REQUIRE_INTEROP"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
REQUIRED_TOOLS = ("ip", "sysctl", "charon-systemd", "swanctl")
FASTREDIR_START_TIMEOUT = 15.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interop: runs real strongSwan peers in network namespaces (needs root, iproute2 "
        f"and strongSwan; {REQUIRE_INTEROP_VARIABLE}=1 turns a skip into a failure)",
    )


@functools.lru_cache(maxsize=1)
def missing_prerequisite() -> str | None:
    """Return why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return f"needs root to create network namespaces (running as uid {os.geteuid()})"
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            return (
                f"{tool} not found in PATH; install iproute2, procps, charon-systemd "
                "and strongswan-swanctl"
            )
    probe = f"{NAME_PREFIX}{os.getpid()}probe"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if added.returncode != 0:
        return f"'ip netns add {probe}' failed: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=10)
    return None


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it under FASTREDIR_REQUIRE_INTEROP=1."""
    if os.environ.get(REQUIRE_INTEROP_VARIABLE) == "1":
        pytest.fail(f"interop test cannot run: {reason} ({REQUIRE_INTEROP_VARIABLE}=1 is set)")
    pytest.skip(f"interop test cannot run: {reason}")


@pytest.fixture(scope="session")
def interop_prerequisites() -> None:
    """Skip, or fail under FASTREDIR_REQUIRE_INTEROP=1, when the lab cannot run."""
    reason = missing_prerequisite()
    if reason is not None:
        skip_or_fail(reason)


@dataclasses.dataclass(frozen=True)
class LoadGenerator:
    """The compiled C load generator of bench/ and the request it replays."""

    binary: Path
    template: Path
    nonce_offset: int
    nonce_length: int


def missing_load_generator_prerequisite() -> str | None:
    """Return why the load generator cannot be built here, or None when it can."""
    from bench.native import BuildError, compiler

    try:
        compiler()
    except BuildError as error:
        return str(error)
    # bench/template.py reads the recorded request with dpkt.
    if importlib.util.find_spec("dpkt") is None:
        return "dpkt is not installed; install the test extras: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="session")
def load_generator(interop_prerequisites, tmp_path_factory: pytest.TempPathFactory) -> LoadGenerator:
    """The load generator, compiled once per session.

    A missing compiler or dpkt skips the test, or fails it under
    FASTREDIR_REQUIRE_INTEROP=1. A failed compilation always fails it.
    """
    reason = missing_load_generator_prerequisite()
    if reason is not None:
        skip_or_fail(reason)
    from bench.native import build
    from bench.template import write_template

    directory = tmp_path_factory.mktemp("loadgen")
    binary = build("loadgen", directory)
    template, nonce_offset, nonce_length = write_template(directory)
    return LoadGenerator(binary, template, nonce_offset, nonce_length)


@pytest.fixture
def lab(request: pytest.FixtureRequest, interop_prerequisites) -> Lab:
    """A fresh lab with strongSwan on the clients, gw1 and gw2, removed after the test.

    Indirect parametrization with a tuple of HostSpec adds hosts to the default ones.
    """
    hosts = DEFAULT_HOSTS + tuple(getattr(request, "param", ()))
    with Lab(hosts) as fresh_lab:
        start_default_peers(fresh_lab)
        yield fresh_lab


@pytest.fixture
def start_fastredir(lab: Lab) -> Callable[..., Process]:
    """Return a function that starts `fastredir serve` in the redirector namespace.

    It waits until every listener is logged as "listening on". The lab stops
    the process at teardown if the test has not stopped it.
    """

    def start(
        listen: Sequence[str], gateways: Sequence[str], *, pure_python: bool = False
    ) -> Process:
        argv = [sys.executable, "-m", "fastredir", "serve"]
        for address in listen:
            argv += ["--listen", address]
        for gateway in gateways:
            argv += ["--gateway", gateway]
        if pure_python:
            argv.append("--pure-python")
        # FASTREDIR_PURE=0 keeps an outer FASTREDIR_PURE=1 from changing the fast path.
        process = lab.spawn(
            "redirector", argv, "fastredir", cwd=REPOSITORY_ROOT, env={"FASTREDIR_PURE": "0"}
        )
        lab.wait_for_output(
            process, "listening on", count=len(listen), timeout=FASTREDIR_START_TIMEOUT
        )
        return process

    return start
