"""Network namespace lab with strongSwan peers for interoperability tests.

The lab is one bridge namespace and one namespace per host, each host joined to
the bridge by a veth pair:

    client      192.0.2.10   2001:db8::10
    redirector  192.0.2.1    2001:db8::1
    gw1         192.0.2.11   2001:db8::11
    gw2         192.0.2.12   2001:db8::12

Only documentation prefixes are used, and no host has a default route, so
nothing sent inside the lab can leave it. Every namespace, interface and
temporary directory carries a prefix built from this process id, so several
labs can run side by side. `Lab.down` stops the processes the lab started (by
pid), deletes the namespaces and removes the files, also after a failed `up`.

strongSwan runs as one charon-systemd per host with its own strongswan.conf,
vici socket and log file in the lab's temporary directory. The peers use IKE SAs
without CHILD_SAs (`childless`), so no ESP support is needed in the kernel.

Manual use, as root, from the repository root:

    python -m tests.interop.lab up --hold 600
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import itertools
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .strongswan import (
    CLIENT_CHARON_OPTIONS,
    CLIENT_CONNECTIONS,
    CLIENT_HOST_NAMES,
    IkeSa,
    client_swanctl_conf,
    gateway_swanctl_conf,
    parse_list_sas,
    strongswan_conf,
)

NAME_PREFIX = "frl"
NETNS_ETC = Path("/etc/netns")
# Present in NETNS_ETC when a lab created that directory, so that the last lab
# to finish removes it again, but never a directory that existed before.
NETNS_ETC_MARKER = NETNS_ETC / ".created-by-fastredir-interop-lab"
PREFIX_LENGTH_V4 = 24
PREFIX_LENGTH_V6 = 64

# Linux limits interface names to 15 characters (IFNAMSIZ minus the NUL byte).
MAX_INTERFACE_NAME = 15

_lab_sequence = itertools.count()

# Labs that are up, so that an interpreter exit without teardown (for example
# after KeyboardInterrupt in a test runner) still removes them.
_active_labs: set["Lab"] = set()


def _down_active_labs() -> None:
    for lab in list(_active_labs):
        lab.down()


atexit.register(_down_active_labs)


CLIENT = "client"
REDIRECTOR = "redirector"
GATEWAY = "gateway"


@dataclasses.dataclass(frozen=True)
class HostSpec:
    name: str
    tag: str  # short name used inside interface names, at most 2 characters
    ipv4: str
    ipv6: str
    role: str  # CLIENT, REDIRECTOR or GATEWAY: which strongSwan set-up it gets


DEFAULT_HOSTS = (
    HostSpec("client", "c", "192.0.2.10", "2001:db8::10", CLIENT),
    HostSpec("redirector", "r", "192.0.2.1", "2001:db8::1", REDIRECTOR),
    HostSpec("gw1", "g1", "192.0.2.11", "2001:db8::11", GATEWAY),
    HostSpec("gw2", "g2", "192.0.2.12", "2001:db8::12", GATEWAY),
)


def extra_clients(count: int) -> tuple[HostSpec, ...]:
    """Return `count` more client hosts: client2 at 192.0.2.21, client3 at 192.0.2.22, ..."""
    if not 1 <= count <= 9:
        raise ValueError(f"extra client count must be 1 to 9, got {count}")
    return tuple(
        HostSpec(
            f"client{number}",
            f"c{number}",
            f"192.0.2.{19 + number}",
            f"2001:db8::{19 + number}",
            CLIENT,
        )
        for number in range(2, count + 2)
    )


class LabError(RuntimeError):
    """A lab step failed: a command, a daemon start or a bounded wait."""


@dataclasses.dataclass
class Process:
    """A background process inside a host namespace, with its output in a file."""

    name: str
    host: str
    log_path: Path
    popen: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_running(self) -> bool:
        return self.popen.poll() is None


@dataclasses.dataclass
class CharonInstance:
    """Files of one charon-systemd instance."""

    host: str
    directory: Path
    conf_path: Path
    swanctl_conf_path: Path
    log_path: Path
    vici_uri: str
    process: Process


def _base36(number: int) -> str:
    digits = string.digits + string.ascii_lowercase
    text = ""
    while True:
        number, remainder = divmod(number, 36)
        text = digits[remainder] + text
        if number == 0:
            return text


def _make_prefix() -> str:
    # "frl" + pid (at most 7 digits on Linux) + a base-36 sequence number keeps
    # "<prefix><tag>b" within MAX_INTERFACE_NAME for up to 1296 labs per process.
    return f"{NAME_PREFIX}{os.getpid()}{_base36(next(_lab_sequence) % 1296)}"


class Lab:
    """A namespace lab with strongSwan peers, described in the module docstring."""

    def __init__(self, hosts: Sequence[HostSpec] = DEFAULT_HOSTS, prefix: str | None = None):
        if len({spec.name for spec in hosts}) != len(hosts):
            raise ValueError("host names must be unique")
        self.prefix = prefix or _make_prefix()
        self.hosts = {spec.name: spec for spec in hosts}
        self.bridge_namespace = f"{self.prefix}-lan"
        self.bridge = f"{self.prefix}br"
        self.workdir: Path | None = None
        self.processes: list[Process] = []
        self.strongswan: dict[str, CharonInstance] = {}
        self._namespaces: list[str] = []
        self._etc_dirs: list[Path] = []
        for spec in hosts:
            name = self._bridge_port(spec)
            if len(name) > MAX_INTERFACE_NAME:
                raise ValueError(
                    f"interface name {name!r} is longer than {MAX_INTERFACE_NAME} characters"
                )

    # names

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def interface(self, host: str) -> str:
        """Return the name of the host's lab interface inside its namespace."""
        return f"{self.prefix}{self.hosts[host].tag}"

    def _bridge_port(self, spec: HostSpec) -> str:
        return f"{self.prefix}{spec.tag}b"

    # set-up and teardown

    def __enter__(self) -> "Lab":
        self.up()
        return self

    def __exit__(self, *exc_info) -> None:
        self.down()

    def up(self) -> None:
        """Create the namespaces, bridge and addresses, and undo everything if a step fails."""
        _active_labs.add(self)
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
            self._add_namespace(self.bridge_namespace)
            self._ip(
                self.bridge_namespace,
                "link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0",
            )
            self._ip(self.bridge_namespace, "link", "set", self.bridge, "up")
            for spec in self.hosts.values():
                self._add_host(spec)
        except BaseException:
            self.down()
            raise

    def _add_namespace(self, namespace: str) -> None:
        _run(["ip", "netns", "add", namespace])
        self._namespaces.append(namespace)
        _run(["ip", "-n", namespace, "link", "set", "lo", "up"])

    def _add_host(self, spec: HostSpec) -> None:
        namespace = self.namespace(spec.name)
        interface = self.interface(spec.name)
        port = self._bridge_port(spec)
        self._add_namespace(namespace)

        # Without duplicate address detection, addresses are usable at once
        # instead of dropping the first packets for about a second.
        for scope in ("all", "default"):
            self.run(spec.name, ["sysctl", "-q", "-w", f"net.ipv6.conf.{scope}.accept_dad=0"])

        # Both ends are created directly in their namespaces, so no lab
        # interface ever appears in the namespace the tests run in.
        self._ip(
            self.bridge_namespace,
            "link", "add", port, "type", "veth", "peer", "name", interface, "netns", namespace,
        )
        self._ip(self.bridge_namespace, "link", "set", port, "master", self.bridge)
        self._ip(self.bridge_namespace, "link", "set", port, "up")
        self._ip(namespace, "addr", "add", f"{spec.ipv4}/{PREFIX_LENGTH_V4}", "dev", interface)
        self._ip(namespace, "addr", "add", f"{spec.ipv6}/{PREFIX_LENGTH_V6}", "dev", interface, "nodad")
        self._ip(namespace, "link", "set", interface, "up")

    def down(self) -> list[str]:
        """Stop the lab's processes and remove its namespaces and files.

        Every step runs even when an earlier one fails. Returns the errors,
        which are also printed to stderr.
        """
        _active_labs.discard(self)
        errors: list[str] = []
        for process in reversed(self.processes):
            try:
                self.stop(process)
            except (OSError, subprocess.SubprocessError) as error:
                errors.append(f"stopping {process.name} (pid {process.pid}) failed: {error}")
        for namespace in reversed(self._namespaces):
            for pid in _stop_namespace_processes(namespace):
                errors.append(f"stopped pid {pid} in {namespace}, which the lab did not track")
            result = subprocess.run(
                ["ip", "netns", "delete", namespace], capture_output=True, text=True, timeout=10
            )
            if result.returncode != 0:
                errors.append(f"deleting namespace {namespace} failed: {result.stderr.strip()}")
        self._namespaces.clear()
        for directory in self._etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._etc_dirs.clear()
        _remove_netns_etc_if_unused()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        for error in errors:
            print(f"lab teardown: {error}", file=sys.stderr)
        return errors

    # commands and processes

    def _ip(self, namespace: str, *args: str) -> None:
        _run(["ip", "-n", namespace, *args])

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """Return `argv` wrapped to run inside the host's namespace."""
        if host not in self.hosts:
            raise ValueError(f"unknown lab host {host!r}; known hosts: {', '.join(self.hosts)}")
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        timeout: float = 10.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command in the host's namespace and return its result (text)."""
        return _run(self.exec_argv(host, argv), timeout=timeout, check=check, env=env)

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        name: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> Process:
        """Start a background process in the host's namespace.

        Its stdout and stderr go to `<workdir>/<host>-<name>.log`. The process
        is stopped by `stop` or at teardown.
        """
        assert self.workdir is not None, "call up() first"
        log_path = self.workdir / f"{host}-{name}.log"
        with open(log_path, "wb") as log_file:
            # `ip netns exec` execs the command, so the pid is the command's pid.
            # A new session keeps terminal signals of the test runner away from it.
            popen = subprocess.Popen(
                self.exec_argv(host, argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
                start_new_session=True,
            )
        process = Process(name=name, host=host, log_path=log_path, popen=popen)
        self.processes.append(process)
        return process

    def stop(self, process: Process, timeout: float = 5.0) -> int:
        """Stop the process with SIGTERM, or SIGKILL after `timeout` seconds.

        Returns the exit status.
        """
        if process.popen.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.popen.wait(timeout=timeout)
        return process.popen.returncode

    def wait_for_output(
        self, process: Process, text: str, *, count: int = 1, timeout: float = 10.0
    ) -> str:
        """Wait until `text` occurs on `count` lines of the process output, and return the output.

        Raises LabError when the process exits first or the wait times out.
        """
        deadline = time.monotonic() + timeout
        while True:
            output = process.output()
            found = sum(text in line for line in output.splitlines())
            if found >= count:
                return output
            if not process.is_running():
                raise LabError(
                    f"{process.name} in {process.host} exited with status "
                    f"{process.popen.returncode} before printing {text!r} {count} times; "
                    f"output:\n{output}"
                )
            if time.monotonic() > deadline:
                raise LabError(
                    f"timed out after {timeout} s waiting for {text!r} {count} times from "
                    f"{process.name} in {process.host}; found {found}; output:\n{output}"
                )
            time.sleep(0.05)

    def add_ipv4_addresses(self, host: str, addresses: Iterable[str]) -> None:
        """Add more IPv4 addresses to the host's lab interface, in the lab's /24."""
        interface = self.interface(host)
        for address in addresses:
            self._ip(
                self.namespace(host), "addr", "add", f"{address}/{PREFIX_LENGTH_V4}", "dev", interface
            )

    def write_hosts_file(self, host: str, names: Mapping[str, Iterable[str]]) -> Path:
        """Give the host its own /etc/hosts with `names` mapped to addresses.

        `ip netns exec` bind-mounts /etc/netns/<namespace>/hosts over /etc/hosts,
        so only processes started after this call see the file.
        """
        directory = NETNS_ETC / self.namespace(host)
        _make_netns_etc_directory(directory)
        if directory not in self._etc_dirs:
            self._etc_dirs.append(directory)
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        for name, addresses in names.items():
            lines.extend(f"{address} {name}" for address in addresses)
        path = directory / "hosts"
        path.write_text("\n".join(lines) + "\n")
        return path

    # strongSwan

    def start_strongswan(
        self,
        host: str,
        swanctl_conf: str,
        *,
        charon_options: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> CharonInstance:
        """Start charon-systemd in the host's namespace and load `swanctl_conf`.

        `charon_options` adds settings to the `charon-systemd` section (for
        example retransmission settings for a client).
        """
        assert self.workdir is not None, "call up() first"
        directory = self.workdir / f"strongswan-{host}"
        directory.mkdir()
        vici_uri = f"unix://{directory}/charon.vici"
        log_path = directory / "charon.log"
        conf_path = directory / "strongswan.conf"
        swanctl_conf_path = directory / "swanctl.conf"
        conf_path.write_text(strongswan_conf(vici_uri, log_path, charon_options or {}))
        swanctl_conf_path.write_text(swanctl_conf)

        process = self.spawn(
            host, ["charon-systemd"], "charon", env={"STRONGSWAN_CONF": str(conf_path)}
        )
        instance = CharonInstance(
            host, directory, conf_path, swanctl_conf_path, log_path, vici_uri, process
        )
        self.strongswan[host] = instance
        self._wait_for_vici(instance, timeout)
        self._load_swanctl_conf(instance)
        return instance

    def restart_strongswan(self, host: str, *, timeout: float = 10.0) -> CharonInstance:
        """Start charon-systemd again on a host whose charon was stopped, with the same files.

        The new charon overwrites the charon log (`append = no`), and its
        output goes to `<workdir>/<host>-charon-restart<N>.log`.
        """
        old = self.strongswan[host]
        if old.process.is_running():
            raise LabError(f"charon in {host} is still running (pid {old.process.pid}); stop it first")
        restarts = sum(
            process.host == host and process.name.startswith("charon-restart")
            for process in self.processes
        )
        process = self.spawn(
            host,
            ["charon-systemd"],
            f"charon-restart{restarts + 1}",
            env={"STRONGSWAN_CONF": str(old.conf_path)},
        )
        instance = dataclasses.replace(old, process=process)
        self.strongswan[host] = instance
        self._wait_for_vici(instance, timeout)
        self._load_swanctl_conf(instance)
        return instance

    def _load_swanctl_conf(self, instance: CharonInstance) -> None:
        result = self.swanctl(
            instance.host, ["--load-all", "--file", str(instance.swanctl_conf_path)], check=False
        )
        if result.returncode != 0:
            raise LabError(
                f"swanctl --load-all in {instance.host} failed with status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )

    def _wait_for_vici(self, instance: CharonInstance, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not instance.process.is_running():
                raise LabError(
                    f"charon-systemd in {instance.host} exited with status "
                    f"{instance.process.popen.returncode}; output:\n{instance.process.output()}\n"
                    f"log:\n{self.read_log(instance.host)}"
                )
            result = self.swanctl(instance.host, ["--stats"], check=False, timeout=5)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LabError(
                    f"timed out after {timeout} s waiting for the vici socket of charon in "
                    f"{instance.host}: {result.stderr.strip()}"
                )
            time.sleep(0.1)

    def swanctl(
        self, host: str, args: Sequence[str], *, check: bool = True, timeout: float = 10.0
    ) -> subprocess.CompletedProcess:
        """Run swanctl against the host's charon."""
        instance = self.strongswan[host]
        return self.run(
            host,
            ["swanctl", *args, "--uri", instance.vici_uri],
            check=check,
            timeout=timeout,
            env={"STRONGSWAN_CONF": str(instance.conf_path)},
        )

    def initiate(self, conn: str, *, host: str = "client", timeout: float = 15.0) -> tuple[int, str]:
        """Initiate the IKE SA of connection `conn`, and return swanctl's exit status and output.

        swanctl exits 0 once the IKE SA is established. It gives up after
        `timeout` seconds; a timeout is reported as status -1.
        """
        seconds = max(1, int(timeout))
        try:
            result = self.swanctl(
                host,
                ["--initiate", "--ike", conn, "--timeout", str(seconds)],
                check=False,
                timeout=seconds + 5,
            )
        except subprocess.TimeoutExpired as error:
            return -1, _text(error.stdout) + _text(error.stderr)
        return result.returncode, result.stdout + result.stderr

    def list_sas(self, host: str) -> str:
        """Return the output of `swanctl --list-sas` on the host."""
        return self.swanctl(host, ["--list-sas"]).stdout

    def ike_sas(self, host: str) -> list[IkeSa]:
        """Return the host's IKE SAs, parsed from `swanctl --list-sas`."""
        return parse_list_sas(self.list_sas(host))

    def read_log(self, host: str) -> str:
        """Return the charon log of the host (empty before the daemon writes it)."""
        path = self.strongswan[host].log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, host: str, pattern: str, *, timeout: float = 5.0) -> list[str]:
        """Wait until a line of the host's charon log matches the regular expression.

        Returns the matching lines, or an empty list when `timeout` seconds pass first.
        """
        expression = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.read_log(host).splitlines() if expression.search(line)]
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def describe(self, hosts: Iterable[str] | None = None) -> str:
        """Return the SAs and charon logs of the given (default: all) strongSwan hosts."""
        parts = []
        for host in hosts or self.strongswan:
            if host not in self.strongswan:
                continue
            try:
                sas = self.list_sas(host)
            except (LabError, subprocess.SubprocessError) as error:
                sas = f"(swanctl --list-sas failed: {error})"
            parts.append(f"===== {host}: swanctl --list-sas =====\n{sas}")
            parts.append(f"===== {host}: charon log =====\n{self.read_log(host)}")
        return "\n".join(parts)


def _stop_namespace_processes(namespace: str, timeout: float = 5.0) -> list[int]:
    """Stop every process still in one of the lab's namespaces and return their pids.

    These are the lab's own processes, or ones a user started there with
    `ip netns exec` during `up --hold`. An interrupt during `spawn` can leave
    one running that `Lab.processes` does not contain.
    """
    listing = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10
    )
    pids = [int(pid) for pid in listing.stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    remaining = set(pids)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        remaining = {pid for pid in remaining if _is_alive(pid)}
        time.sleep(0.05)
    for pid in remaining:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _is_alive(pid: int) -> bool:
    # A child of this process stays a zombie until it is reaped, so reap it here.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        return reaped == 0
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _make_netns_etc_directory(directory: Path) -> None:
    # Another lab may remove an unused NETNS_ETC between the two mkdir calls,
    # so a vanished parent is created again (a bounded number of times).
    for _ in range(3):
        try:
            NETNS_ETC.mkdir()
            NETNS_ETC_MARKER.touch()
        except FileExistsError:
            pass
        try:
            directory.mkdir(exist_ok=True)
            return
        except FileNotFoundError:
            continue
    raise LabError(f"creating {directory} failed: another lab removed {NETNS_ETC} 3 times")


def _remove_netns_etc_if_unused() -> None:
    """Remove NETNS_ETC if a lab created it and nothing but the marker is left."""
    try:
        entries = {entry.name for entry in NETNS_ETC.iterdir()}
    except FileNotFoundError:
        return
    if entries != {NETNS_ETC_MARKER.name}:
        return
    try:
        NETNS_ETC_MARKER.unlink()
    except FileNotFoundError:
        return  # another lab is removing it
    try:
        NETNS_ETC.rmdir()
    except OSError:
        # Another lab added its directory meanwhile and removes NETNS_ETC later.
        NETNS_ETC_MARKER.touch()


def _run(
    argv: Sequence[str],
    *,
    timeout: float = 10.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise LabError(
            f"command {' '.join(argv)} failed with status {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data


def start_default_peers(lab: Lab) -> None:
    """Start strongSwan on every gateway and client host, clients with their hosts file."""
    for spec in lab.hosts.values():
        if spec.role == GATEWAY:
            lab.start_strongswan(spec.name, gateway_swanctl_conf())
    for spec in lab.hosts.values():
        if spec.role == CLIENT:
            lab.write_hosts_file(spec.name, CLIENT_HOST_NAMES)
            lab.start_strongswan(
                spec.name,
                client_swanctl_conf(CLIENT_CONNECTIONS),
                charon_options=CLIENT_CHARON_OPTIONS,
            )


# Command line for manual experiments


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _cmd_up(args: argparse.Namespace) -> int:
    with Lab() as lab:
        start_default_peers(lab)
        client = lab.strongswan["client"]
        print(f"lab {lab.prefix} is up; files in {lab.workdir}")
        for host in lab.hosts:
            print(f"  {host}: ip netns exec {lab.namespace(host)} ...")
        print(
            "  client swanctl: ip netns exec {ns} env STRONGSWAN_CONF={conf} swanctl "
            "--initiate --ike redirect-v4 --uri {uri}".format(
                ns=lab.namespace("client"), conf=client.conf_path, uri=client.vici_uri
            )
        )
        print(f"  client connections: {', '.join(CLIENT_CONNECTIONS)}")
        print(f"holding for {args.hold} s; Ctrl-C or SIGTERM tears it down earlier", flush=True)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            time.sleep(args.hold)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        print("tearing down")
    return 0


_LEFTOVER_NAMESPACE = re.compile(rf"^{NAME_PREFIX}\d+[0-9a-z]{{1,2}}-[a-z0-9]+$")


def _cmd_down(args: argparse.Namespace) -> int:
    """Remove namespaces left by a lab whose process was killed before teardown."""
    if not args.prefix.startswith(NAME_PREFIX):
        print(f"error: prefix must start with {NAME_PREFIX!r}, got {args.prefix!r}", file=sys.stderr)
        return 2
    listing = _run(["ip", "netns", "list"]).stdout.split()
    namespaces = [
        name
        for name in listing
        if name.startswith(args.prefix + "-") and _LEFTOVER_NAMESPACE.match(name)
    ]
    if not namespaces:
        print(f"no namespaces named {args.prefix}-*")
        return 0
    for namespace in namespaces:
        # These processes were started by an earlier lab in its own namespace.
        pids = _run(["ip", "netns", "pids", namespace], check=False).stdout.split()
        for pid in pids:
            print(f"stopping pid {pid} in {namespace}")
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        _run(["ip", "netns", "delete", namespace], check=False)
        shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)
        print(f"deleted {namespace}")
    _remove_netns_etc_if_unused()
    print(f"temporary directories {tempfile.gettempdir()}/{args.prefix}-* are left for inspection")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.interop.lab",
        description="Namespace lab with strongSwan peers for fastredir interop tests (needs root).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up", help="build the lab, hold it for manual experiments, then tear it down"
    )
    up.add_argument(
        "--hold", type=float, default=600.0, help="seconds to keep the lab up (default: 600)"
    )
    up.set_defaults(handler=_cmd_up)
    down = commands.add_parser("down", help="remove namespaces left by a killed lab")
    down.add_argument("prefix", help=f"lab prefix as printed by 'up', for example {NAME_PREFIX}12345a")
    down.set_defaults(handler=_cmd_down)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
