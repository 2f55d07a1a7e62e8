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
class GatewayConfig:
    target: GatewayIdentity
    weight: int = 1
    addresses: tuple[Address, ...] = ()

    def to_gateway(self) -> Gateway:
        aliases = tuple(GatewayIdentity.from_address(a) for a in self.addresses)
        return Gateway(self.target, self.weight, aliases)


@dataclass(frozen=True)
class SelectionConfig:
    key: KeyMode = KeyMode.ADDRESS
    table_size: int = DEFAULT_TABLE_SIZE
    seed: int = DEFAULT_SEED


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
    source: str = DEFAULT_SOURCE

    def build_table(self) -> GatewayTable:
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
    """Parse a gateway given as an IP address or a host name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if not is_host_name(text) or len(text) > FQDN_MAX_LENGTH:
            raise ValueError(f"not an IP address or host name: {text!r}") from None
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
        self.errors: list[str] = []

    def error(self, node: yaml.Node | None, path: str, problem: str) -> None:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        self.errors.append(f"{self.source}{line}: {path or 'top level'}: {problem}")

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
            self.error(node, path, f"must be an integer from {low} to {high}, not {_show(value)}")
            return _INVALID
        return value

    def boolean(self, node: yaml.Node, path: str) -> Any:
        value = self.scalar(node, path)
        if value is not _INVALID and not isinstance(value, bool):
            self.error(node, path, f"must be true or false, not {_show(value)}")
            return _INVALID
        return value

    def choice(self, node: yaml.Node, path: str, choices: tuple[str, ...]) -> Any:
        value = self.scalar(node, path)
        if value is not _INVALID and value not in choices:
            self.error(node, path, f"must be one of {', '.join(choices)}, not {_show(value)}")
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
    keys = walker.mapping(node, path, ("target", "weight", "addresses"))
    if keys is None:
        return None
    if "target" not in keys:
        walker.error(node, path, "missing key 'target'")
        return None
    target = walker.text(keys["target"], f"{path}.target", parse_gateway_target)
    weight = 1
    if "weight" in keys:
        weight = walker.integer(keys["weight"], f"{path}.weight", 1, 0xFFFF)
    addresses: list[Any] = []
    if "addresses" in keys:
        items = walker.sequence(keys["addresses"], f"{path}.addresses") or []
        for index, item in enumerate(items):
            addresses.append(walker.text(item, f"{path}.addresses[{index}]", parse_ip))
    if _INVALID in (target, weight) or _INVALID in addresses:
        return None
    return GatewayConfig(target, weight, tuple(addresses))


def _selection(walker: _Walker, node: yaml.Node) -> SelectionConfig | None:
    keys = walker.mapping(node, "selection", ("key", "table_size", "seed"))
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


_TOP_KEYS = ("listen", "gateways", "workers", "batch", "selection", "logging")


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

    listeners: list[Listener] = []
    if "listen" in keys:
        for index, item in enumerate(walker.sequence(keys["listen"], "listen") or []):
            listener = _listener(walker, item, f"listen[{index}]")
            if listener is not None:
                listeners.append(listener)
        if isinstance(keys["listen"], yaml.SequenceNode) and not keys["listen"].value:
            walker.error(keys["listen"], "listen", "must list at least one address")
    gateways: list[GatewayConfig] = []
    if "gateways" in keys:
        for index, item in enumerate(walker.sequence(keys["gateways"], "gateways") or []):
            gateway = _gateway(walker, item, f"gateways[{index}]")
            if gateway is not None:
                gateways.append(gateway)
        if isinstance(keys["gateways"], yaml.SequenceNode) and not keys["gateways"].value:
            walker.error(keys["gateways"], "gateways", "must list at least one gateway")

    settings: dict[str, Any] = {}
    if "workers" in keys:
        settings["workers"] = walker.integer(keys["workers"], "workers", 1, MAX_WORKERS)
    if "batch" in keys:
        settings["batch"] = walker.integer(keys["batch"], "batch", 1, 1024)
    if "selection" in keys:
        settings["selection"] = _selection(walker, keys["selection"])
    if "logging" in keys:
        settings["logging"] = _logging(walker, keys["logging"])
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
    if len(config.gateways) > MAX_GATEWAYS:
        problems.append(("gateways", f"at most {MAX_GATEWAYS} gateways, not {len(config.gateways)}"))
    size = config.selection.table_size
    needed = SLOTS_PER_GATEWAY * len(config.gateways)
    if size < needed:
        problems.append(
            (
                "selection.table_size",
                f"{size} is too small for {len(config.gateways)} gateways; use a prime of at least {needed}",
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
                    f"{-(-MIN_SLOTS * total // lightest.weight)} or make the weights more even",
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
