"""Active IKE health checks: each gateway gets a well-formed IKE_SA_INIT
request every interval, and any IKEv2 answer to it means the gateway is
alive.

A probe costs the gateway what any client's first message costs: one
half-open IKE SA, which it drops when no IKE_AUTH follows.  The results
go to the controller, which applies `fall` and `rise` through the pool.
"""

from __future__ import annotations

import concurrent.futures
import logging
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Callable

from fastredir.ikev2 import FLAG_RESPONSE, IKE_HEADER_LENGTH, MAJOR_VERSION, NAT_T_PORT, NON_ESP_MARKER
from fastredir.periodic import PeriodicThread
from fastredir.probe import new_request

log = logging.getLogger("fastredir")


@dataclass(frozen=True)
class Target:
    name: str  # the gateway's name in the pool
    host: str  # an address, or a host name to resolve each round
    port: int


def is_answer(initiator_spi: bytes, datagram: bytes, nat_t: bool) -> bool:
    """Tell whether `datagram` is an IKEv2 response to the probe with
    `initiator_spi`: any exchange, any payloads."""
    if nat_t:
        if datagram[:4] != NON_ESP_MARKER:
            return False
        datagram = datagram[4:]
    return (
        len(datagram) >= IKE_HEADER_LENGTH
        and datagram[:8] == initiator_spi
        and datagram[17] >> 4 == MAJOR_VERSION
        and bool(datagram[19] & FLAG_RESPONSE)
    )


# Host names are resolved in these threads, all at once, so one slow
# resolver answer delays no other gateway's probe.
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="resolve")


def _resolve_all(targets: list[Target], timeout: float) -> dict[str, tuple | str]:
    """Return, per target name, (family, address) or why it failed."""
    futures = {
        target.name: _resolver.submit(socket.getaddrinfo, target.host, target.port, type=socket.SOCK_DGRAM)
        for target in targets
    }
    concurrent.futures.wait(futures.values(), timeout=timeout)
    resolved: dict[str, tuple | str] = {}
    for target in targets:
        future = futures[target.name]
        if not future.done():
            resolved[target.name] = f"cannot resolve {target.host} within {timeout:g} s"
        elif future.exception() is not None:
            resolved[target.name] = f"cannot resolve {target.host}: {future.exception()}"
        else:
            family, _, _, _, address = future.result()[0]
            resolved[target.name] = (family, address)
    return resolved


def probe_round(targets: list[Target], timeout: float) -> dict[str, str]:
    """Probe every target once, in parallel; return, per target name, ""
    when it answered or what went wrong."""
    results: dict[str, str] = {}
    pending: dict[socket.socket, tuple[Target, bytes, bool]] = {}
    resolved = _resolve_all(targets, timeout)
    with selectors.DefaultSelector() as selector:
        for target in targets:
            if isinstance(resolved[target.name], str):
                results[target.name] = resolved[target.name]
                continue
            family, address = resolved[target.name]
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as exc:
                results[target.name] = f"cannot open a socket: {exc}"
                continue
            nat_t = target.port == NAT_T_PORT
            try:
                sock.setblocking(False)
                sock.connect(address)
                request = new_request(sock.getsockname()[:2], address[:2], nat_t=nat_t, redirect_supported=False)
                sock.send(request.datagram)
            except OSError as exc:
                sock.close()
                results[target.name] = f"cannot send to {target.host}: {exc.strerror or exc}"
                continue
            pending[sock] = (target, request.initiator_spi, nat_t)
            selector.register(sock, selectors.EVENT_READ)

        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                sock = key.fileobj
                target, spi, nat_t = pending[sock]
                try:
                    datagram = sock.recv(65535)
                except BlockingIOError:
                    continue
                except OSError as exc:  # ICMP port or host unreachable
                    results[target.name] = exc.strerror or str(exc)
                else:
                    if not is_answer(spi, datagram, nat_t):
                        continue
                    results[target.name] = ""
                selector.unregister(sock)
                sock.close()
                del pending[sock]
        for sock, (target, _, _) in pending.items():
            results[target.name] = f"no answer within {timeout:g} s"
            selector.unregister(sock)
            sock.close()
    return results


class HealthChecker(PeriodicThread):
    """Probes the targets `targets()` returns every `interval` seconds and
    passes each round's results to `report`."""

    def __init__(
        self,
        targets: Callable[[], list[Target]],
        report: Callable[[dict[str, str]], None],
        interval: Callable[[], float],
        timeout: Callable[[], float],
    ) -> None:
        super().__init__("health", interval)
        self._targets = targets
        self._report = report
        self._timeout = timeout

    def step(self) -> None:
        targets = self._targets()
        if targets:
            self._report(probe_round(targets, self._timeout()))
