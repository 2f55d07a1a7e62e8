"""The gateway pool: health, drain and load state of every configured
gateway, and the table and state the fast path gets from them.

Sans-I/O: health probes, load readings and operator commands come in as
method calls with the time (`now`, seconds of a monotonic clock); tables
and states go out.  This is the one place where a gateway's state
changes, so it is also where each change is logged.

A gateway is a member of the table while it is up and not drained.  A
change of membership needs a table rebuild (`membership_changed`); load
and high-water changes only need a new GatewayState for the current
table.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from fastredir.config import Config, GatewayConfig
from fastredir.selection import (
    ANYCAST,
    MAX_SCORE,
    ROOM,
    USABLE,
    GatewayState,
    GatewayTable,
    build_table,
)

log = logging.getLogger("fastredir")

SCORE_SCALE = 1 << 20  # a score is load / capacity, in units of 2**-20


@dataclass
class GatewayStatus:
    """Health, drain and load state of one gateway."""

    config: GatewayConfig
    counter_id: int
    up: bool = True  # unknown counts as up until `fall` probes go unanswered
    confirmed: bool = False  # `rise` answers or `fall` failures in a row seen
    answered_in_row: int = 0
    unanswered_in_row: int = 0
    last_problem: str = ""
    drained: bool = False
    load: int | None = None
    load_time: float | None = None
    load_problem: str = ""
    full: bool = False
    expired: bool = False  # the last load reading is older than load.max_age

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def member(self) -> bool:
        return self.up and not self.drained


@dataclass
class CounterIds:
    """Stable counter ids for gateway names, kept across reloads so that a
    gateway's counters continue; ids are never reused."""

    limit: int
    ids: dict[str, int] = field(default_factory=dict)

    def id_of(self, name: str) -> int:
        key = name.lower().rstrip(".")
        if key not in self.ids:
            if len(self.ids) >= self.limit:
                raise ValueError(
                    f"more than {self.limit} distinct gateways since start-up; restart fastredir to add more"
                )
            self.ids[key] = len(self.ids)
        return self.ids[key]


class GatewayPool:
    """Gateway states for one configuration."""

    def __init__(self, config: Config, counter_ids: CounterIds, previous: GatewayPool | None = None) -> None:
        self.config = config
        self.statuses: dict[str, GatewayStatus] = {}
        for gateway in config.gateways:
            status = GatewayStatus(gateway, counter_ids.id_of(gateway.name))
            old = previous.statuses.get(gateway.name) if previous is not None else None
            if old is not None:
                # A reload keeps what is known of a gateway that stays.
                status.up, status.confirmed, status.drained = old.up, old.confirmed, old.drained
                status.answered_in_row, status.unanswered_in_row = old.answered_in_row, old.unanswered_in_row
                status.load, status.load_time, status.full = old.load, old.load_time, old.full
            self.statuses[gateway.name] = status
        self.membership_changed = True
        self.state_changed = True
        self._members: tuple[str, ...] = ()

    def find(self, name: str) -> GatewayStatus | None:
        """Return the status of the gateway called `name`: an address in
        any notation, or a host name in any case, with or without the
        trailing dot; or None."""
        try:
            key: object = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            key = name.lower().rstrip(".")
        for status in self.statuses.values():
            value = status.config.target.value
            candidate = value if not isinstance(value, str) else value.lower().rstrip(".")
            if candidate == key:
                return status
        return None

    # -- inputs ---------------------------------------------------------

    def record_probe(self, name: str, answered: bool, problem: str = "") -> None:
        """Record one health probe of gateway `name`."""
        status = self.statuses[name]
        health = self.config.health
        if answered:
            status.answered_in_row += 1
            status.unanswered_in_row = 0
            if status.answered_in_row >= health.rise:
                status.confirmed = True
            if not status.up and status.answered_in_row >= health.rise:
                status.up = True
                log.info("gateway %s is up: %d probes in a row answered", name, status.answered_in_row)
                self._membership_may_change()
        else:
            status.unanswered_in_row += 1
            status.answered_in_row = 0
            status.last_problem = problem
            if status.unanswered_in_row >= health.fall:
                status.confirmed = True
            if status.up and status.unanswered_in_row >= health.fall:
                status.up = False
                log.warning(
                    "gateway %s is down: %d probes in a row unanswered (%s)",
                    name,
                    status.unanswered_in_row,
                    problem or "no answer",
                )
                self._membership_may_change()

    def set_drained(self, name: str, drained: bool) -> GatewayStatus:
        """Drain or undrain a gateway; raises KeyError for an unknown name."""
        status = self.find(name)
        if status is None:
            raise KeyError(name)
        if status.drained != drained:
            status.drained = drained
            log.info("gateway %s %s", status.name, "drained: no new clients" if drained else "undrained")
            self._membership_may_change()
        return status

    def record_load(self, name: str, load: int | None, now: float, problem: str = "") -> None:
        """Record a load reading (IKE SAs), or a failed poll (None)."""
        status = self.statuses[name]
        if load is None:
            if problem != status.load_problem:
                log.warning("gateway %s: load poll failed: %s", name, problem)
            status.load_problem = problem
            return
        if status.load_problem:
            log.info("gateway %s: load poll works again (%d IKE SAs)", name, load)
        status.load_problem = ""
        status.load, status.load_time = load, now
        self.state_changed = True

    def adopt_members(self, table: GatewayTable) -> None:
        """Take `table` (built from the same gateways) as the current one:
        no rebuild is needed unless its members differ from ours."""
        self._members = tuple(g.name for g in table.gateways)
        members = tuple(name for name, status in self.statuses.items() if status.member)
        self.membership_changed = members != self._members
        self.state_changed = True

    def _membership_may_change(self) -> None:
        self.state_changed = True
        members = tuple(name for name, status in self.statuses.items() if status.member)
        if members != self._members:
            self.membership_changed = True

    # -- outputs --------------------------------------------------------

    def effective_load(self, status: GatewayStatus, now: float) -> int:
        """Return the gateway's load: its static value, its last reading
        while fresh, or the configured default."""
        source = status.config.load
        if source is not None and source.kind == "static":
            return source.value
        if status.load is None or status.load_time is None:
            return self.config.load.default
        if now - status.load_time > self.config.load.max_age:
            return self.config.load.default
        return status.load

    def build_table(self, now: float) -> GatewayTable:
        """Build the table over the member gateways, with their state."""
        members = [status for status in self.statuses.values() if status.member]
        self._members = tuple(status.name for status in members)
        if not members:
            log.error("no gateway is up and undrained: clients get no answer until one is")
        table = build_table(
            [status.config.to_gateway(status.counter_id) for status in members],
            size=self.config.selection.table_size,
            seed=self.config.selection.seed,
            key_mode=self.config.selection.key,
        )
        self.membership_changed = False
        return self.with_state(table, now)

    def with_state(self, table: GatewayTable, now: float) -> GatewayTable:
        """Return `table` with flags and scores of the current state."""
        self._update_full(now)
        flags, scores = [], []
        for gateway in table.gateways:
            status = self.statuses.get(gateway.name)
            if status is None:  # removed by a reload: unusable until the rebuild
                flags.append(0)
                scores.append(MAX_SCORE)
                continue
            flag = USABLE if status.member else 0
            flag |= 0 if status.full else ROOM
            flag |= ANYCAST if status.config.anycast else 0
            flags.append(flag)
            scores.append(self._score(status, self.effective_load(status, now)))
        state = GatewayState.make(flags, scores, self.config.selection.overflow == "least_loaded")
        self.state_changed = False
        return GatewayTable(**{**table.__dict__, "state": state})

    def _update_full(self, now: float) -> None:
        """Compare every gateway's load with its high-water mark, and log
        each change."""
        for status in self.statuses.values():
            load = self.effective_load(status, now)
            expired = self._expired(status, now)
            if expired != status.expired:
                status.expired = expired
                if expired:
                    log.warning(
                        "gateway %s: load reading older than %g s; assuming load.default %d until a new one",
                        status.name,
                        self.config.load.max_age,
                        self.config.load.default,
                    )
            limit = status.config.limit
            full = limit is not None and load >= limit
            if full == status.full:
                continue
            status.full = full
            if full:
                log.warning("gateway %s is full: load %d at or above %d; no new clients", status.name, load, limit)
            else:
                log.info("gateway %s has room again: load %d below %d", status.name, load, limit)

    def _expired(self, status: GatewayStatus, now: float) -> bool:
        source = status.config.load
        if source is None or source.kind == "static" or status.load_time is None:
            return False
        return now - status.load_time > self.config.load.max_age

    def _health_word(self, status: GatewayStatus) -> str:
        if not self.config.health.enabled:
            return "not checked"
        if not status.confirmed:
            return "checking"
        return "up" if status.up else "down"

    @staticmethod
    def _score(status: GatewayStatus, load: int) -> int:
        # Load relative to what the gateway is sized for: its capacity,
        # else its weight, so that gateways compare fairly.
        size = status.config.capacity or status.config.limit or status.config.weight
        return min(load * SCORE_SCALE // size, MAX_SCORE)

    def snapshot(self, now: float) -> list[dict]:
        """Return each gateway's state for status output and metrics."""
        result = []
        for status in self.statuses.values():
            age = None if status.load_time is None else round(now - status.load_time, 1)
            result.append(
                {
                    "name": status.name,
                    "counter_id": status.counter_id,
                    "weight": status.config.weight,
                    "health": self._health_word(status),
                    "up": status.up,
                    "drained": status.drained,
                    "load": self.effective_load(status, now),
                    "load_age": age,
                    "load_problem": status.load_problem,
                    "load_expired": status.expired,
                    "capacity": status.config.capacity,
                    "high_water": status.config.limit,
                    "full": status.full,
                    "anycast": status.config.anycast,
                    "last_problem": status.last_problem,
                }
            )
        return result
