"""Listening sockets: binding, error messages and stable listener ids."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from fastredir.config import Listener
from fastredir.counters import MAX_LISTENER_IDS
from fastredir.exceptions import ConfigError

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78  # Linux <linux/in6.h>; not exported by the socket module
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RECEIVE_BUFFER = 8 * 1024 * 1024


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
        _grow_receive_buffer(sock)
        sock.bind((str(listener.address), listener.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _grow_receive_buffer(sock: socket.socket) -> None:
    # A deep queue rides out the moments the worker spends in Python
    # (reloads, table swaps).  Root may exceed net.core.rmem_max.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass  # the kernel keeps its default size


def bind_all(listeners, reuse_port: bool) -> list[socket.socket]:
    """Bind one socket per listener, or none at all: on failure, close
    those already bound and raise ConfigError naming the listener."""
    sockets: list[socket.socket] = []
    for listener in listeners:
        try:
            sockets.append(open_socket(listener, reuse_port))
        except OSError as exc:
            close_all(sockets)
            raise ConfigError(bind_error_message(listener, exc)) from None
    return sockets


def close_all(sockets) -> None:
    for sock in sockets:
        sock.close()


def bind_error_message(listener: Listener, exc: OSError) -> str:
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
class ListenerIds:
    """Stable counter rows for listeners, kept across reloads; a row is
    never reused, so a listener's counters continue or start at zero."""

    ids: dict[tuple[str, int], int] = field(default_factory=dict)

    def id_of(self, listener: Listener) -> int:
        key = (str(listener.address), listener.port)
        if key not in self.ids:
            if len(self.ids) >= MAX_LISTENER_IDS:
                raise ConfigError(
                    f"more than {MAX_LISTENER_IDS} distinct listeners since start-up; "
                    "restart fastredir to add more"
                )
            self.ids[key] = len(self.ids)
        return self.ids[key]
