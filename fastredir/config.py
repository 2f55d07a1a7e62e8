"""YAML configuration: loading, validation and command-line overrides.

Validation walks the YAML node tree rather than the loaded objects, so an
error names the file, the line, the key path and what is wrong, for
example ``site.yaml:12: gateways[2].weight: must be an integer from 1 to
65535, not -1``.  All errors of a file are reported together, and a
configuration is either wholly valid or not returned at all.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import urllib.parse
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any, Callable

import yaml

from fastredir.exceptions import ConfigError
from fastredir.hostname import is_host_name
from fastredir.ikev2 import FQDN_MAX_LENGTH, IKE_PORT, NAT_T_PORT
from fastredir.message import Address, GatewayIdentity
from fastredir.selection import (
    DEFAULT_SEED,
    DEFAULT_TABLE_SIZE,
    MAX_GATEWAYS,
    Gateway,
    GatewayTable,
    KeyMode,
    build_table,
    exclusion_key,
    is_prime,
)

DEFAULT_SOURCE = "<embedded default>"
LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
KEY_MODES = {"address": KeyMode.ADDRESS, "address+spi": KeyMode.ADDRESS_SPI}
OVERFLOW_ACTIONS = ("drop", "least_loaded")
MAX_LOAD = 100_000_000  # IKE SAs; far above the count of any one gateway
MAX_WORKERS = 256
MAX_TABLE_SIZE = 1 << 20  # a larger table takes seconds to build in Python
# The Maglev paper's rule of thumb: at least 100 slots per gateway keeps
# the share of each gateway within about 1% of its weight.
SLOTS_PER_GATEWAY = 100
# Whatever the weights, each gateway gets at least this many slots, so it
# can serve as the alternate of the slots beside it.
MIN_SLOTS = 10


@dataclass(frozen=True)
class Listener:
    """One UDP socket to serve: address, port and how to treat it."""

    address: Address
    port: int = IKE_PORT
    nat_t: bool = False  # expect the non-ESP marker (port 4500 by default)
    anycast: bool = False

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class LoadSource:
    """Source of a gateway's load (its IKE SA count)."""

    kind: str  # "vici", "http" or "static"
    location: str = ""  # the VICI socket (unix:///path or tcp://host:port) or the URL
    field: str = "ike_sas"  # for http: the JSON key, dots for nested objects
    value: int = 0  # for static


@dataclass(frozen=True)
class GatewayConfig:
    target: GatewayIdentity
    weight: int = 1
    addresses: tuple[Address, ...] = ()
    capacity: int | None = None  # IKE SAs the gateway is sized for
    high_water: int | None = None  # no new clients at or above this load
    anycast: bool = False
    load: LoadSource | None = None
    health_port: int | None = None  # overrides health.port

    def to_gateway(self, counter_id: int = -1) -> Gateway:
        aliases = tuple(GatewayIdentity.from_address(a) for a in self.addresses)
        return Gateway(self.target, self.weight, aliases, self.anycast, counter_id)

    @property
    def name(self) -> str:
        return str(self.target)

    @property
    def limit(self) -> int | None:
        """The load at which the gateway takes no new clients, if any."""
        return self.high_water if self.high_water is not None else self.capacity


@dataclass(frozen=True)
class SelectionConfig:
    key: KeyMode = KeyMode.ADDRESS
    table_size: int = DEFAULT_TABLE_SIZE
    seed: int = DEFAULT_SEED
    overflow: str = "drop"  # or "least_loaded": what to do when every gateway is full


@dataclass(frozen=True)
class HealthConfig:
    """Active IKE health checks of every gateway."""

    enabled: bool = False
    interval: float = 2.0  # seconds between probes of one gateway
    timeout: float = 1.0  # seconds to wait for an answer
    fall: int = 3  # unanswered probes in a row before a gateway is down
    rise: int = 2  # answered probes in a row before it is up again
    port: int = IKE_PORT


@dataclass(frozen=True)
class LoadConfig:
    """Polling of gateway load sources."""

    interval: float = 5.0  # seconds between polls of one gateway
    timeout: float = 2.0  # seconds a poll may take
    max_age: float = 30.0  # seconds after which a reading expires
    default: int = 0  # the load assumed without a fresh reading


@dataclass(frozen=True)
class ControlConfig:
    """The endpoint of drain, reload and status: a unix socket path, or a
    loopback address and port."""

    socket: str | None = None
    address: tuple[str, int] | None = None
    group: str | None = None  # group that may use the unix socket besides its owner

    @property
    def enabled(self) -> bool:
        return self.socket is not None or self.address is not None


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None  # HTTP address of the Prometheus endpoint


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"
    stats_interval: float = 60.0  # seconds; 0 turns periodic reports off


@dataclass(frozen=True)
class Config:
    listeners: tuple[Listener, ...]
    gateways: tuple[GatewayConfig, ...]
    workers: int = 1
    batch: int = 64
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    user: str | None = None  # drop to this user after binding sockets
    group: str | None = None
    source: str = DEFAULT_SOURCE

    def build_table(self) -> GatewayTable:
        """Build the table of every configured gateway, all usable."""
        return build_table(
            [g.to_gateway() for g in self.gateways],
            size=self.selection.table_size,
            seed=self.selection.seed,
            key_mode=self.selection.key,
        )


# ---------------------------------------------------------------------------
# Value checks shared by the file and the command line
# ---------------------------------------------------------------------------


def parse_ip(text: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 address: {text!r}") from None


def parse_gateway_target(text: str) -> GatewayIdentity:
    """Parse a gateway given as an IP address (IPv6 optionally in
    brackets) or a host name."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if not is_host_name(text) or len(text) > FQDN_MAX_LENGTH:
            hint = ""
            if text.rpartition(":")[2].isdigit():
                hint = "; a gateway has no port: REDIRECT names only an address or a name"
            raise ValueError(f"not an IP address or host name: {text!r}{hint}") from None
        return GatewayIdentity.from_text(text)
    if address.version == 6 and address.scope_id:
        raise ValueError(f"a gateway address cannot carry a scope ID (%{address.scope_id}): {text!r}")
    mapped = address.ipv4_mapped if address.version == 6 else None
    for candidate in (address, mapped):
        if candidate is not None and (
            candidate.is_unspecified or candidate.is_multicast or candidate == LIMITED_BROADCAST
        ):
            raise ValueError(f"a gateway must be a unicast address, not {address}")
    return GatewayIdentity.from_address(address)


def parse_host_port(text: str, default_port: int = IKE_PORT) -> tuple[str, int]:
    """Split ``HOST``, ``HOST:PORT``, ``[IPV6]`` or ``[IPV6]:PORT``."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")) or rest == ":":
            raise ValueError(f"expected [IPV6] or [IPV6]:PORT, not {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise ValueError(f"missing port after ':' in {text!r}")
    else:
        host, port_text = text, ""  # a bare IPv6 address or a host
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 1 to 65535, not {port_text!r}")
    return host, int(port_text)


def parse_listen_option(text: str) -> Listener:
    """Parse ``--listen ADDR[:PORT]``."""
    host, port = parse_host_port(text)
    address = parse_ip(host)
    _check_listen_address(address)
    return Listener(address, port, nat_t=port == NAT_T_PORT)


def parse_gateway_option(text: str) -> GatewayConfig:
    """Parse ``--gateway TARGET[=WEIGHT]``."""
    target, equals, weight_text = text.partition("=")
    weight = 1
    if equals:
        if not weight_text.isdigit() or not 1 <= int(weight_text) <= 0xFFFF:
            raise ValueError(f"weight must be an integer from 1 to 65535, not {weight_text!r}")
        weight = int(weight_text)
    return GatewayConfig(parse_gateway_target(target), weight)


def _check_listen_address(address: Address) -> None:
    if address.is_multicast:
        raise ValueError(f"cannot listen on multicast address {address}")


# ---------------------------------------------------------------------------
# Walking the YAML node tree
# ---------------------------------------------------------------------------


class _Walker:
    """Collects errors, each with its line and key path."""

    def __init__(self, source: str, loader: yaml.SafeLoader) -> None:
        self.source = source
        self.loader = loader
        self._errors: list[tuple[int, int, str]] = []

    @property
    def errors(self) -> list[str]:
        """The errors found so far, in the order of their lines."""
        return [text for _, _, text in sorted(self._errors)]

    def error(self, node: yaml.Node | None, path: str, problem: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        where = f":{line}" if node is not None else ""
        text = f"{self.source}{where}: {path or 'top level'}: {problem}"
        self._errors.append((line, len(self._errors), text))

    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"must be a mapping with keys {', '.join(allowed)}")
            return None
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                self.error(key_node, path, "keys must be plain names")
                continue
            if not key.isprintable():
                self.error(key_node, path, f"unknown key {_show(key)}")
                continue
            where = f"{path}.{key}" if path else key
            if key in result:
                self.error(key_node, where, "duplicate key")
            elif key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(allowed)}"
                self.error(key_node, where, f"unknown key{hint}")
            else:
                result[key] = value_node
        return result

    def sequence(self, node: yaml.Node, path: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, "must be a list")
            return None
        return list(node.value)

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, "must be a single value, not a list or mapping")
            return _INVALID
        try:
            return self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, KeyError, AttributeError, TypeError, OverflowError):
            # PyYAML raises more than YAMLError for values that do not
            # match an explicit tag, such as "!!int abc".
            self.error(node, path, f"invalid value {_show(node.value)} for tag {node.tag}")
            return _INVALID

    def integer(self, node: yaml.Node, path: str, low: int, high: int) -> Any:
        value = self.scalar(node, path)
        if value is _INVALID:
            return _INVALID
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.error(node, path, f"must be an integer from {low} to {high}, not {_show_text(node, value)}")
            return _INVALID
        return value

    def boolean(self, node: yaml.Node, path: str) -> Any:
        value = self.scalar(node, path)
        if value is not _INVALID and not isinstance(value, bool):
            self.error(node, path, f"must be true or false, not {_show_text(node, value)}")
            return _INVALID
        return value

    def choice(self, node: yaml.Node, path: str, choices: tuple[str, ...]) -> Any:
        value = self.scalar(node, path)
        if value is not _INVALID and value not in choices:
            self.error(node, path, f"must be one of {', '.join(choices)}, not {_show_text(node, value)}")
            return _INVALID
        return value

    def text(self, node: yaml.Node, path: str, parse: Callable[[str], Any]) -> Any:
        """Parse a value that must be written as text, such as an address."""
        value = self.scalar(node, path)
        if value is _INVALID:
            return _INVALID
        if not isinstance(value, str):
            if isinstance(value, int) and not isinstance(value, bool) and ":" in node.value:
                # YAML 1.1 reads an IPv6 address of digits and colons,
                # such as 1:0:0:0:0:0:0:1, as a base-60 integer.
                value = node.value
            else:
                kind = "empty" if value is None else type(value).__name__
                self.error(
                    node, path, f"must be text, not {_show(node.value)} ({kind}); quote it if it is a name"
                )
                return _INVALID
        try:
            return parse(value)
        except ValueError as exc:
            self.error(node, path, str(exc))
            return _INVALID


def _show_text(node: yaml.Node, value: Any) -> str:
    """Return the value as the file wrote it, or its repr if too long."""
    text = node.value if isinstance(node, yaml.ScalarNode) else None
    if isinstance(text, str) and len(text) <= 80 and text.isprintable():
        return text if text else "an empty value"
    return _show(value)


def _show(value: Any) -> str:
    """Return a short, printable repr of `value` for an error message."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return "<a number with too many digits>"
    return text if len(text) <= 80 else text[:77] + "..."


_INVALID = object()


def _listener(walker: _Walker, node: yaml.Node, path: str) -> Listener | None:
    keys = walker.mapping(node, path, ("address", "port", "nat_t", "anycast"))
    if keys is None:
        return None
    if "address" not in keys:
        walker.error(node, path, "missing key 'address'")
        return None

    def listen_address(text: str) -> Address:
        address = parse_ip(text)
        _check_listen_address(address)
        return address

    address = walker.text(keys["address"], f"{path}.address", listen_address)
    port = IKE_PORT
    if "port" in keys:
        port = walker.integer(keys["port"], f"{path}.port", 1, 65535)
    nat_t = port == NAT_T_PORT
    if "nat_t" in keys:
        nat_t = walker.boolean(keys["nat_t"], f"{path}.nat_t")
    anycast = False
    if "anycast" in keys:
        anycast = walker.boolean(keys["anycast"], f"{path}.anycast")
    if _INVALID in (address, port, nat_t, anycast):
        return None
    return Listener(address, port, nat_t, anycast)


def _gateway(walker: _Walker, node: yaml.Node, path: str) -> GatewayConfig | None:
    if isinstance(node, yaml.ScalarNode):
        target = walker.text(node, path, parse_gateway_target)
        return None if target is _INVALID else GatewayConfig(target)
    keys = walker.mapping(
        node,
        path,
        ("target", "weight", "addresses", "capacity", "high_water", "anycast", "load", "health_port"),
    )
    if keys is None:
        return None
    if "target" not in keys:
        walker.error(node, path, "missing key 'target'")
        return None
    target = walker.text(keys["target"], f"{path}.target", parse_gateway_target)
    values = _fields(
        walker,
        keys,
        path,
        {
            "weight": lambda n, p: walker.integer(n, p, 1, 0xFFFF),
            "capacity": lambda n, p: walker.integer(n, p, 1, MAX_LOAD),
            "high_water": lambda n, p: walker.integer(n, p, 1, MAX_LOAD),
            "anycast": walker.boolean,
            "load": lambda n, p: _load_source(walker, n, p),
            "health_port": lambda n, p: walker.integer(n, p, 1, 65535),
        },
    )
    addresses: list[Any] = []
    if "addresses" in keys:
        items = walker.sequence(keys["addresses"], f"{path}.addresses") or []
        for index, item in enumerate(items):
            addresses.append(walker.text(item, f"{path}.addresses[{index}]", parse_ip))
    if target is _INVALID or values is None or _INVALID in addresses:
        return None
    gateway = GatewayConfig(target, addresses=tuple(addresses), **values)
    if gateway.capacity is not None and gateway.high_water is not None and gateway.high_water > gateway.capacity:
        walker.error(
            keys["high_water"],
            f"{path}.high_water",
            f"{gateway.high_water} is above the capacity {gateway.capacity}",
        )
        return None
    return gateway


def _load_source(walker: _Walker, node: yaml.Node, path: str) -> Any:
    keys = walker.mapping(node, path, ("vici", "http", "field", "static"))
    if keys is None:
        return _INVALID
    kinds = [kind for kind in ("vici", "http", "static") if kind in keys]
    if len(kinds) != 1:
        walker.error(node, path, "must name exactly one of vici, http or static")
        return _INVALID
    kind = kinds[0]
    if kind == "static":
        value = walker.integer(keys["static"], f"{path}.static", 0, MAX_LOAD)
        return _INVALID if value is _INVALID else LoadSource("static", value=value)
    parse = parse_vici_uri if kind == "vici" else parse_http_url
    location = walker.text(keys[kind], f"{path}.{kind}", parse)
    field_name = "ike_sas"
    if "field" in keys:
        if kind != "http":
            walker.error(keys["field"], f"{path}.field", "is used only with http")
            return _INVALID
        field_name = walker.text(keys["field"], f"{path}.field", _check_field)
    if _INVALID in (location, field_name):
        return _INVALID
    return LoadSource(kind, location, field_name)


def parse_vici_uri(text: str) -> str:
    """Check a VICI socket: unix:///absolute/path or tcp://host:port."""
    if text.startswith("unix://"):
        if not text[len("unix://") :].startswith("/"):
            raise ValueError(f"a unix VICI socket needs an absolute path, as unix:///run/charon.vici, not {text!r}")
        return text
    if text.startswith("tcp://"):
        parse_host_port(text[len("tcp://") :], 4502)
        return text
    raise ValueError(f"a VICI socket is unix:///PATH or tcp://HOST:PORT, not {text!r}")


def parse_http_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, not {text!r}")
    return text


def _check_field(text: str) -> str:
    if not text or any(not part for part in text.split(".")):
        raise ValueError(f"a JSON key path is names joined by dots, not {text!r}")
    return text


def _fields(
    walker: _Walker, keys: dict[str, yaml.Node], path: str, readers: dict[str, Callable[[yaml.Node, str], Any]]
) -> dict[str, Any] | None:
    """Read the keys of `readers` present in `keys`; return them, or None
    when one is invalid (the walker has the error)."""
    values = {}
    for name, read in readers.items():
        if name in keys:
            values[name] = read(keys[name], f"{path}.{name}" if path else name)
    if _INVALID in values.values():
        return None
    return values


def _seconds(walker: _Walker, low: float, high: float) -> Callable[[yaml.Node, str], Any]:
    def read(node: yaml.Node, path: str) -> Any:
        value = walker.scalar(node, path)
        if value is _INVALID:
            return _INVALID
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            walker.error(node, path, f"must be a number of seconds from {low:g} to {high:g}, not {_show(value)}")
            return _INVALID
        return float(value)

    return read


def _section(walker: _Walker, node: yaml.Node, path: str, default: Any, readers: dict) -> Any:
    keys = walker.mapping(node, path, tuple(readers))
    if keys is None:
        return None
    values = _fields(walker, keys, path, readers)
    return None if values is None else replace(default, **values)


def _health(walker: _Walker, node: yaml.Node) -> HealthConfig | None:
    health = _section(
        walker,
        node,
        "health",
        HealthConfig(),
        {
            "enabled": walker.boolean,
            "interval": _seconds(walker, 0.1, 3600),
            "timeout": _seconds(walker, 0.05, 3600),
            "fall": lambda n, p: walker.integer(n, p, 1, 100),
            "rise": lambda n, p: walker.integer(n, p, 1, 100),
            "port": lambda n, p: walker.integer(n, p, 1, 65535),
        },
    )
    if health is not None and health.timeout > health.interval and not _has_key(node, "timeout"):
        health = replace(health, timeout=health.interval)  # the default timeout fits the interval
    if health is not None and health.timeout > health.interval:
        walker.error(node, "health.timeout", f"{health.timeout:g} s is longer than the interval {health.interval:g} s")
        return None
    return health


def _has_key(node: yaml.Node, key: str) -> bool:
    return isinstance(node, yaml.MappingNode) and any(k.value == key for k, _ in node.value)


def _load(walker: _Walker, node: yaml.Node) -> LoadConfig | None:
    load = _section(
        walker,
        node,
        "load",
        LoadConfig(),
        {
            "interval": _seconds(walker, 0.1, 3600),
            "timeout": _seconds(walker, 0.05, 600),
            "max_age": _seconds(walker, 0.1, 86400),
            "default": lambda n, p: walker.integer(n, p, 0, MAX_LOAD),
        },
    )
    if load is None:
        return None
    if load.timeout > load.interval and not _has_key(node, "timeout"):
        load = replace(load, timeout=load.interval)  # the default timeout fits the interval
    if load.timeout > load.interval:
        walker.error(node, "load.timeout", f"{load.timeout:g} s is longer than the interval {load.interval:g} s")
        return None
    if load.max_age <= load.interval:
        walker.error(
            node,
            "load.max_age",
            f"{load.max_age:g} s expires each reading before the next poll ({load.interval:g} s); "
            "make it at least two intervals",
        )
        return None
    return load


def parse_loopback_address(text: str) -> tuple[str, int]:
    host, port = parse_host_port(text, 0)
    if port == 0:
        raise ValueError(f"expected ADDRESS:PORT, not {text!r}")
    if not parse_ip(host).is_loopback:
        raise ValueError(f"the control endpoint listens on loopback only, not on {host}")
    return host, port


def parse_listen_address(text: str) -> tuple[str, int]:
    host, port = parse_host_port(text, 0)
    if port == 0:
        raise ValueError(f"expected ADDRESS:PORT, not {text!r}")
    parse_ip(host)
    return host, port


def _control(walker: _Walker, node: yaml.Node) -> ControlConfig | None:
    control = _section(
        walker,
        node,
        "control",
        ControlConfig(),
        {
            "socket": lambda n, p: walker.text(n, p, _absolute_path),
            "address": lambda n, p: walker.text(n, p, parse_loopback_address),
            "group": lambda n, p: walker.text(n, p, _name),
        },
    )
    if control is not None and control.socket is not None and control.address is not None:
        walker.error(node, "control", "give either socket or address, not both")
        return None
    if control is not None and control.group is not None and control.socket is None:
        walker.error(node, "control.group", "applies to a unix socket; set control.socket")
        return None
    return control


def _absolute_path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"must be an absolute path, not {text!r}")
    return text


def _metrics(walker: _Walker, node: yaml.Node) -> MetricsConfig | None:
    return _section(
        walker,
        node,
        "metrics",
        MetricsConfig(),
        {"listen": lambda n, p: walker.text(n, p, parse_listen_address)},
    )


def _name(text: str) -> str:
    if not text or not text.isprintable() or ":" in text:
        raise ValueError(f"not a user or group name: {text!r}")
    return text


def _selection(walker: _Walker, node: yaml.Node) -> SelectionConfig | None:
    keys = walker.mapping(node, "selection", ("key", "table_size", "seed", "overflow"))
    if keys is None:
        return None
    result = SelectionConfig()
    if "key" in keys:
        key = walker.choice(keys["key"], "selection.key", tuple(KEY_MODES))
        if key is not _INVALID:
            result = replace(result, key=KEY_MODES[key])
    if "table_size" in keys:
        size = walker.integer(keys["table_size"], "selection.table_size", 7, MAX_TABLE_SIZE)
        if size is not _INVALID:
            if not is_prime(size):
                walker.error(keys["table_size"], "selection.table_size", f"must be a prime number, not {size}")
            else:
                result = replace(result, table_size=size)
    if "seed" in keys:
        seed = walker.integer(keys["seed"], "selection.seed", 0, (1 << 64) - 1)
        if seed is not _INVALID:
            result = replace(result, seed=seed)
    if "overflow" in keys:
        overflow = walker.choice(keys["overflow"], "selection.overflow", OVERFLOW_ACTIONS)
        if overflow is not _INVALID:
            result = replace(result, overflow=overflow)
    return result


def _logging(walker: _Walker, node: yaml.Node) -> LoggingConfig | None:
    keys = walker.mapping(node, "logging", ("level", "format", "stats_interval"))
    if keys is None:
        return None
    result = LoggingConfig()
    if "level" in keys:
        level = walker.choice(keys["level"], "logging.level", LOG_LEVELS)
        if level is not _INVALID:
            result = replace(result, level=level)
    if "format" in keys:
        log_format = walker.choice(keys["format"], "logging.format", LOG_FORMATS)
        if log_format is not _INVALID:
            result = replace(result, format=log_format)
    if "stats_interval" in keys:
        value = walker.scalar(keys["stats_interval"], "logging.stats_interval")
        if value is not _INVALID:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86400:
                walker.error(
                    keys["stats_interval"],
                    "logging.stats_interval",
                    f"must be a number of seconds from 0 to 86400, not {value!r}",
                )
            else:
                result = replace(result, stats_interval=float(value))
    return result


_TOP_KEYS = (
    "listen",
    "gateways",
    "workers",
    "batch",
    "selection",
    "logging",
    "health",
    "load",
    "control",
    "metrics",
    "user",
    "group",
)


def _items(walker: _Walker, keys: dict[str, yaml.Node], name: str, read: Callable, empty: str) -> list:
    """Read the list under top-level key `name`, each item with `read`;
    return the valid items (the walker has the errors of the others)."""
    if name not in keys:
        return []
    items = []
    for index, item in enumerate(walker.sequence(keys[name], name) or []):
        value = read(walker, item, f"{name}[{index}]")
        if value is not None:
            items.append(value)
    if isinstance(keys[name], yaml.SequenceNode) and not keys[name].value:
        walker.error(keys[name], name, empty)
    return items


def parse_config(text: str, source: str) -> Config:
    """Parse and validate a configuration document.

    Raises ConfigError listing every problem found.
    """
    try:
        loader = yaml.SafeLoader(text)
        loader.name = source  # so YAML syntax errors name the file
        root = loader.get_single_node()
        loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    walker = _Walker(source, loader)
    if root is None:
        raise ConfigError(f"{source}: the file is empty; it needs at least 'listen' and 'gateways'")
    keys = walker.mapping(root, "", _TOP_KEYS)
    if keys is None:
        raise ConfigError("\n".join(walker.errors))
    for required in ("listen", "gateways"):
        if required not in keys:
            walker.error(root, required, "missing; it is required")

    listeners = _items(walker, keys, "listen", _listener, "must list at least one address")
    gateways = _items(walker, keys, "gateways", _gateway, "must list at least one gateway")

    settings: dict[str, Any] = {}
    if "workers" in keys:
        settings["workers"] = walker.integer(keys["workers"], "workers", 1, MAX_WORKERS)
    if "batch" in keys:
        settings["batch"] = walker.integer(keys["batch"], "batch", 1, 1024)
    if "selection" in keys:
        settings["selection"] = _selection(walker, keys["selection"])
    if "logging" in keys:
        settings["logging"] = _logging(walker, keys["logging"])
    sections = {"health": _health, "load": _load, "control": _control, "metrics": _metrics}
    for name, read in sections.items():
        if name in keys:
            settings[name] = read(walker, keys[name])
    for name in ("user", "group"):
        if name in keys:
            settings[name] = walker.text(keys[name], name, _name)
    if walker.errors:
        raise ConfigError("\n".join(walker.errors))

    config = Config(listeners=tuple(listeners), gateways=tuple(gateways), source=source, **settings)
    nodes = {"selection.table_size": keys.get("selection")}
    for name in ("listen", "gateways"):
        for index, item in enumerate(keys[name].value):
            nodes[f"{name}[{index}]"] = item
    if isinstance(keys.get("selection"), yaml.MappingNode):
        for key_node, value_node in keys["selection"].value:
            if key_node.value == "table_size":
                nodes["selection.table_size"] = value_node
    for path, problem in check_consistency(config):
        walker.error(nodes.get(path) or root, path, problem)
    if walker.errors:
        raise ConfigError("\n".join(walker.errors))
    return config


def next_prime(n: int) -> int:
    """Return the smallest prime that is at least `n`."""
    while not is_prime(n):
        n += 1
    return n


def check_consistency(config: Config) -> list[tuple[str, str]]:
    """Return (key path, problem) for each problem that involves several
    settings at once."""
    problems = []
    seen_listeners = set()
    for index, listener in enumerate(config.listeners):
        if (listener.address, listener.port) in seen_listeners:
            problems.append((f"listen[{index}]", f"{listener} is listed twice"))
        seen_listeners.add((listener.address, listener.port))
    own_addresses = {listener.address for listener in config.listeners}
    seen_targets: set[bytes] = set()
    for index, gateway in enumerate(config.gateways):
        name = exclusion_key(gateway.target)
        if name in seen_targets:
            problems.append((f"gateways[{index}]", f"{gateway.target} is listed twice"))
        seen_targets.add(name)
        if gateway.target.value in own_addresses:
            problems.append(
                (
                    f"gateways[{index}]",
                    f"{gateway.target} is also a listen address; "
                    "clients would be redirected back to this redirector",
                )
            )
    sized = [g for g in config.gateways if g.capacity is not None or g.high_water is not None]
    if sized and len(sized) != len(config.gateways):
        unsized = next(i for i, g in enumerate(config.gateways) if g not in sized)
        problems.append(
            (
                f"gateways[{unsized}]",
                f"has no capacity while {len(sized)} other gateways have one; loads are compared "
                "relative to capacity, so set it on every gateway or on none",
            )
        )
    if len(config.gateways) > MAX_GATEWAYS:
        problems.append(("gateways", f"at most {MAX_GATEWAYS} gateways, not {len(config.gateways)}"))
    size = config.selection.table_size
    needed = SLOTS_PER_GATEWAY * len(config.gateways)
    if size < needed:
        problems.append(
            (
                "selection.table_size",
                f"{size} is too small for {len(config.gateways)} gateways; use a prime of at least "
                f"{next_prime(needed)}",
            )
        )
    elif config.gateways:
        total = sum(g.weight for g in config.gateways)
        lightest = min(config.gateways, key=lambda g: g.weight)
        if size * lightest.weight < MIN_SLOTS * total:
            problems.append(
                (
                    "selection.table_size",
                    f"{size} slots leave gateway {lightest.target} (weight {lightest.weight} of "
                    f"{total}) fewer than {MIN_SLOTS}; raise table_size to a prime of at least "
                    f"{next_prime(-(-MIN_SLOTS * total // lightest.weight))} or make the weights more even",
                )
            )
    return problems


def load_config(path: str) -> Config:
    """Read and validate the configuration file at `path`."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_config(text, os.fspath(path))


def default_config_text() -> str:
    return resources.files("fastredir").joinpath("default.yaml").read_text(encoding="utf-8")


def load_default() -> Config:
    return parse_config(default_config_text(), DEFAULT_SOURCE)


def with_overrides(
    config: Config, listeners: list[Listener] | None, gateways: list[GatewayConfig] | None
) -> Config:
    """Replace the listeners and/or gateways of `config` with command-line
    ones, and check the result as a whole."""
    if listeners:
        config = replace(config, listeners=tuple(listeners))
    if gateways:
        config = replace(config, gateways=tuple(gateways))
    problems = check_consistency(config)
    if problems:
        raise ConfigError(
            "\n".join(f"{config.source} with command-line options: {path}: {p}" for path, p in problems)
        )
    return config
