"""The control endpoint: drain, undrain, reload and status of a running
instance, over a unix socket or a loopback TCP port.

The protocol is one JSON object per line each way: a request such as
{"command": "drain", "gateway": "192.0.2.11"} and a reply
{"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import stat
import sys
import threading

log = logging.getLogger("fastredir")

MAX_REQUEST = 4096
COMMANDS = ("status", "drain", "undrain", "reload")


class ControlError(Exception):
    """The control endpoint cannot be reached or rejected a request."""


def handle_request(controller, line: bytes) -> dict:
    """Carry out one request line; return the reply object."""
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "the request is not JSON"}
    if not isinstance(request, dict) or request.get("command") not in COMMANDS:
        return {"ok": False, "error": f"unknown command; known commands: {', '.join(COMMANDS)}"}
    command = request["command"]
    if command == "status":
        return {"ok": True, "status": controller.status()}
    if command == "reload":
        problem, warnings = controller.request_reload(wait=True)
        if problem:
            return {"ok": False, "error": f"reload refused: {problem}"}
        return {"ok": True, "config": controller.config_path, "warnings": warnings}
    gateway = request.get("gateway")
    if not isinstance(gateway, str) or not gateway:
        return {"ok": False, "error": f"{command} needs a gateway name"}
    try:
        name = controller.drain(gateway, command == "drain")
    except KeyError:
        known = ", ".join(status.name for status in controller.pool.statuses.values())
        return {"ok": False, "error": f"no gateway {gateway!r}; the gateways are: {known}"}
    return {"ok": True, "gateway": name}


class _Handler(socketserver.StreamRequestHandler):
    timeout = 120  # seconds a client may take to send its request

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        if not line:
            return
        try:
            reply = handle_request(self.server.controller, line)
        except Exception as exc:  # report to the client, keep serving
            log.exception("control request failed")
            reply = {"ok": False, "error": f"internal error: {exc}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _QuietErrors:
    """Log a client that went away as one line, not a traceback on stderr."""

    def handle_error(self, request, client_address) -> None:
        log.warning("control request failed: %s", sys.exc_info()[1])


class _UnixServer(_QuietErrors, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TcpServer(_QuietErrors, socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_server(controller, config) -> socketserver.BaseServer:
    """Listen on the configured control endpoint in a thread."""
    if config.socket is not None:
        _remove_stale_socket(config.socket)
        directory = os.path.dirname(config.socket)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        old_umask = os.umask(0o117)  # owner and group may connect
        try:
            server: socketserver.BaseServer = _UnixServer(config.socket, _Handler)
        finally:
            os.umask(old_umask)
        if config.group is not None:
            import grp

            try:
                os.chown(config.socket, -1, grp.getgrnam(config.group).gr_gid)
            except KeyError:
                server.server_close()
                raise OSError(f"control.group: no group {config.group!r}") from None
        where = config.socket
    else:
        host, port = config.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_TcpServer,), {"address_family": family})
        server = server_class((host, port), _Handler)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server.controller = controller  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    log.info("control endpoint on %s", where)
    return server


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by an instance that is gone; refuse to
    take over one that still answers."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nothing listens there any more
    else:
        raise OSError(f"another fastredir already listens on the control socket {path}")
    finally:
        probe.close()


def stop_server(server, config) -> None:
    server.shutdown()
    server.server_close()
    if config.socket is not None:
        try:
            os.unlink(config.socket)
        except FileNotFoundError:
            pass
        except PermissionError:
            # After dropping privileges the folder may not be ours; the
            # next start removes the stale socket.
            log.info("cannot remove the control socket %s (no permission); it is removed at the next start", config.socket)


def send_command(endpoint: str, request: dict, timeout: float = 65.0) -> dict:
    """Send one request to a control endpoint (a socket path, or
    HOST:PORT) and return the reply; raise ControlError."""
    from fastredir.config import parse_loopback_address

    try:
        host, port = parse_loopback_address(endpoint)
    except ValueError:
        # Not ADDRESS:PORT on loopback: a unix socket path.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: object = endpoint
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        address = (host, port)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = sock.makefile("rb").readline(16 << 20)
        except OSError as exc:
            raise ControlError(f"cannot reach the control endpoint {endpoint}: {exc.strerror or exc}") from None
    try:
        return json.loads(reply)
    except ValueError:
        raise ControlError(f"the control endpoint {endpoint} sent an invalid reply") from None
