"""Run the C load generator (loadgen.c) and read its JSON result."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess


@dataclasses.dataclass(frozen=True)
class Target:
    """Address of the system under test, and how to run the generator."""

    binary: pathlib.Path
    template: pathlib.Path
    nonce_offset: int
    nonce_length: int
    address: str
    port: int
    prefix: tuple[str, ...] = ()  # e.g. ip netns exec NAME
    cores: frozenset[int] | None = None  # CPU affinity of the generator


@dataclasses.dataclass(frozen=True)
class Load:
    """One generator run.  `rate` 0 sends as fast as the generator can."""

    duration: float = 1.0
    rate: float = 0.0
    count: int = 0
    gso: int = 16
    batch: int = 64
    sockets: int = 64
    distinct: int = 0
    check: str = "full"  # or "count" for a responder with a fixed reply
    answer_length: int = 0
    gateway: str | None = None
    drain: float = 0.3
    wait_ready: float = 15.0


class LoadError(RuntimeError):
    """The generator failed or printed no result."""


def command(target: Target, load: Load, watch: list[int] = ()) -> list[str]:
    arguments = [
        str(target.binary),
        "--target", target.address,
        "--port", str(target.port),
        "--template", str(target.template),
        "--nonce-offset", str(target.nonce_offset),
        "--nonce-length", str(target.nonce_length),
        "--duration", f"{load.duration:g}",
        "--rate", f"{load.rate:g}",
        "--count", str(load.count),
        "--gso", str(load.gso),
        "--batch", str(load.batch),
        "--sockets", str(load.sockets),
        "--distinct", str(load.distinct),
        "--check", load.check,
        "--answer-length", str(load.answer_length),
        "--drain", f"{load.drain:g}",
        "--wait-ready", f"{load.wait_ready:g}",
    ]  # fmt: skip
    if load.gateway:
        arguments += ["--gateway", load.gateway]
    for pid in watch:
        arguments += ["--watch-pid", str(pid)]
    return [*target.prefix, *arguments]


def pin_to(cores: frozenset[int] | None):
    """Return a preexec_fn that sets the child's CPU affinity, or None."""
    if not cores:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def start(target: Target, load: Load, watch: list[int] = ()) -> subprocess.Popen:
    """Start the generator; its stdout is a pipe that carries the result."""
    return subprocess.Popen(
        command(target, load, watch),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=pin_to(target.cores),
    )


def finish(process: subprocess.Popen, timeout: float) -> dict:
    """Wait for a started generator and return its parsed result."""
    try:
        output, errors = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise LoadError(f"the load generator did not finish within {timeout:.0f} s") from None
    if process.returncode != 0:
        raise LoadError(f"the load generator exited with status {process.returncode}: {errors.strip()}")
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise LoadError(f"the load generator printed no JSON result: {output[:200]!r} {errors[:200]!r}") from None


def run(target: Target, load: Load, watch: list[int] = ()) -> dict:
    """Run the generator to its end and return its result."""
    expected = load.wait_ready + load.drain + (load.duration if load.duration else load.count / 1e5)
    return finish(start(target, load, watch), timeout=expected + 60)
