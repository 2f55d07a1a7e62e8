"""Check that the Cython socket loop allocates no Python object per packet.

Runs `_fastpath.Loop.run` in this process on a UDP socket fed by the load
generator, and compares sys.getallocatedblocks() after a warm-up with
its value after `--packets` more datagrams.  A leak of one object per
packet would add about a million blocks per million packets.  The check
allows a fixed slack for objects that the driving code itself creates.

    python -m bench.allocations --generator PATH --template PATH \
        --nonce-offset 120 --nonce-length 32 --packets 1000000

Prints one JSON object; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import pathlib
import signal
import sys
import time

from bench import load
from bench.systems import GATEWAY
from fastredir import _fastpath
from fastredir.config import Listener, load_default, parse_gateway_option, with_overrides
from fastredir.sockets import open_socket
from fastredir.verdict import Verdict

# Python blocks that the driving code may hold at the second reading but
# not at the first, such as a larger int or a resized list.  This is far
# below one block per packet.
BLOCK_SLACK = 64


def received_count(loop) -> int:
    return sum(loop.verdict_counts())


def serve_until(loop, target: int, generator, deadline: float) -> None:
    """Run the loop until it has received `target` datagrams in all, the
    generator exited, or `deadline` (time.monotonic) passed."""
    while received_count(loop) < target and generator.poll() is None and time.monotonic() < deadline:
        loop.run(50)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.allocations", description=__doc__.splitlines()[0])
    parser.add_argument("--generator", required=True, type=pathlib.Path, help="path of the compiled loadgen")
    parser.add_argument("--template", required=True, type=pathlib.Path, help="request file for loadgen")
    parser.add_argument("--nonce-offset", type=int, required=True, help="byte offset of the nonce in the template")
    parser.add_argument("--nonce-length", type=int, required=True, help="nonce length in bytes")
    parser.add_argument("--packets", type=int, default=1_000_000, help="datagrams measured after the warm-up")
    parser.add_argument("--warmup", type=int, default=50_000, help="datagrams before the first reading")
    parser.add_argument("--rate", type=float, default=300_000, help="requests per second offered")
    parser.add_argument("--port", type=int, default=500)
    parser.add_argument("--generator-core", type=int, help="CPU for the generator")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up")
    args = parser.parse_args(argv)

    listener = Listener(ipaddress.ip_address("127.0.0.1"), args.port)
    config = with_overrides(load_default(), [listener], [parse_gateway_option(GATEWAY)])
    sock = open_socket(listener, reuse_port=False)
    loop = _fastpath.Loop([(sock, False)], _fastpath.compile_table(config.build_table()), batch=config.batch)

    target = load.Target(
        binary=args.generator,
        template=args.template,
        nonce_offset=args.nonce_offset,
        nonce_length=args.nonce_length,
        address="127.0.0.1",
        port=sock.getsockname()[1],
        cores=frozenset({args.generator_core}) if args.generator_core is not None else None,
    )
    # The generator runs until this process has seen enough datagrams and
    # stops it; the duration only bounds a run that goes wrong.
    duration = min(args.timeout, 3 * (args.warmup + args.packets) / args.rate + 10)
    spec = load.Load(duration=duration, rate=args.rate, gateway=GATEWAY, drain=0.5)
    generator = load.start(target, spec)
    deadline = time.monotonic() + args.timeout

    serve_until(loop, args.warmup, generator, deadline)
    gc.collect()
    blocks_before = sys.getallocatedblocks()
    received_before = received_count(loop)

    serve_until(loop, received_before + args.packets, generator, deadline)
    if generator.poll() is None:
        generator.send_signal(signal.SIGTERM)
    # Answer what is still queued while the generator collects the answers.
    while generator.poll() is None and time.monotonic() < deadline:
        loop.run(50)
    loop.run(50)
    gc.collect()
    blocks_after = sys.getallocatedblocks()
    received_after = received_count(loop)

    answers = load.finish(generator, timeout=30)
    counts = loop.verdict_counts()
    others = {Verdict(i).label: n for i, n in enumerate(counts) if n and i != Verdict.REDIRECTED}
    measured = received_after - received_before
    result = {
        "packets_measured": measured,
        "blocks_before": blocks_before,
        "blocks_after": blocks_after,
        "block_growth": blocks_after - blocks_before,
        "block_slack": BLOCK_SLACK,
        "redirected": counts[Verdict.REDIRECTED],
        "other_verdicts": others,
        "answers_valid": answers["answers_valid"],
        "answers_invalid": answers["answers_invalid"],
        "duplicates": answers["duplicates"],
    }
    failures = []
    if measured < args.packets:
        failures.append(f"only {measured} datagrams reached the loop after the warm-up, not {args.packets}")
    if blocks_after - blocks_before > BLOCK_SLACK:
        failures.append(f"allocated blocks grew by {blocks_after - blocks_before} across {measured} datagrams")
    if others:
        failures.append(f"the loop gave verdicts other than REDIRECTED: {others}")
    if answers["answers_invalid"] or answers["duplicates"]:
        failures.append(f"{answers['answers_invalid']} invalid and {answers['duplicates']} duplicate answers")
    if answers["answers_valid"] == 0:
        failures.append("no valid answer arrived")
    result["failures"] = failures
    result["passed"] = not failures
    print(json.dumps(result))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
