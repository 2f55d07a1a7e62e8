"""The control plane: gateway state, health checks, load polling, reload,
drain and counters, feeding tables and gateway state to the workers.

It runs in threads beside the data plane: in the serving process when
there is one worker, in the supervisor when workers are processes.  One
housekeeping thread applies every change: it rebuilds the table when the
set of member gateways changes, sends a new gateway state when loads or
high-water marks change, runs reloads and logs the counters.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace

from fastredir import counters as layout
from fastredir.config import Config, ConfigError, load_config, with_overrides
from fastredir.health import HealthChecker, Target
from fastredir.loadsource import LoadPoller
from fastredir.pool import CounterIds, GatewayPool
from fastredir.sockets import ListenerIds, bind_all, close_all

log = logging.getLogger("fastredir")

HOUSEKEEPING_PERIOD = 1.0  # seconds between state checks when nothing else happens
# Keys a reload cannot change in a running process.
RESTART_ONLY = ("workers", "batch", "control", "metrics", "user", "group")


class ReloadRefused(Exception):
    """A reload was rejected; the running configuration stays."""


class Controller:
    """Owns the configuration, the gateway pool, the sockets of every
    worker and the links to them."""

    def __init__(self, config: Config, config_path: str | None, overrides: tuple, counter_memory) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides  # (listeners, gateways) given on the command line
        self.counter_ids = CounterIds(layout.MAX_GATEWAY_IDS)
        self.listener_ids = ListenerIds()
        self.lock = threading.RLock()
        self.pool = GatewayPool(config, self.counter_ids)
        self.generation = 0
        self.table = self.pool.build_table(time.monotonic())
        self.rebuilds = 0
        self.reloads = {"done": 0, "refused": 0}
        self.counter_memory = counter_memory
        self.reader = layout.CounterReader([layout.region(counter_memory, w) for w in range(config.workers)])
        self.links: dict[int, object] = {}  # worker id -> link
        self.socket_sets: list[list] = []  # per worker: sockets in listener order
        self._wake = threading.Event()
        self._reload_requests: list[tuple[threading.Event, list]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_stats = None

    # -- start-up -------------------------------------------------------

    def bind(self) -> None:
        """Bind the sockets of every worker; raises ConfigError."""
        reuse_port = self.config.workers > 1
        sets = []
        try:
            for _ in range(self.config.workers):
                sets.append(bind_all(self.config.listeners, reuse_port))
        except ConfigError:
            for sockets in sets:
                close_all(sockets)
            raise
        self.socket_sets = sets
        for listener in self.config.listeners:
            self.listener_ids.id_of(listener)

    def entries_for(self, worker_id: int) -> list[tuple]:
        """Return (listener, listener id, socket) for one worker."""
        return [
            (listener, self.listener_ids.id_of(listener), sock)
            for listener, sock in zip(self.config.listeners, self.socket_sets[worker_id])
        ]

    def start(self) -> None:
        """Start the housekeeping, health and load threads."""
        threads = [threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)]
        threads.append(
            HealthChecker(
                self._health_targets,
                self._report_health,
                lambda: self.config.health.interval,
                lambda: self.config.health.timeout,
            )
        )
        threads.append(
            LoadPoller(
                self._load_sources,
                self._report_load,
                lambda: self.config.load.interval,
                lambda: self.config.load.timeout,
            )
        )
        self._threads = threads
        self._next_stats = self._stats_deadline()
        for thread in threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            stop = getattr(thread, "stop", None)
            if stop is not None:
                stop()

    # -- inputs from threads and commands -------------------------------

    def _health_targets(self) -> list[Target]:
        with self.lock:
            if not self.config.health.enabled:
                return []
            targets = []
            for gateway in self.config.gateways:
                port = gateway.health_port or self.config.health.port
                host = str(gateway.target.value)
                targets.append(Target(gateway.name, host, port))
            return targets

    def _report_health(self, results: dict[str, str]) -> None:
        with self.lock:
            for name, problem in results.items():
                if name in self.pool.statuses:
                    self.pool.record_probe(name, not problem, problem)
        self._wake.set()

    def _load_sources(self) -> list:
        with self.lock:
            return [(g.name, g.load) for g in self.config.gateways if g.load is not None and g.load.kind != "static"]

    def _report_load(self, name: str, load: int | None, problem: str) -> None:
        with self.lock:
            if name in self.pool.statuses:
                self.pool.record_load(name, load, time.monotonic(), problem)
        self._wake.set()

    def drain(self, name: str, drained: bool) -> str:
        """Drain or undrain a gateway at once; return its name, or raise
        KeyError for an unknown gateway."""
        with self.lock:
            status = self.pool.set_drained(name, drained)
            self._publish()
            return status.name

    def request_reload(self, wait: bool = False, timeout: float = 60.0) -> tuple[str, list[str]]:
        """Ask the housekeeping thread to reload; with `wait`, return its
        outcome: ("" when done, else why it was refused) and warnings."""
        done = threading.Event()
        outcome: list = []
        with self.lock:
            self._reload_requests.append((done, outcome))
        self._wake.set()
        if not wait:
            return "", []
        if not done.wait(timeout):
            return f"the reload did not finish within {timeout:g} s", []
        return outcome[0]

    # -- the housekeeping thread ----------------------------------------

    def _housekeeping(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(HOUSEKEEPING_PERIOD)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                with self.lock:
                    requests, self._reload_requests = self._reload_requests, []
                for done, outcome in requests:
                    try:
                        outcome.append(self._reload())
                    except Exception as exc:  # reply to the requester, keep running
                        log.exception("reload failed")
                        outcome.append((f"internal error: {exc}", []))
                    finally:
                        done.set()
                with self.lock:
                    self.pool.state_changed = True  # loads may have expired
                    self._publish()
                self._log_stats_when_due()
            except Exception:  # the control plane must outlive one bad step
                log.exception("housekeeping step failed")

    def _publish(self) -> None:
        """Send the workers what changed: a new table when the member
        gateways changed, else a new state when loads or flags changed."""
        now = time.monotonic()
        if self.pool.membership_changed:
            # First mark the gateways that left as unusable in the current
            # table, which takes effect at once; then rebuild.
            self.table = self.pool.with_state(self.table, now)
            self._send(("state", self.generation, self.table.state))
            self.table = self.pool.build_table(now)
            self.generation += 1
            self.rebuilds += 1
            log.info(
                "gateway table rebuilt (generation %d): %s",
                self.generation,
                ", ".join(g.name for g in self.table.gateways) or "no gateway",
            )
            self._send(("table", self.generation, self.table))
        elif self.pool.state_changed:
            new_table = self.pool.with_state(self.table, now)
            if new_table.state != self.table.state:
                self.table = new_table
                self._send(("state", self.generation, new_table.state))

    def _send(self, message: tuple) -> None:
        for worker_id, link in list(self.links.items()):
            try:
                link.send(message)
            except OSError as exc:
                log.error("cannot update worker %d: %s; it is restarted if it died", worker_id, exc)

    def _stats_deadline(self) -> float | None:
        interval = self.config.logging.stats_interval
        return time.monotonic() + interval if interval else None

    def _log_stats_when_due(self) -> None:
        if self._next_stats is not None and time.monotonic() >= self._next_stats:
            log.info("counters: %s", self.summary())
            self._next_stats = self._stats_deadline()

    def summary(self) -> str:
        per_gateway = {}
        listener_ids = [self.listener_ids.id_of(listener) for listener in self.config.listeners]
        for gateway in self.config.gateways:
            counter_id = self.counter_ids.id_of(gateway.name)
            per_gateway[gateway.name] = sum(self.reader.redirects(lid, counter_id) for lid in listener_ids)
        return layout.summary_line(self.reader.verdicts(), per_gateway)

    # -- reload ---------------------------------------------------------

    def _reload(self) -> tuple[str, list[str]]:
        """Reread, check and apply the configuration file; return ("" or
        why the reload was refused, warnings)."""
        warnings: list[str] = []
        try:
            self._apply_reload(warnings)
        except ReloadRefused as exc:
            self.reloads["refused"] += 1
            log.error("reload refused, the running configuration stays: %s", exc)
            return str(exc), []
        for warning in warnings:
            log.warning("reload: %s", warning)
        self.reloads["done"] += 1
        return "", warnings

    def _apply_reload(self, warnings: list[str]) -> None:
        if self.config_path is None:
            raise ReloadRefused("there is no configuration file to reread (serve runs on the embedded default)")
        try:
            new = load_config(self.config_path)
            new = with_overrides(new, *self.overrides)
        except ConfigError as exc:
            raise ReloadRefused(str(exc)) from None
        with self.lock:
            old = self.config
            for key in RESTART_ONLY:
                if getattr(new, key) != getattr(old, key):
                    warnings.append(f"{key} changed; that takes effect only after a restart")
                    new = replace(new, **{key: getattr(old, key)})
            new_sets, added, removed = self._rebind(old, new)
            try:
                pool = GatewayPool(new, self.counter_ids, previous=self.pool)
            except ValueError as exc:
                for sockets in new_sets:
                    close_all(s for s, fresh in sockets if fresh)
                raise ReloadRefused(str(exc)) from None
            removed_keys = {(l.address, l.port) for l in removed}
            retired = [
                sock
                for sockets in self.socket_sets
                for listener, sock in zip(old.listeners, sockets)
                if (listener.address, listener.port) in removed_keys
            ]
            self.config, self.pool = new, pool
            self.socket_sets = [[s for s, _ in sockets] for sockets in new_sets]
            if added or removed:
                for worker_id, link in list(self.links.items()):
                    link.send(("listeners", self.entries_for(worker_id)))
                if self.config.workers > 1:
                    # Worker processes hold their own descriptors; in one
                    # process the worker closes these after its swap.
                    close_all(retired)
            if new.gateways == old.gateways and new.selection == old.selection:
                # Same table: keep it and its generation; states may change.
                pool.adopt_members(self.table)
            self._publish()
            self.reader = layout.CounterReader(
                [layout.region(self.counter_memory, w) for w in range(self.config.workers)]
            )
        log.info(
            "reload done from %s: %d listeners (%d added, %d removed), %d gateways, table generation %d",
            self.config_path,
            len(new.listeners),
            len(added),
            len(removed),
            len(new.gateways),
            self.generation,
        )

    def _rebind(self, old: Config, new: Config):
        """Bind the listeners `new` adds, for every worker; return per
        worker [(socket, is new)] in `new`'s listener order, and the added
        and removed listeners."""
        old_keys = {(l.address, l.port): i for i, l in enumerate(old.listeners)}
        added = [l for l in new.listeners if (l.address, l.port) not in old_keys]
        new_keys = {(l.address, l.port) for l in new.listeners}
        removed = [l for l in old.listeners if (l.address, l.port) not in new_keys]
        changed = [
            l for l in new.listeners
            if (l.address, l.port) in old_keys and old.listeners[old_keys[(l.address, l.port)]] != l
        ]
        if changed:
            raise ReloadRefused(
                "listener options changed on " + ", ".join(str(l) for l in changed) + "; remove the listener, "
                "reload, then add it back, or restart"
            )
        fresh_sets = []
        try:
            for _ in range(self.config.workers):
                fresh_sets.append(bind_all(added, self.config.workers > 1))
            for listener in added:
                self.listener_ids.id_of(listener)
        except ConfigError as exc:
            for sockets in fresh_sets:
                close_all(sockets)
            message = str(exc)
            if os.geteuid() != 0 and self.config.user:
                message += f"; fastredir runs as user {self.config.user} now, so restart it to add this listener"
            raise ReloadRefused(message) from None
        result = []
        for worker_id in range(self.config.workers):
            fresh = dict(zip(((l.address, l.port) for l in added), fresh_sets[worker_id]))
            sockets = []
            for listener in new.listeners:
                key = (listener.address, listener.port)
                if key in fresh:
                    sockets.append((fresh[key], True))
                else:
                    sockets.append((self.socket_sets[worker_id][old_keys[key]], False))
            result.append(sockets)
        return result, added, removed

    # -- status ---------------------------------------------------------

    def status(self) -> dict:
        """Return the state shown by `fastredir status` and the metrics."""
        with self.lock:
            now = time.monotonic()
            gateways = self.pool.snapshot(now)
            members = {g.name for g in self.table.gateways}
            for entry in gateways:
                entry["in_table"] = entry["name"] in members
                entry["redirects"] = sum(
                    self.reader.redirects(self.listener_ids.id_of(l), entry["counter_id"]) for l in self.config.listeners
                )
            listeners = []
            for listener in self.config.listeners:
                lid = self.listener_ids.id_of(listener)
                verdicts = self.reader.verdicts(lid)
                listeners.append(
                    {
                        "listener": str(listener),
                        "family": f"ipv{listener.address.version}",
                        "nat_t": listener.nat_t,
                        "anycast": listener.anycast,
                        "id": lid,
                        "verdicts": {v.label: verdicts[v] for v in layout.Verdict},
                    }
                )
            totals = self.reader.verdicts()
            return {
                "config": self.config.source,
                "generation": self.generation,
                "table_rebuilds": self.rebuilds,
                "reloads": dict(self.reloads),
                "workers": self.config.workers,
                "gateways": gateways,
                "listeners": listeners,
                "received": sum(totals),
                "answered": totals[layout.Verdict.REDIRECTED] + totals[layout.Verdict.REDIRECTED_OVERFLOW],
                "verdicts": {v.label: totals[v] for v in layout.Verdict},
                "batches": self.reader.batches(),
            }

