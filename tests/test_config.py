"""Tests of the YAML configuration loader and the command-line overrides in
fastredir.config."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from fastredir.config import (
    DEFAULT_SOURCE,
    Config,
    GatewayConfig,
    Listener,
    load_config,
    load_default,
    parse_config,
    parse_gateway_option,
    parse_listen_option,
    with_overrides,
)
from fastredir.exceptions import ConfigError
from fastredir.ikev2 import GatewayIdentityType
from fastredir.message import GatewayIdentity
from fastredir.selection import KeyMode

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

# The smallest valid file; invalid cases below change one thing in it.
MINIMAL = """\
listen:
  - address: 192.0.2.1
gateways:
  - 192.0.2.11
"""

FULL_EXAMPLE = """\
# Every key the configuration file accepts.
listen:
  - address: 192.0.2.1
    port: 500
  - address: 192.0.2.1
    port: 4500
  - address: 2001:db8::1
    port: 4501
    nat_t: true
    anycast: true
  - address: 198.51.100.1
    port: 4500
    nat_t: false
gateways:
  - 192.0.2.11
  - target: 2001:db8::11
    weight: 3
    addresses: [192.0.2.21, 2001:db8::21]
  - target: gw3.vpn.example.com
    weight: 1000
workers: 4
batch: 128
selection:
  key: address+spi
  table_size: 65521
  seed: 12345
logging:
  level: debug
  format: json
  stats_interval: 2.5
"""


def write_config(tmp_path, text: str, name: str = "site.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_error(tmp_path, text: str) -> tuple[str, str]:
    """Load `text` from a file and return (path, ConfigError message)."""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return path, str(caught.value)


def assert_error(message: str, path: str, line: int, key_path: str, problem: str) -> None:
    """Assert that `message` has a line naming the file, the line and the key path."""
    prefix = f"{path}:{line}: {key_path}: "
    lines = [entry for entry in message.splitlines() if entry.startswith(prefix)]
    assert lines, f"no error line starts with {prefix!r} in:\n{message}"
    assert problem in lines[0]


# ---------------------------------------------------------------------------
# Valid files
# ---------------------------------------------------------------------------


def test_default_loads():
    config = load_default()

    assert config.source == DEFAULT_SOURCE
    assert config.listeners == (
        Listener(IPv4("127.0.0.1"), 500, nat_t=False),
        Listener(IPv4("127.0.0.1"), 4500, nat_t=True),
    )
    assert [str(g.target) for g in config.gateways] == ["192.0.2.11", "192.0.2.12"]
    assert [g.weight for g in config.gateways] == [1, 1]
    assert config.workers == 1
    assert config.logging.level == "info"
    assert config.logging.format == "text"
    assert config.logging.stats_interval == 60.0
    assert len(config.build_table().gateways) == 2


def test_full_example_loads(tmp_path):
    path = write_config(tmp_path, FULL_EXAMPLE)

    config = load_config(path)

    assert config.source == path
    assert config.listeners == (
        Listener(IPv4("192.0.2.1"), 500, nat_t=False, anycast=False),
        Listener(IPv4("192.0.2.1"), 4500, nat_t=True, anycast=False),
        Listener(IPv6("2001:db8::1"), 4501, nat_t=True, anycast=True),
        Listener(IPv4("198.51.100.1"), 4500, nat_t=False, anycast=False),
    )
    assert config.gateways == (
        GatewayConfig(GatewayIdentity(GatewayIdentityType.IPV4, IPv4("192.0.2.11")), 1, ()),
        GatewayConfig(
            GatewayIdentity(GatewayIdentityType.IPV6, IPv6("2001:db8::11")),
            3,
            (IPv4("192.0.2.21"), IPv6("2001:db8::21")),
        ),
        GatewayConfig(GatewayIdentity(GatewayIdentityType.FQDN, "gw3.vpn.example.com"), 1000, ()),
    )
    assert config.workers == 4
    assert config.batch == 128
    assert config.selection.key == KeyMode.ADDRESS_SPI
    assert config.selection.table_size == 65521
    assert config.selection.seed == 12345
    assert config.logging.level == "debug"
    assert config.logging.format == "json"
    assert config.logging.stats_interval == 2.5


def test_minimal_file_defaults(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    defaults = Config(listeners=config.listeners, gateways=config.gateways)

    assert config.listeners == (Listener(IPv4("192.0.2.1"), 500),)
    assert config.workers == defaults.workers
    assert config.batch == defaults.batch
    assert config.selection == defaults.selection
    assert config.logging == defaults.logging
    assert len(config.build_table().gateways) == 1


def test_parse_config_names_source():
    config = parse_config(MINIMAL, "inline.yaml")

    assert config.source == "inline.yaml"


# ---------------------------------------------------------------------------
# Invalid files: each error names the file, the line and the key path
# ---------------------------------------------------------------------------

# (id, file text, line, key path, part of the problem)
INVALID_FILES = [
    ("unknown top key", MINIMAL + "wrkers: 2\n", 5, "wrkers", "did you mean 'workers'?"),
    (
        "unknown nested key",
        "listen:\n  - address: 192.0.2.1\ngateways:\n  - 192.0.2.11\n  - target: 192.0.2.12\n    wieght: 2\n",
        6,
        "gateways[1].wieght",
        "did you mean 'weight'?",
    ),
    ("unknown key no match", MINIMAL + "zzz: 1\n", 5, "zzz", "known keys: listen, gateways"),
    ("duplicate key", MINIMAL + "workers: 1\nworkers: 2\n", 6, "workers", "duplicate key"),
    ("workers text", MINIMAL + "workers: two\n", 5, "workers", "must be an integer"),
    ("workers bool", MINIMAL + "workers: true\n", 5, "workers", "must be an integer"),
    ("workers 0", MINIMAL + "workers: 0\n", 5, "workers", "from 1 to 256"),
    ("batch float", MINIMAL + "batch: 1.5\n", 5, "batch", "must be an integer"),
    ("listen scalar", "listen: 192.0.2.1\ngateways:\n  - 192.0.2.11\n", 1, "listen", "must be a list"),
    ("listener scalar", "listen:\n  - 192.0.2.1\ngateways:\n  - 192.0.2.11\n", 2, "listen[0]", "must be a mapping"),
    ("listener no address", "listen:\n  - port: 500\ngateways:\n  - 192.0.2.11\n", 2, "listen[0]", "missing key 'address'"),
    ("address invalid", "listen:\n  - address: 192.0.2.300\ngateways:\n  - 192.0.2.11\n", 2, "listen[0].address", "not an IPv4 or IPv6 address"),
    ("address multicast", "listen:\n  - address: 224.0.0.1\ngateways:\n  - 192.0.2.11\n", 2, "listen[0].address", "multicast"),
    ("port text", "listen:\n  - address: 192.0.2.1\n    port: '500'\ngateways:\n  - 192.0.2.11\n", 3, "listen[0].port", "must be an integer"),
    ("port 0", "listen:\n  - address: 192.0.2.1\n    port: 0\ngateways:\n  - 192.0.2.11\n", 3, "listen[0].port", "from 1 to 65535"),
    ("port 65536", "listen:\n  - address: 192.0.2.1\n    port: 65536\ngateways:\n  - 192.0.2.11\n", 3, "listen[0].port", "from 1 to 65535"),
    ("nat_t integer", "listen:\n  - address: 192.0.2.1\n    nat_t: 1\ngateways:\n  - 192.0.2.11\n", 3, "listen[0].nat_t", "must be true or false"),
    ("anycast text", "listen:\n  - address: 192.0.2.1\n    anycast: maybe\ngateways:\n  - 192.0.2.11\n", 3, "listen[0].anycast", "must be true or false"),
    ("weight 0", "listen:\n  - address: 192.0.2.1\ngateways:\n  - target: 192.0.2.11\n    weight: 0\n", 5, "gateways[0].weight", "from 1 to 65535"),
    ("weight 65536", "listen:\n  - address: 192.0.2.1\ngateways:\n  - target: 192.0.2.11\n    weight: 65536\n", 5, "gateways[0].weight", "from 1 to 65535"),
    ("weight float", "listen:\n  - address: 192.0.2.1\ngateways:\n  - target: 192.0.2.11\n    weight: 1.5\n", 5, "gateways[0].weight", "must be an integer"),
    ("gateway no target", "listen:\n  - address: 192.0.2.1\ngateways:\n  - weight: 2\n", 4, "gateways[0]", "missing key 'target'"),
    ("gateway list", "listen:\n  - address: 192.0.2.1\ngateways:\n  - [192.0.2.11]\n", 4, "gateways[0]", "must be a mapping"),
    ("FQDN empty label", "listen:\n  - address: 192.0.2.1\ngateways:\n  - gw..example.com\n", 4, "gateways[0]", "not an IP address or host name"),
    ("FQDN leading hyphen", "listen:\n  - address: 192.0.2.1\ngateways:\n  - target: -gw.example.com\n", 4, "gateways[0].target", "not an IP address or host name"),
    ("FQDN long label", "listen:\n  - address: 192.0.2.1\ngateways:\n  - " + "a" * 64 + ".example.com\n", 4, "gateways[0]", "not an IP address or host name"),
    ("FQDN numeric top", "listen:\n  - address: 192.0.2.1\ngateways:\n  - 192.0.2.300\n", 4, "gateways[0]", "not an IP address or host name"),
    ("FQDN space", "listen:\n  - address: 192.0.2.1\ngateways:\n  - gw example.com\n", 4, "gateways[0]", "not an IP address or host name"),
    ("gateway unspecified", "listen:\n  - address: 192.0.2.1\ngateways:\n  - 0.0.0.0\n", 4, "gateways[0]", "unicast"),
    ("alias invalid", "listen:\n  - address: 192.0.2.1\ngateways:\n  - target: 192.0.2.11\n    addresses: [192.0.2.x]\n", 5, "gateways[0].addresses[0]", "not an IPv4 or IPv6 address"),
    ("missing listen", "gateways:\n  - 192.0.2.11\n", 1, "listen", "missing"),
    ("missing gateways", "listen:\n  - address: 192.0.2.1\n", 1, "gateways", "missing"),
    ("empty listen", "listen: []\ngateways:\n  - 192.0.2.11\n", 1, "listen", "at least one"),
    ("empty gateways", "listen:\n  - address: 192.0.2.1\ngateways: []\n", 3, "gateways", "at least one"),
    ("table not prime", MINIMAL + "selection:\n  table_size: 1000\n", 6, "selection.table_size", "prime"),
    ("table below 7", MINIMAL + "selection:\n  table_size: 5\n", 6, "selection.table_size", "from 7"),
    ("key mode unknown", MINIMAL + "selection:\n  key: spi\n", 6, "selection.key", "must be one of address, address+spi"),
    ("seed negative", MINIMAL + "selection:\n  seed: -1\n", 6, "selection.seed", "must be an integer"),
    ("seed 2**64", MINIMAL + f"selection:\n  seed: {1 << 64}\n", 6, "selection.seed", "must be an integer"),
    ("log level unknown", MINIMAL + "logging:\n  level: verbose\n", 6, "logging.level", "must be one of debug"),
    ("log format unknown", MINIMAL + "logging:\n  format: xml\n", 6, "logging.format", "must be one of text, json"),
    ("stats interval negative", MINIMAL + "logging:\n  stats_interval: -1\n", 6, "logging.stats_interval", "seconds"),
    ("stats interval text", MINIMAL + "logging:\n  stats_interval: often\n", 6, "logging.stats_interval", "seconds"),
    ("python tag", MINIMAL + "workers: !!python/object:os.system x\n", 5, "workers", "invalid value"),
]


@pytest.mark.parametrize(
    "text, line, key_path, problem", [case[1:] for case in INVALID_FILES], ids=[case[0] for case in INVALID_FILES]
)
def test_invalid_file(tmp_path, text, line, key_path, problem):
    path, message = load_error(tmp_path, text)

    assert_error(message, path, line, key_path, problem)


# Errors that involve several settings at once, found after each value is
# valid on its own: (id, file text, line, key path, part of the problem).
INCONSISTENT_FILES = [
    (
        "gateway is listen address",
        "listen:\n  - address: 192.0.2.1\ngateways:\n  - 192.0.2.11\n  - 192.0.2.1\n",
        5,
        "gateways[1]",
        "also a listen address",
    ),
    (
        "duplicate listener",
        "listen:\n  - address: 192.0.2.1\n  - address: 192.0.2.1\n    port: 500\ngateways:\n  - 192.0.2.11\n",
        3,
        "listen[1]",
        "listed twice",
    ),
    (
        "duplicate gateway",
        "listen:\n  - address: 192.0.2.1\ngateways:\n  - GW.example.com\n  - target: gw.example.com\n",
        5,
        "gateways[1]",
        "listed twice",
    ),
    (
        "table too small",
        "listen:\n  - address: 192.0.2.1\ngateways:\n  - 192.0.2.11\n  - 192.0.2.12\nselection:\n  table_size: 101\n",
        7,
        "selection.table_size",
        "too small for 2 gateways",
    ),
    (
        "weights too uneven",
        "listen:\n  - address: 192.0.2.1\ngateways:\n  - target: 192.0.2.11\n    weight: 65535\n"
        "  - 192.0.2.12\nselection:\n  table_size: 65537\n",
        8,
        "selection.table_size",
        "leave gateway 192.0.2.12 (weight 1 of 65536) fewer than 10",
    ),
    (
        "same name with trailing dot",
        "listen:\n  - address: 192.0.2.1\ngateways:\n  - gw.example.net\n  - GW.example.net.\n",
        5,
        "gateways[1]",
        "listed twice",
    ),
]


@pytest.mark.parametrize(
    "text, line, key_path, problem",
    [case[1:] for case in INCONSISTENT_FILES],
    ids=[case[0] for case in INCONSISTENT_FILES],
)
def test_inconsistent_file(tmp_path, text, line, key_path, problem):
    path, message = load_error(tmp_path, text)

    assert_error(message, path, line, key_path, problem)


@pytest.mark.parametrize(
    "text, key_path",
    [(case[1], case[3]) for case in INCONSISTENT_FILES],
    ids=[case[0] for case in INCONSISTENT_FILES],
)
def test_inconsistent_file_names_key(tmp_path, text, key_path):
    # Whatever the line number, the message must name the file and the
    # key path.
    path, message = load_error(tmp_path, text)

    assert message.startswith(f"{path}")
    assert f" {key_path}: " in message


def test_several_errors_reported(tmp_path):
    text = textwrap.dedent(
        """\
        listen:
          - address: 192.0.2.1
            port: 0
        gateways:
          - target: 192.0.2.11
            weight: 0
        wrkers: 2
        logging:
          level: loud
        """
    )

    path, message = load_error(tmp_path, text)

    assert len(message.splitlines()) == 4
    assert_error(message, path, 3, "listen[0].port", "from 1 to 65535")
    assert_error(message, path, 6, "gateways[0].weight", "from 1 to 65535")
    assert_error(message, path, 7, "wrkers", "did you mean 'workers'?")
    assert_error(message, path, 9, "logging.level", "must be one of")


def test_top_level_not_mapping(tmp_path):
    path, message = load_error(tmp_path, "- 192.0.2.1\n- 192.0.2.11\n")

    assert message.startswith(f"{path}:1: ")
    assert "must be a mapping" in message
    # With no key to name, no empty key path is printed either.
    assert ": :" not in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"], ids=["empty", "blank lines", "comment"])
def test_empty_file(tmp_path, text):
    path, message = load_error(tmp_path, text)

    assert message.startswith(f"{path}: ")
    assert "empty" in message


def test_invalid_yaml(tmp_path):
    path, message = load_error(tmp_path, "listen:\n  - address: 192.0.2.1\ngateways: [192.0.2.11\n")

    assert message.startswith(f"{path}: ")
    assert "invalid YAML" in message
    assert "line 4" in message


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.yaml")

    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "No such file" in str(caught.value)


def test_directory_as_file(tmp_path):
    # Root can read any file whatever its mode, so a directory is used in
    # place of an unreadable file.
    path = str(tmp_path)

    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "cannot read" in str(caught.value)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode("ascii") + "# caf\u00e9\n".encode("latin-1"))

    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(f"{path}: ")
    assert "UTF-8" in str(caught.value)


# ---------------------------------------------------------------------------
# Command-line overrides
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, address, port, nat_t",
    [
        ("127.0.0.1", IPv4("127.0.0.1"), 500, False),
        ("127.0.0.1:4500", IPv4("127.0.0.1"), 4500, True),
        ("192.0.2.1:9000", IPv4("192.0.2.1"), 9000, False),
        ("127.0.0.1:65535", IPv4("127.0.0.1"), 65535, False),
        ("[::1]:4500", IPv6("::1"), 4500, True),
        ("[::1]", IPv6("::1"), 500, False),
        ("::1", IPv6("::1"), 500, False),
        ("[2001:db8::1]:1", IPv6("2001:db8::1"), 1, False),
    ],
)
def test_listen_option(text, address, port, nat_t):
    listener = parse_listen_option(text)

    assert listener.address == address
    assert listener.port == port
    assert listener.nat_t == nat_t
    assert not listener.anycast


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4:99999",
        "1.2.3.4:65536",
        "1.2.3.4:0",
        "1.2.3.4:-1",
        "1.2.3.4:abc",
        "[::1",
        "[::1]4500",
        "[::1]:99999",
        "host.example.com:500",
        "",
        ":500",
        "224.0.0.1",
        "[ff02::1]:500",
    ],
)
def test_listen_option_rejected(text):
    with pytest.raises(ValueError):
        parse_listen_option(text)


@pytest.mark.parametrize("text", ["1.2.3.4:", "[::1]:"])
def test_listen_option_empty_port(text):
    # A colon promises a port; without one the option is a typo.
    with pytest.raises(ValueError):
        parse_listen_option(text)


@pytest.mark.parametrize(
    "text, target, weight",
    [
        ("192.0.2.11", "192.0.2.11", 1),
        ("192.0.2.11=5", "192.0.2.11", 5),
        ("2001:db8::11=2", "2001:db8::11", 2),
        ("gw.example.com=65535", "gw.example.com", 65535),
    ],
)
def test_gateway_option(text, target, weight):
    gateway = parse_gateway_option(text)

    assert str(gateway.target) == target
    assert gateway.weight == weight
    assert gateway.addresses == ()


@pytest.mark.parametrize(
    "text",
    [
        "192.0.2.11=0",
        "192.0.2.11=65536",
        "192.0.2.11=",
        "192.0.2.11=x",
        "192.0.2.11=-1",
        "=5",
        "",
        "0.0.0.0",
        "224.0.0.1",
        "gw..example.com",
        "a" * 256,
    ],
)
def test_gateway_option_rejected(text):
    with pytest.raises(ValueError):
        parse_gateway_option(text)


def test_overrides_replace(tmp_path):
    config = load_config(write_config(tmp_path, FULL_EXAMPLE))
    listeners = [parse_listen_option("127.0.0.1:40500")]
    gateways = [parse_gateway_option("192.0.2.99=7")]

    result = with_overrides(config, listeners, gateways)

    assert result.listeners == tuple(listeners)
    assert result.gateways == tuple(gateways)
    assert result.workers == config.workers
    assert result.selection == config.selection
    assert result.source == config.source


def test_overrides_none_keep_file():
    config = load_default()

    assert with_overrides(config, None, None) == config
    assert with_overrides(config, [], []) == config


def test_overrides_listener_equals_gateway():
    config = load_default()

    with pytest.raises(ConfigError) as caught:
        with_overrides(config, [parse_listen_option("192.0.2.11:4500")], None)
    assert "command-line" in str(caught.value)
    assert "gateways[0]" in str(caught.value)


def test_overrides_duplicate_gateway():
    config = load_default()
    gateways = [parse_gateway_option("192.0.2.50"), parse_gateway_option("192.0.2.50=3")]

    with pytest.raises(ConfigError) as caught:
        with_overrides(config, None, gateways)
    assert "gateways[1]" in str(caught.value)
    assert "listed twice" in str(caught.value)


def test_overrides_duplicate_listener():
    config = load_default()
    listeners = [parse_listen_option("127.0.0.1:40500"), parse_listen_option("127.0.0.1:40500")]

    with pytest.raises(ConfigError) as caught:
        with_overrides(config, listeners, None)
    assert "listen[1]" in str(caught.value)


# Values PyYAML constructs with exceptions other than YAMLError, or that
# are not text where an address or name is expected.
HOSTILE_VALUES = [
    ("int tag on text", "workers: !!int abc\n", 5, "workers", "invalid value 'abc'"),
    ("bool tag on text", "workers: !!bool maybe\n", 5, "workers", "invalid value 'maybe'"),
    ("float tag on text", "batch: !!float abc\n", 5, "batch", "invalid value 'abc'"),
    ("timestamp tag", "selection:\n  seed: !!timestamp 2024-99-99\n", 6, "selection.seed", "invalid value"),
    ("huge decimal", "workers: " + "9" * 5000 + "\n", 5, "workers", "invalid value"),
    ("huge binary", "workers: 0b" + "1" * 20000 + "\n", 5, "workers", "too many digits"),
    ("null gateway", "gateways:\n  - ~\n", 5, "gateways[1]", "must be text"),
    ("boolean target", "gateways:\n  - target: yes\n", 5, "gateways[1].target", "must be text"),
    ("float target", "gateways:\n  - target: .inf\n", 5, "gateways[1].target", "must be text"),
]


@pytest.mark.parametrize("text, line, key_path, problem", [case[1:] for case in HOSTILE_VALUES],
                         ids=[case[0] for case in HOSTILE_VALUES])
def test_hostile_value(tmp_path, text, line, key_path, problem):
    # Each case follows MINIMAL (4 lines), so its first line is line 5; a
    # "gateways:" case adds its items to MINIMAL's list instead of
    # repeating the key, so they are the second gateway.
    if text.startswith("gateways:"):
        text = text.split("\n", 1)[1]
    path, message = load_error(tmp_path, MINIMAL + text)
    assert_error(message, path, line, key_path, problem)


def test_sexagesimal_ipv6_target(tmp_path):
    # YAML 1.1 reads 1:0:0:0:0:0:0:1 as a base-60 integer; it is an IPv6 address.
    config = load_config(write_config(tmp_path, MINIMAL + "  - 1:0:0:0:0:0:0:1\n"))
    assert str(config.gateways[1].target) == "1::1"


@pytest.mark.parametrize(
    "text, problem",
    [
        pytest.param("listen: " + "[" * 500 + "]" * 500 + "\n", "nested too deeply", id="deep"),
        pytest.param(MINIMAL + "# bell \x07\n", "unacceptable character", id="control-character"),
    ],
)
def test_hostile_document(tmp_path, text, problem):
    path, message = load_error(tmp_path, text)
    assert message.startswith(f"{path}: invalid YAML")
    assert problem in message


def test_unprintable_key_escaped(tmp_path):
    path, message = load_error(tmp_path, MINIMAL + '"evil\\x1b[2J": 1\n')
    assert "\x1b" not in message
    assert "unknown key 'evil\\x1b[2J'" in message


@pytest.mark.parametrize("text", ["255.255.255.255", "::ffff:224.0.0.1", "fe80::1%lo", "0.0.0.0", "ff02::1"])
def test_gateway_option_not_unicast(text):
    with pytest.raises(ValueError):
        parse_gateway_option(text)


@pytest.mark.parametrize(
    "extra, key_path, problem",
    [
        ("load: {interval: 5, timeout: 6}\n", "load.timeout", "longer than the interval"),
        ("load: {interval: 5, max_age: 4}\n", "load.max_age", "expires each reading before the next poll"),
        ("health: {interval: 1, timeout: 2}\n", "health.timeout", "longer than the interval"),
        ("control: {address: 127.0.0.1:9501, group: adm}\n", "control.group", "set control.socket"),
    ],
)
def test_timing_and_control_checks(tmp_path, extra, key_path, problem):
    path, message = load_error(tmp_path, MINIMAL + extra)
    assert f": {key_path}: " in message
    assert problem in message


def test_default_timeouts_fit_short_intervals(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL + "load: {interval: 0.5}\nhealth: {interval: 0.5}\n"))
    assert config.load.timeout == 0.5
    assert config.health.timeout == 0.5


def test_capacity_on_all_or_none(tmp_path):
    text = "listen: [{address: 192.0.2.1}]\ngateways:\n  - {target: 192.0.2.11, capacity: 10}\n  - 192.0.2.12\n"
    path, message = load_error(tmp_path, text)
    assert_error(message, path, 4, "gateways[1]", "has no capacity while 1 other gateways have one")
