"""Readings from /proc about the processes under test."""

from __future__ import annotations

import os
import pathlib


def descendants(pid: int) -> list[int]:
    """Return `pid` and all its living descendants, parents first."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = pathlib.Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except FileNotFoundError:
                continue
            found.extend(int(child) for child in children)
    return found


def resident_kib(pid: int) -> int:
    """Return the resident set size (VmRSS) of `pid` in KiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS line in /proc/{pid}/status")


def receive_queue_bytes(pid: int, port: int) -> int:
    """Return the bytes queued on the IPv4 UDP sockets bound to `port`,
    as seen in the network namespace of `pid`."""
    total = 0
    lines = pathlib.Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]
    for line in lines:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port:
            total += int(fields[4].split(":")[1], 16)
    return total


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
