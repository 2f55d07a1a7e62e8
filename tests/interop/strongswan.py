"""strongSwan 5.9.8 configuration text and output parsing for the interop lab.

The lab's peers authenticate with one pre-shared key. Every gateway uses the
identity GATEWAY_IDENTITY, so a client accepts whichever gateway it is
redirected to, and every client uses CLIENT_IDENTITY.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Mapping

GATEWAY_IDENTITY = "vpn.lab.example"
CLIENT_IDENTITY = "client.lab.example"
PRE_SHARED_KEY = "lab-only-pre-shared-key"

# The plugins charon loads. Without kdf, strongSwan 5.9.8 fails key derivation
# with "KDF_PRF with PRF_HMAC_SHA2_256 not supported". No plugin here opens a
# socket outside the lab directory: the default set would add stroke, lookip
# and error-notify sockets in /run and a DHCP socket on port 68.
CHARON_PLUGINS = (
    "kdf random nonce openssl pem pkcs1 x509 revocation constraints pubkey "
    "curve25519 kernel-netlink socket-default vici aes sha1 sha2 hmac gmp gcm"
)


def strongswan_conf(vici_uri: str, log_path: Path, charon_options: Mapping[str, str]) -> str:
    """Return strongswan.conf for one charon-systemd with its own vici socket and log.

    The log records IKE and network events at level 2 and the parsed payload
    lists at level 1, so notifies such as N(REDIR_FROM) are visible.
    """
    options = "".join(f"    {key} = {value}\n" for key, value in charon_options.items())
    return f"""\
charon-systemd {{
    load = {CHARON_PLUGINS}
    install_routes = no
    install_virtual_ip = no
{options}    plugins {{
        vici {{
            socket = {vici_uri}
        }}
    }}
    filelog {{
        lab {{
            path = {log_path}
            time_format = %H:%M:%S
            append = no
            flush_line = yes
            default = 1
            ike = 2
            net = 2
            enc = 1
        }}
    }}
    journal {{
        default = -1
    }}
}}
"""


# swanctl.conf text for the lab peers. swanctl rejects several settings on one
# line, so every setting gets its own line.

def _identity_block(section: str, identity: str) -> str:
    return f"""\
        {section} {{
            auth = psk
            id = {identity}
        }}
"""


def gateway_swanctl_conf() -> str:
    """Return swanctl.conf for a gateway that accepts the lab clients with IKE SAs only.

    Every gateway uses the same identity, so a client accepts whichever gateway
    it is redirected to.
    """
    return (
        "connections {\n"
        "    clients {\n"
        "        version = 2\n"
        "        childless = allow\n"
        # All lab clients share one identity. With the default (unique = no),
        # a client's INITIAL_CONTACT would delete the SAs of the other clients.
        "        unique = never\n"
        + _identity_block("local", GATEWAY_IDENTITY)
        + _identity_block("remote", CLIENT_IDENTITY)
        + "    }\n"
        "}\n"
        + _secrets()
    )


@dataclasses.dataclass(frozen=True)
class ClientConnection:
    """One client connection: where it sends IKE_SA_INIT, and optional UDP ports."""

    remote_addrs: str
    local_port: int | None = None
    remote_port: int | None = None


def client_swanctl_conf(connections: Mapping[str, ClientConnection]) -> str:
    """Return swanctl.conf for the client with the given connections by name."""
    blocks = []
    for name, connection in connections.items():
        ports = ""
        if connection.local_port is not None:
            ports += f"        local_port = {connection.local_port}\n"
        if connection.remote_port is not None:
            ports += f"        remote_port = {connection.remote_port}\n"
        blocks.append(
            f"    {name} {{\n"
            "        version = 2\n"
            f"        remote_addrs = {connection.remote_addrs}\n"
            + ports
            + "        childless = force\n"
            + _identity_block("local", CLIENT_IDENTITY)
            + _identity_block("remote", GATEWAY_IDENTITY)
            + "    }\n"
        )
    return "connections {\n" + "".join(blocks) + "}\n" + _secrets()


def _secrets() -> str:
    return f"""\
secrets {{
    ike-lab {{
        id-gateway = {GATEWAY_IDENTITY}
        id-client = {CLIENT_IDENTITY}
        secret = "{PRE_SHARED_KEY}"
    }}
}}
"""


# Client retransmission kept short so that a lost or unanswered message fails
# a test within seconds (strongSwan defaults: 4 s timeout, 5 tries).
CLIENT_CHARON_OPTIONS = {
    "retransmit_timeout": "1.0",
    "retransmit_tries": "2",
}

CLIENT_CONNECTIONS = {
    "gw1-v4": ClientConnection("192.0.2.11"),
    "gw1-v6": ClientConnection("2001:db8::11"),
    "gw2-v4": ClientConnection("192.0.2.12"),
    "redirect-v4": ClientConnection("192.0.2.1"),
    "redirect-v6": ClientConnection("2001:db8::1"),
    # Sends from port 4500 to port 4500, so IKE messages carry the non-ESP marker.
    "redirect-v4-nat-t": ClientConnection("192.0.2.1", local_port=4500, remote_port=4500),
}

# Names the client resolves through its own hosts file.
CLIENT_HOST_NAMES = {
    "gw1.lab.example": ["192.0.2.11"],
    "gw1-v6.lab.example": ["2001:db8::11"],
    "gw2.lab.example": ["192.0.2.12"],
}


@dataclasses.dataclass(frozen=True)
class IkeSa:
    """One IKE SA as `swanctl --list-sas` prints it."""

    name: str
    state: str
    local_address: str
    remote_address: str
    remote_identity: str


# `swanctl --list-sas` (strongSwan 5.9.8) prints each IKE SA as a header line
# "NAME: #UNIQUE, STATE, IKEv2, SPIi_i SPIr_r" followed by indented lines such as
# "  remote 'ID' @ ADDRESS[PORT]".
_SA_HEADER = re.compile(r"^(?P<name>[^\s:]+): #\d+, (?P<state>[A-Z_]+), IKEv\d")
_SA_ENDPOINT = re.compile(
    r"^\s+(?P<side>local|remote)\s+'(?P<identity>[^']*)' @ (?P<address>[^\[\s]+)\[\d+\]"
)


def parse_list_sas(text: str) -> list[IkeSa]:
    """Parse the IKE SAs out of `swanctl --list-sas` output, ignoring CHILD_SA lines."""
    sas: list[IkeSa] = []
    current: dict[str, str] | None = None

    def finish() -> None:
        if current is not None:
            sas.append(IkeSa(**current))

    for line in text.splitlines():
        header = _SA_HEADER.match(line)
        if header:
            finish()
            current = {
                "name": header["name"],
                "state": header["state"],
                "local_address": "",
                "remote_address": "",
                "remote_identity": "",
            }
            continue
        endpoint = _SA_ENDPOINT.match(line)
        if endpoint and current is not None:
            current[f"{endpoint['side']}_address"] = endpoint["address"]
            if endpoint["side"] == "remote":
                current["remote_identity"] = endpoint["identity"]
    finish()
    return sas
