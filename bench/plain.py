"""The redirectors a Python programmer would write first, as baselines.

Both decode each request with the pure-Python codec (`fastredir.message`)
and answer with `build_redirect_response`: `loop` with a blocking
recvfrom/sendto loop, `asyncio` with a DatagramProtocol.  They check
what a correct redirector must (an IKE_SA_INIT request with one nonce and
REDIRECT_SUPPORTED or REDIRECTED_FROM) and pick a gateway by a CRC-32 of
the client address, skipping the one REDIRECTED_FROM names.

    python -m bench.plain loop --listen 127.0.0.1:500 --gateway 192.0.2.11
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import zlib

from fastredir.exceptions import PeerError
from fastredir.ikev2 import NONCE_MAX_LENGTH, NONCE_MIN_LENGTH, ExchangeType, NotifyType
from fastredir.message import GatewayIdentity, Message, build_redirect_response, decode_redirected_from

RECEIVE_BUFFER = 8 * 1024 * 1024  # the receive buffer fastredir serve requests
ZERO_SPI = bytes(8)


def redirect_reply(data: bytes, client_address: bytes, gateways: list[GatewayIdentity]) -> bytes | None:
    """Return the REDIRECT answer to `data`, or None when it gets none."""
    try:
        message = Message.parse(data)
        notifies = {notify.type: notify for notify in message.notifies()}
    except PeerError:
        return None
    header = message.header
    if (
        header.exchange_type != ExchangeType.IKE_SA_INIT
        or header.is_response
        or not header.is_initiator
        or header.initiator_spi == ZERO_SPI
        or header.responder_spi != ZERO_SPI
        or header.message_id != 0
    ):
        return None
    nonces = message.nonces()
    if len(nonces) != 1 or not NONCE_MIN_LENGTH <= len(nonces[0]) <= NONCE_MAX_LENGTH:
        return None
    if NotifyType.REDIRECT_SUPPORTED not in notifies and NotifyType.REDIRECTED_FROM not in notifies:
        return None

    index = zlib.crc32(client_address) % len(gateways)
    if NotifyType.REDIRECTED_FROM in notifies and len(gateways) > 1:
        try:
            previous = decode_redirected_from(notifies[NotifyType.REDIRECTED_FROM].data)
        except PeerError:
            return None
        if previous == gateways[index]:
            index = (index + 1) % len(gateways)
    return build_redirect_response(message, gateways[index])


def open_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((host, port))
    return sock


def serve_loop(sock: socket.socket, gateways: list[GatewayIdentity]) -> None:
    """Answer datagrams one at a time until SIGTERM or SIGINT ends the process."""
    while True:
        data, source = sock.recvfrom(65535)
        reply = redirect_reply(data, socket.inet_aton(source[0]), gateways)
        if reply is not None:
            sock.sendto(reply, source)


class RedirectProtocol(asyncio.DatagramProtocol):
    """Answer each datagram from the asyncio event loop."""

    def __init__(self, gateways: list[GatewayIdentity]) -> None:
        self.gateways = gateways
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = redirect_reply(data, socket.inet_aton(addr[0]), self.gateways)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def serve_asyncio(sock: socket.socket, gateways: list[GatewayIdentity]) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopped.set)
    transport, _ = await loop.create_datagram_endpoint(lambda: RedirectProtocol(gateways), sock=sock)
    try:
        await stopped.wait()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plain", description=__doc__.splitlines()[0])
    parser.add_argument("style", choices=("loop", "asyncio"), help="recvfrom/sendto loop or asyncio protocol")
    parser.add_argument("--listen", required=True, metavar="ADDR:PORT", help="IPv4 address and UDP port to serve")
    parser.add_argument(
        "--gateway", action="append", required=True, metavar="ADDR", help="gateway to send clients to; repeatable"
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    gateways = [GatewayIdentity.from_text(text) for text in args.gateway]
    sock = open_socket(host, int(port))
    print(f"plain {args.style}: listening on {host}:{port}", flush=True)
    try:
        if args.style == "loop":
            serve_loop(sock, gateways)
        else:
            asyncio.run(serve_asyncio(sock, gateways))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
