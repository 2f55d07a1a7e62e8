"""Gateway load readings: the IKE SA count from strongSwan's VICI
interface or from an HTTP endpoint returning JSON.

Each reader returns an int or raises LoadError saying what went wrong;
the poller thread passes readings and failures to the controller.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from typing import Callable

from fastredir.config import LoadSource, parse_host_port
from fastredir.periodic import PeriodicThread

log = logging.getLogger("fastredir")

MAX_HTTP_BYTES = 1 << 20


class LoadError(Exception):
    """A load reading failed."""


def _vici_socket(location: str, timeout: float) -> socket.socket:
    if location.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = location[len("unix://") :]
    else:
        host, port = parse_host_port(location[len("tcp://") :], 4502)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        target = (host, port)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except OSError:
        sock.close()
        raise
    return sock


def read_vici(location: str, timeout: float) -> int:
    """Return the gateway's established IKE SAs: VICI `stats`, total minus
    half-open (health probes and clients mid-handshake)."""
    import vici  # imported here: only gateways with a VICI source need it

    try:
        with _vici_socket(location, timeout) as sock:
            stats = vici.Session(sock).stats()
    except (OSError, vici.exception.SessionException) as exc:
        raise LoadError(f"VICI {location}: {exc}") from None
    try:
        ike_sas = stats["ikesas"]
        total = int(ike_sas["total"])
        half_open = int(ike_sas.get("half-open", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"VICI {location}: unexpected stats response ({exc})") from None
    return max(total - half_open, 0)


def read_http(url: str, field: str, timeout: float) -> int:
    """Return the integer at `field` (dots for nested keys) of the JSON
    object at `url`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(MAX_HTTP_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LoadError(f"{url}: {exc}") from None
    if len(body) > MAX_HTTP_BYTES:
        raise LoadError(f"{url}: response larger than {MAX_HTTP_BYTES} bytes")
    try:
        value = json.loads(body)
        for key in field.split("."):
            value = value[key]
    except (ValueError, KeyError, TypeError, IndexError):
        raise LoadError(f"{url}: no number at {field!r} in the JSON response") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise LoadError(f"{url}: {field!r} is {value!r}, not a count of IKE SAs")
    return int(value)


def read_load(source: LoadSource, timeout: float) -> int:
    if source.kind == "vici":
        return read_vici(source.location, timeout)
    if source.kind == "http":
        return read_http(source.location, source.field, timeout)
    return source.value


class LoadPoller(PeriodicThread):
    """Reads every polled source each interval and passes each reading,
    or failure, to `report(name, load or None, problem)`."""

    def __init__(
        self,
        sources: Callable[[], list[tuple[str, LoadSource]]],
        report: Callable[[str, int | None, str], None],
        interval: Callable[[], float],
        timeout: Callable[[], float],
    ) -> None:
        super().__init__("load", interval)
        self._sources = sources
        self._report = report
        self._timeout = timeout

    def step(self) -> None:
        for name, source in self._sources():
            if self.stopping:
                return
            try:
                self._report(name, read_load(source, self._timeout()), "")
            except LoadError as exc:
                self._report(name, None, str(exc))
            except Exception as exc:  # a reader bug must not end polling
                log.exception("load poll of %s failed", name)
                self._report(name, None, f"{type(exc).__name__}: {exc}")
