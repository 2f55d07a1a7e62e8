"""A private network namespace for one benchmark run.

Inside it the loopback interface carries only the benchmark's traffic:
no other process's sockets, no firewall rules, and port 500 is free for
every system.  Creating one needs root and iproute2; without them the
run uses the host's loopback interface instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess


class Namespace:
    """`ip netns` namespace NAME with loopback up; `delete()` removes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = False

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, text=True, timeout=60)
        self.created = True
        subprocess.run(
            ["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True, text=True, timeout=60
        )

    def delete(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True, timeout=60)
            self.created = False


def unavailable_reason() -> str | None:
    """Return why no namespace can be created here, or None if one can."""
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


def open_namespace() -> tuple[Namespace | None, str | None]:
    """Create a namespace for this run; return it, or None and the reason."""
    reason = unavailable_reason()
    if reason is not None:
        return None, reason
    namespace = Namespace(f"fastredir-bench-{os.getpid()}")
    try:
        namespace.create()
    except subprocess.CalledProcessError as exc:
        namespace.delete()
        return None, f"ip netns add failed: {exc.stderr.strip()}"
    return namespace, None
