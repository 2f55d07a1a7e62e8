"""The systems under test, each run as its own process, and how to start,
watch and stop them."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time

from bench import libreswan, procfs
from bench.load import pin_to

GATEWAY = "192.0.2.11"  # RFC 5737 documentation address; never contacted


@dataclasses.dataclass
class Context:
    """Settings of this run that every system needs."""

    root: pathlib.Path  # the repository
    work: pathlib.Path  # temporary files of this run
    floor_binary: pathlib.Path
    address: str
    port: int
    prefix: list[str]  # runs a program in the run's network namespace
    cores: frozenset[int] | None  # CPU affinity of the system under test
    libreswan: libreswan.Installation | None = None
    libreswan_reason: str | None = None

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "FASTREDIR_PURE"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        return env


@dataclasses.dataclass(frozen=True)
class System:
    """One responder: how to start it and what its answers look like."""

    name: str
    description: str
    check: str = "full"  # "count" for the fixed reply of the kernel floor
    ready_text: str = ""  # printed once it serves
    refuse_text: str | None = None  # printed when it would serve the wrong thing

    def unavailable(self, context: Context) -> str | None:
        if self.name == "libreswan":
            if context.libreswan is None:
                return context.libreswan_reason or "libreswan is not available"
            if not context.prefix:
                return "pluto needs a network namespace of its own, and none was created"
        return None

    def command(self, context: Context, config: pathlib.Path | None = None) -> list[str]:
        listen = f"{context.address}:{context.port}"
        python = sys.executable
        if self.name == "c_floor":
            return [*context.prefix, str(context.floor_binary), context.address, str(context.port), "64"]
        if self.name in ("fastredir", "fastredir_pure"):
            arguments = ["--config", str(config)] if config else ["--listen", listen, "--gateway", GATEWAY]
            if self.name == "fastredir_pure":
                arguments.append("--pure-python")
            return [*context.prefix, python, "-m", "fastredir", "serve", *arguments]
        if self.name == "python_loop":
            return [*context.prefix, python, "-m", "bench.plain", "loop", "--listen", listen, "--gateway", GATEWAY]
        if self.name == "asyncio":
            return [*context.prefix, python, "-m", "bench.plain", "asyncio", "--listen", listen, "--gateway", GATEWAY]
        if self.name == "libreswan":
            return libreswan.command(context.libreswan, context.work / "libreswan", context.prefix)
        raise ValueError(f"unknown system {self.name!r}")

    def log_path(self, context: Context) -> pathlib.Path:
        """Return the file in which `ready_text` appears."""
        if self.name == "libreswan":
            return context.work / "libreswan" / "pluto.log"
        return context.work / f"{self.name}.out"


SYSTEMS = (
    System("c_floor", "C recvmmsg/sendmmsg, fixed 74-byte reply, parses nothing", "count", "floor: listening"),
    System("fastredir", "fastredir serve, Cython fast path", ready_text="fast path: cython",
           refuse_text="fast path: python"),
    System("fastredir_pure", "fastredir serve --pure-python", ready_text="fast path: python"),
    System("python_loop", "recvfrom/sendto loop with fastredir.message", ready_text="listening on"),
    System("asyncio", "asyncio DatagramProtocol with fastredir.message", ready_text="listening on"),
    System("libreswan", "pluto with global-redirect=yes", ready_text="listening for IKE messages"),
)  # fmt: skip
SYSTEM_NAMES = tuple(system.name for system in SYSTEMS)


class StartError(RuntimeError):
    """A system did not start or serves something other than expected."""


class Running:
    """A started system; `stop()` ends it by its pid."""

    def __init__(self, system: System, context: Context, config: pathlib.Path | None = None,
                 cores: frozenset[int] | None = None) -> None:  # fmt: skip
        self.system = system
        self.context = context
        self.output_path = context.work / f"{system.name}.out"
        if system.name == "libreswan":
            run_directory = context.work / "libreswan"
            try:
                libreswan.prepare(run_directory, context.address, GATEWAY)
            except (subprocess.SubprocessError, OSError) as exc:
                raise StartError(f"preparing pluto's configuration failed: {exc}") from None
            system.log_path(context).unlink(missing_ok=True)
        self.output = open(self.output_path, "w")
        self.process = subprocess.Popen(
            system.command(context, config),
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            cwd=context.root,
            env=context.environment(),
            preexec_fn=pin_to(cores if cores is not None else context.cores),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """Return the pids of the process and its children (fastredir's workers)."""
        return procfs.descendants(self.process.pid)

    def log_text(self) -> str:
        try:
            return self.system.log_path(self.context).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 30.0, count: int = 1) -> None:
        """Wait until the ready text appeared `count` times."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if self.system.refuse_text and self.system.refuse_text in text:
                self.stop()
                raise StartError(
                    f"{self.system.name} started the pure-Python fast path instead of the Cython one; "
                    "build the extension: python setup.py build_ext --inplace"
                )
            if self.system.ready_text and text.count(self.system.ready_text) >= count:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                output = self.output_path.read_text(errors="replace")[-2000:]
                raise StartError(f"{self.system.name} did not start:\n{output}\n{text[-2000:]}")
            time.sleep(0.05)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no request is queued on the system's socket; return
        False when it is still busy after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if procfs.receive_queue_bytes(self.pid, self.context.port) == 0:
                    return True
            except (FileNotFoundError, ProcessLookupError):
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 15.0) -> int | None:
        """Send SIGTERM, then SIGKILL after `timeout` seconds; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()
        return self.process.returncode
