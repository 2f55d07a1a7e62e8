"""`fastredir serve`: start-up, signals, worker processes and shutdown.

Everything is bound before anything is served, so a configuration that
cannot be bound fails as a whole.  With `workers: 1` the worker runs in
the main thread and the controller in threads beside it.  With N workers
the main process becomes a supervisor running the controller: it forks
one process per worker, each with its own SO_REUSEPORT socket per
listener, and restarts a worker that dies.  The supervisor keeps every
worker's sockets open, so datagrams for a dead worker wait in its socket
until the new one reads them.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from fastredir import counters as layout
from fastredir.config import Config
from fastredir.control import start_server, stop_server
from fastredir.controller import Controller
from fastredir.exceptions import ConfigError
from fastredir.worker import LocalLink, ProcessLink, Worker

log = logging.getLogger("fastredir")

RESTART_DELAY = 1.0  # seconds before a dead worker is started again
# Signals that only the main thread may take: Python runs handlers in the
# main thread alone, so one delivered to another thread could wait there
# unhandled while the main thread sleeps in a system call.
MAIN_THREAD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _main_thread_takes_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MAIN_THREAD_SIGNALS)


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
    if config.health.enabled:
        health = config.health
        log.info(
            "health checks every %g s, down after %d unanswered, up after %d answered",
            health.interval,
            health.fall,
            health.rise,
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


def drop_privileges(user: str | None, group: str | None, paths: list[str]) -> None:
    """Become `user` (and `group`, default the user's own) after giving
    them the files in `paths`; raise ConfigError when that fails."""
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(user) if user else None
        uid = entry.pw_uid if entry else os.getuid()
        if group:
            gid = grp.getgrnam(group).gr_gid
        elif entry:
            gid = entry.pw_gid
        else:
            gid = os.getgid()
        for path in paths:
            os.chown(path, uid, gid)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except KeyError as exc:
        raise ConfigError(f"cannot drop privileges: no such user or group: {exc.args[0]}") from None
    except OSError as exc:
        raise ConfigError(f"cannot drop privileges to user {user or '(unchanged)'}: {exc.strerror or exc}") from None
    log.info("running as user %s (uid %d), group id %d", user or uid, uid, gid)


def serve(config: Config, implementation, config_path: str | None = None, overrides: tuple = (None, None)) -> int:
    """Run the redirector until SIGTERM or SIGINT; return the exit status."""
    # Every thread started from here on inherits the blocked signals; the
    # main thread unblocks them once the threads run.
    signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    memory = layout.allocate(config.workers)
    controller = Controller(config, config_path, overrides, memory)
    controller.bind()
    describe_startup(config, controller.table, implementation)
    servers = []
    try:
        if config.control.enabled:
            servers.append((start_server(controller, config.control), config.control))
        if config.metrics.listen is not None:
            from fastredir.metrics import start_metrics_server

            servers.append((start_metrics_server(controller, config.metrics.listen), None))
        if config.user or config.group:
            owned = [config.control.socket] if config.control.socket else []
            drop_privileges(config.user, config.group, owned)
    except (OSError, ConfigError) as exc:
        _stop_servers(servers)
        raise ConfigError(str(exc)) from None

    try:
        if config.workers == 1:
            return _serve_in_process(controller, implementation, memory)
        return Supervisor(controller, implementation, memory).run()
    finally:
        controller.stop()
        _stop_servers(servers)


def _stop_servers(servers) -> None:
    for server, control in servers:
        if control is not None:
            stop_server(server, control)
        else:
            server.shutdown()


def _serve_in_process(controller: Controller, implementation, memory) -> int:
    link = LocalLink()
    with controller.lock:
        worker = Worker(
            0,
            controller.config,
            controller.entries_for(0),
            controller.table,
            controller.generation,
            implementation,
            layout.region(memory, 0),
            link,
        )
        controller.links[0] = link

    def stop(signum, _frame) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: _reload_on_signal(controller))
    controller.start()
    _main_thread_takes_signals()
    worker.run()
    controller.stop()
    line = controller.summary()
    for name, count in sorted(worker.slow_path.exchanges.items()):
        line += f" slow[{name}]={count}"
    log.info("final counters: %s", line)
    return 0


def _reload_on_signal(controller: Controller) -> None:
    log.info("received SIGHUP, reloading %s", controller.config_path or "(no file)")
    controller.request_reload()  # its outcome is logged


class Supervisor:
    """Forks one process per worker, keeps the controller running, and
    restarts any worker that dies."""

    def __init__(self, controller: Controller, implementation, memory) -> None:
        self.controller = controller
        self.implementation = implementation
        self.memory = memory
        self.children: dict[int, int] = {}  # pid -> worker id
        self.stopping = False

    def _start(self, worker_id: int) -> None:
        controller = self.controller
        with controller.lock:
            ours, theirs = ProcessLink.pair()
            pid = os.fork()
            if pid == 0:
                self._child(worker_id, theirs, ours)
            theirs.close()
            old = controller.links.get(worker_id)
            controller.links[worker_id] = ours
        if old is not None:
            old.close()
        self.children[pid] = worker_id
        log.info("worker %d started (pid %d)", worker_id, pid)

    def _child(self, worker_id: int, link: ProcessLink, other_end: ProcessLink) -> None:
        status = 1
        try:
            other_end.close()
            controller = self.controller
            for other_id, sockets in enumerate(controller.socket_sets):
                if other_id != worker_id:
                    for sock in sockets:
                        sock.close()
            for other in controller.links.values():
                other.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops us
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads
            worker = Worker(
                worker_id,
                controller.config,
                controller.entries_for(worker_id),
                controller.table,
                controller.generation,
                self.implementation,
                layout.region(self.memory, worker_id),
                link,
            )

            def stop(signum, _frame) -> None:
                worker.stopping = True

            signal.signal(signal.SIGTERM, stop)
            _main_thread_takes_signals()
            worker.run()
            log.info("worker %d: final counters: %s", worker_id, worker.final_summary())
            status = 0
        except BaseException:
            log.exception("worker %d failed", worker_id)
        finally:
            logging.shutdown()
            os._exit(status)

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

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda *_: _reload_on_signal(self.controller))
        for worker_id in range(self.controller.config.workers):
            self._start(worker_id)
        self.controller.start()
        _main_thread_takes_signals()
        while self.children:
            try:
                pid, status = os.wait()
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
        self.controller.stop()
        log.info("final counters: %s", self.controller.summary())
        return 0
