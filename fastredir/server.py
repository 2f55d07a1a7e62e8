"""`fastredir serve`: sockets, worker processes, signals and counters.

This is the I/O layer around the fast path.  The parent binds every socket
before anything is served, so a configuration that cannot be bound fails
as a whole.  With `workers: 1` the parent serves itself; with N workers it
forks N processes, each with its own SO_REUSEPORT socket per listener, and
restarts a worker that dies.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field

from fastredir.config import Config, Listener
from fastredir.exceptions import ConfigError
from fastredir.ikev2 import ExchangeType, name_of
from fastredir.verdict import VERDICT_COUNT, Verdict

log = logging.getLogger("fastredir")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78  # Linux <linux/in6.h>; not exported by the socket module
RECEIVE_BUFFER = 8 * 1024 * 1024
RUN_SLICE_MS = 200  # longest time the fast path runs before Python checks signals
RESTART_DELAY = 1.0  # seconds before a dead worker is started again


def open_socket(listener: Listener, reuse_port: bool) -> socket.socket:
    """Bind a non-blocking UDP socket for `listener`.

    A socket bound to one address replies from it.  A wildcard socket
    (0.0.0.0 or ::) gets pktinfo, so the loops can send each reply from
    the address its request was sent to; bound sockets skip that cost.
    """
    wildcard = listener.address.is_unspecified
    if listener.address.version == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        if listener.address.version == 4:
            if wildcard:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if wildcard:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        if listener.anycast:
            # An anycast address may be added to the host after start-up.
            if listener.address.version == 4:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass  # the kernel caps the size at net.core.rmem_max anyway
        sock.bind((str(listener.address), listener.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_all(listeners: tuple[Listener, ...], reuse_port: bool) -> list[socket.socket]:
    """Bind one socket per listener, or none at all: on failure, close
    those already bound and raise ConfigError naming the listener."""
    sockets: list[socket.socket] = []
    for listener in listeners:
        try:
            sockets.append(open_socket(listener, reuse_port))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise ConfigError(_bind_error_message(listener, exc)) from None
    return sockets


def _bind_error_message(listener: Listener, exc: OSError) -> str:
    message = f"cannot listen on {listener}: {exc.strerror}"
    if exc.errno == errno.EACCES and listener.port < 1024:
        message += (
            f"; port {listener.port} needs root or CAP_NET_BIND_SERVICE, "
            "or choose a port from 1024 up with --listen"
        )
    elif exc.errno == errno.EADDRINUSE:
        message += "; another process (or another fastredir) already uses it"
    elif exc.errno == errno.EADDRNOTAVAIL:
        message += (
            "; the address is not configured on this host (to bind it before it is, "
            "set 'anycast: true' on this listen entry of a configuration file)"
        )
    return message


@dataclass
class Counters:
    """Totals of one worker since it started, across table swaps."""

    verdicts: list[int] = field(default_factory=lambda: [0] * VERDICT_COUNT)
    per_gateway: dict[str, int] = field(default_factory=dict)
    slow_exchanges: dict[str, int] = field(default_factory=dict)

    @property
    def received(self) -> int:
        return sum(self.verdicts)

    def summary(self) -> str:
        """Return one log line: totals, then every non-zero reason."""
        parts = [f"received={self.received}"]
        for verdict in Verdict:
            if self.verdicts[verdict] or verdict == Verdict.REDIRECTED:
                parts.append(f"{verdict.label}={self.verdicts[verdict]}")
        for name, count in sorted(self.per_gateway.items()):
            parts.append(f"to[{name}]={count}")
        for name, count in sorted(self.slow_exchanges.items()):
            parts.append(f"slow[{name}]={count}")
        return " ".join(parts)


class SlowPath:
    """Receives datagrams the fast path hands over (IKE_AUTH,
    INFORMATIONAL and other exchanges of an existing IKE SA).

    TODO: redirect in IKE_AUTH and in INFORMATIONAL exchanges needs IKE SA
    state that this release does not keep, so these datagrams are counted
    by exchange type and dropped.
    """

    def __init__(self, counters: Counters, listeners: tuple[Listener, ...]) -> None:
        self._counters = counters
        self._listeners = listeners

    def handle(self, batch: list) -> None:
        # Each entry: (listener index, datagram, source address, source
        # port, destination address or None on a socket bound to one).
        for listener, data, _source, _port, _destination in batch:
            offset = 4 if self._listeners[listener].nat_t else 0
            name = name_of(ExchangeType, data[offset + 18])
            self._counters.slow_exchanges[name] = self._counters.slow_exchanges.get(name, 0) + 1


class Worker:
    """Runs the fast-path loop on one set of sockets until told to stop."""

    def __init__(
        self, config: Config, table, sockets: list[socket.socket], implementation, worker_id: int = 0
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self.implementation = implementation
        self.table = table
        self.counters = Counters()
        self.slow_path = SlowPath(self.counters, config.listeners)
        compiled = implementation.compile_table(self.table)
        pairs = [(sock, listener.nat_t) for sock, listener in zip(sockets, config.listeners)]
        self.loop = implementation.Loop(pairs, compiled, batch=config.batch)
        self.stopping = False

    def _collect(self) -> None:
        self.counters.verdicts = list(self.loop.verdict_counts())
        for index, count in enumerate(self.loop.gateway_counts()):
            name = self.table.gateways[index].name
            self.counters.per_gateway[name] = count

    def run(self) -> None:
        interval = self.config.logging.stats_interval
        next_report = time.monotonic() + interval if interval else None
        while not self.stopping:
            self.loop.run(RUN_SLICE_MS)
            queued = self.loop.take_slow()
            if queued:
                self.slow_path.handle(queued)
            if next_report is not None and time.monotonic() >= next_report:
                self._collect()
                log.info("%scounters: %s", self._prefix(), self.counters.summary())
                next_report = time.monotonic() + interval
        self._collect()
        log.info("%sfinal counters: %s", self._prefix(), self.counters.summary())

    def _prefix(self) -> str:
        return f"worker {self.worker_id}: " if self.config.workers > 1 else ""


def describe_startup(config: Config, table, implementation) -> None:
    """Log what this instance listens on and where it sends clients."""
    for listener in config.listeners:
        flags = ["NAT-T" if listener.nat_t else "IKE"]
        if listener.anycast:
            flags.append("anycast")
        log.info("listening on %s (%s)", listener, ", ".join(flags))
    shares = [0] * len(table.gateways)
    for slot in range(table.size):
        shares[table.gateway_at(slot)] += 1
    for gateway, share in zip(table.gateways, shares):
        log.info(
            "redirecting clients to %s (weight %d, %.1f%% of clients)",
            gateway.name,
            gateway.weight,
            100.0 * share / max(table.size, 1),
        )
    batching = f"batch {config.batch}" if implementation.IMPLEMENTATION == "cython" else "one datagram at a time"
    log.info(
        "fast path: %s, %s, %d worker%s, configuration from %s",
        implementation.IMPLEMENTATION,
        batching,
        config.workers,
        "" if config.workers == 1 else "s",
        config.source,
    )


def serve(config: Config, implementation) -> int:
    """Run the redirector until SIGTERM or SIGINT; return the exit status."""
    reuse_port = config.workers > 1
    table = config.build_table()
    socket_sets = [bind_all(config.listeners, reuse_port) for _ in range(config.workers)]
    describe_startup(config, table, implementation)
    if config.workers == 1:
        return _serve_in_process(config, table, socket_sets[0], implementation)
    return Supervisor(config, table, socket_sets, implementation).run()


def _serve_in_process(config: Config, table, sockets: list[socket.socket], implementation, worker_id: int = 0) -> int:
    worker = Worker(config, table, sockets, implementation, worker_id)

    def stop(signum, _frame) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        worker.stopping = True

    _install_handlers(stop)
    worker.run()
    return 0


def _install_handlers(stop) -> None:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # TODO: reread the configuration on SIGHUP; until then SIGHUP is
    # logged and ignored rather than ending the process.
    signal.signal(signal.SIGHUP, lambda *_: log.warning("SIGHUP ignored: reload is not implemented yet"))


class Supervisor:
    """Forks one process per worker and restarts any that dies."""

    def __init__(self, config: Config, table, socket_sets: list[list[socket.socket]], implementation) -> None:
        self.config = config
        self.table = table
        self.socket_sets = socket_sets
        self.implementation = implementation
        self.children: dict[int, int] = {}  # pid -> worker id
        self.stopping = False

    def _start(self, worker_id: int) -> None:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                for other_id, sockets in enumerate(self.socket_sets):
                    if other_id != worker_id:
                        for sock in sockets:
                            sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                status = _serve_in_process(
                    self.config, self.table, self.socket_sets[worker_id], self.implementation, worker_id
                )
            except BaseException:
                log.exception("worker %d failed", worker_id)
            finally:
                logging.shutdown()
                os._exit(status)
        self.children[pid] = worker_id
        log.info("worker %d started (pid %d)", worker_id, pid)

    def run(self) -> int:
        def stop(signum, _frame) -> None:
            if not self.stopping:
                log.info("received %s, stopping %d workers", signal.Signals(signum).name, len(self.children))
            self.stopping = True
            for pid in list(self.children):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        _install_handlers(stop)
        for worker_id in range(self.config.workers):
            self._start(worker_id)
        while self.children:
            try:
                pid, status = os.wait()
            except InterruptedError:
                continue
            except ChildProcessError:
                break
            worker_id = self.children.pop(pid, None)
            if worker_id is None or self.stopping:
                continue
            log.error(
                "worker %d (pid %d) exited with status %d; restarting it in %.0f s",
                worker_id,
                pid,
                os.waitstatus_to_exitcode(status),
                RESTART_DELAY,
            )
            time.sleep(RESTART_DELAY)
            if not self.stopping:
                self._start(worker_id)
        return 0
