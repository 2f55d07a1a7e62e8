"""The `fastredir` command line: serve, check-config, probe."""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from fastredir import __version__
from fastredir.config import (
    Config,
    load_config,
    load_default,
    parse_gateway_option,
    parse_host_port,
    parse_ip,
    parse_listen_option,
    with_overrides,
)
from fastredir.exceptions import ConfigError
from fastredir.fastpath import select_implementation
from fastredir.ikev2 import IKE_PORT
from fastredir.logsetup import configure_logging
from fastredir.message import GatewayIdentity

DEFAULT_CONFIG_PATH = "/etc/fastredir/fastredir.yaml"
EXIT_OK = 0
EXIT_FAILURE = 1  # invalid configuration, cannot bind, no answer
EXIT_USAGE = 2  # argparse's own status for bad arguments


def _listen_argument(text: str):
    try:
        return parse_listen_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gateway_argument(text: str):
    try:
        return parse_gateway_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _identity_argument(text: str) -> GatewayIdentity:
    try:
        return GatewayIdentity.from_address(parse_ip(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, not {text}")
    return value


def _attempts(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 100, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastredir",
        description="Stateless IKEv2 redirector: answers IKE_SA_INIT with an RFC 5685 REDIRECT.",
    )
    parser.add_argument("--version", action="version", version=f"fastredir {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the redirector", description="Run the redirector.")
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="YAML configuration file (default: the embedded loopback demonstration)",
    )
    serve.add_argument(
        "--listen",
        metavar="ADDR[:PORT]",
        action="append",
        type=_listen_argument,
        help="address and UDP port to serve, replacing the file's listen list; "
        "port 500 by default, 4500 expects the non-ESP marker; IPv6 as [ADDR]:PORT; repeatable",
    )
    serve.add_argument(
        "--gateway",
        metavar="TARGET[=WEIGHT]",
        action="append",
        type=_gateway_argument,
        help="gateway to send clients to (IP address or host name, weight 1 by default), "
        "replacing the file's gateways; repeatable",
    )
    serve.add_argument(
        "--pure-python",
        action="store_true",
        help="use the pure-Python fast path even when the Cython extension is built",
    )

    check = commands.add_parser(
        "check-config", help="validate a configuration file", description="Validate a configuration file."
    )
    check.add_argument("file", metavar="FILE")

    probe = commands.add_parser(
        "probe",
        help="send one IKE_SA_INIT and show the answer",
        description="Send a real IKE_SA_INIT request (with REDIRECT_SUPPORTED) and decode the answer. "
        "Exits 0 on a valid REDIRECT, 1 otherwise.",
    )
    probe.add_argument("target", metavar="HOST[:PORT]", help="port 500 by default; port 4500 adds the non-ESP marker")
    probe.add_argument("--timeout", type=_positive_float, default=2.0, help="seconds to wait per attempt (default 2)")
    probe.add_argument("--attempts", type=_attempts, default=3, help="sends before giving up (default 3)")
    probe.add_argument(
        "--redirected-from",
        metavar="ADDR",
        type=_identity_argument,
        help="send REDIRECTED_FROM naming ADDR instead of REDIRECT_SUPPORTED",
    )
    probe.add_argument(
        "--no-redirect-supported",
        action="store_true",
        help="leave out REDIRECT_SUPPORTED, as a client without redirect support does; "
        "then no answer is correct (exit 0) and a REDIRECT is not (exit 1)",
    )
    probe.add_argument("--source", metavar="ADDR", help="local address to send from (default: chosen by routing)")
    probe.add_argument(
        "--nat-t",
        action="store_true",
        help="prefix the request with the non-ESP marker, as on port 4500 (the default for port 4500)",
    )
    probe.add_argument("--json", action="store_true", help="print the result as one JSON object")

    for name, summary in (
        ("status", "show gateways, health, load, drain state and counters of a running instance"),
        ("drain", "stop sending new clients to a gateway, on every worker, at once"),
        ("undrain", "send new clients to a drained gateway again"),
        ("reload", "make a running instance reread its configuration file (as SIGHUP does)"),
    ):
        command = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        if name in ("drain", "undrain"):
            command.add_argument("gateway", metavar="GATEWAY", help="the gateway's address or name, as configured")
        endpoint = command.add_mutually_exclusive_group()
        endpoint.add_argument(
            "--control",
            metavar="PATH|ADDR:PORT",
            help="the instance's control endpoint: a unix socket path or a loopback address and port",
        )
        endpoint.add_argument(
            "--config",
            metavar="FILE",
            help=f"read the control endpoint from this configuration file (default: {DEFAULT_CONFIG_PATH})",
        )
        default_timeout = 60.0 if name == "reload" else 10.0
        command.add_argument(
            "--timeout",
            type=_positive_float,
            default=default_timeout,
            help=f"seconds to wait for the instance (default {default_timeout:g})",
        )
        if name == "status":
            command.add_argument("--json", action="store_true", help="print the status as one JSON object")
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        config: Config = load_config(args.config) if args.config else load_default()
        config = with_overrides(config, args.listen, args.gateway)
    except ConfigError as exc:
        configure_logging()
        print(f"fastredir: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    configure_logging(config.logging.level, config.logging.format)
    from fastredir.server import serve

    implementation = select_implementation(pure=True if args.pure_python else None)
    try:
        return serve(config, implementation, args.config, (args.listen, args.gateway))
    except ConfigError as exc:
        print(f"fastredir: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        config.build_table()
    except ConfigError as exc:
        print(f"fastredir: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"{args.file}: valid: {_count(len(config.listeners), 'listener')}, "
        f"{_count(len(config.gateways), 'gateway')}, {_count(config.workers, 'worker')}"
    )
    return EXIT_OK


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _probe(args: argparse.Namespace) -> int:
    from fastredir.probe import format_outcome, run_probe

    try:
        host, port = parse_host_port(args.target, IKE_PORT)
    except ValueError as exc:
        print(f"fastredir probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        outcome = run_probe(
            host,
            port,
            timeout=args.timeout,
            attempts=args.attempts,
            nat_t=True if args.nat_t else None,
            redirect_supported=not args.no_redirect_supported,
            redirected_from=args.redirected_from,
            source=args.source,
        )
    except OSError as exc:
        print(f"fastredir probe: cannot send to {args.target}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    answer = outcome.answer
    if args.json:
        print(json.dumps(_outcome_json(outcome)))
    else:
        print("\n".join(format_outcome(outcome)))
    if args.no_redirect_supported and args.redirected_from is None:
        # RFC 5685 section 3: no REDIRECT for a client that did not offer support.
        if not args.json:
            print("no REDIRECT is correct for a client without REDIRECT_SUPPORTED" if answer is None or answer.redirect is None
                  else "invalid: a REDIRECT to a client that did not send REDIRECT_SUPPORTED")
        return EXIT_OK if answer is None or answer.redirect is None else EXIT_FAILURE
    return EXIT_OK if answer is not None and answer.is_valid_redirect else EXIT_FAILURE


def _outcome_json(outcome) -> dict:
    answer = outcome.answer
    result = {
        "target": list(outcome.remote[:2]),
        "initiator_spi": outcome.request.initiator_spi.hex(),
        "attempts": outcome.attempts,
        "answered": answer is not None,
        "errors": outcome.errors,
        "error_count": outcome.error_count,
    }
    if answer is not None:
        result.update(
            exchange_type=answer.exchange_type,
            responder_spi=answer.responder_spi.hex(),
            message_id=answer.message_id,
            notify_types=answer.notify_types,
            redirect=None,
            problems=answer.problems,
        )
        if answer.redirect is not None:
            result["redirect"] = {
                "gateway": str(answer.redirect.gateway),
                "type": answer.redirect.gateway.type.name,
                "nonce_echoed": answer.redirect.nonce == outcome.request.nonce,
            }
    return result


def _control_endpoint(args: argparse.Namespace) -> str:
    """Return the control endpoint from --control, or the control section
    of the configuration file.  Only that section is read, so the
    commands work while the rest of the file is being fixed."""
    if args.control:
        return args.control
    path = args.config or DEFAULT_CONFIG_PATH
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the control endpoint from {path} ({exc}); give --control instead") from None
    control = document.get("control") if isinstance(document, dict) else None
    if isinstance(control, dict):
        if isinstance(control.get("socket"), str):
            return control["socket"]
        if isinstance(control.get("address"), str):
            return control["address"]
    raise ConfigError(f"{path}: no control endpoint configured; add control.socket, or give --control")


def _command(args: argparse.Namespace) -> int:
    from fastredir.control import ControlError, send_command
    from fastredir.status import format_status

    try:
        endpoint = _control_endpoint(args)
        request = {"command": args.command}
        if args.command in ("drain", "undrain"):
            request["gateway"] = args.gateway
        reply = send_command(endpoint, request, timeout=args.timeout)
    except (ConfigError, ControlError) as exc:
        print(f"fastredir {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not reply.get("ok"):
        print(f"fastredir {args.command}: {reply.get('error', 'failed')}", file=sys.stderr)
        return EXIT_FAILURE
    if args.command == "status":
        if args.json:
            print(json.dumps(reply["status"]))
        else:
            print(format_status(reply["status"]))
    elif args.command == "reload":
        print(f"reload done from {reply.get('config', 'the configuration file')}")
        for warning in reply.get("warnings", []):
            print(f"warning: {warning}")
    else:
        print(f"{reply['gateway']} {args.command}ed")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "probe":
            return _probe(args)
        return _command(args)
    except BrokenPipeError:
        # The reader of our output went away (`fastredir probe ... | head`);
        # point stdout at /dev/null so the exit-time flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
