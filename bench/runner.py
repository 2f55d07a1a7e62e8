"""`python -m bench`: run every system under the same load and report.

For each system and each repetition the run starts the system as its own
process pinned to one core, and the load generator pinned to the other:

1. flood: the same offered load for every system (by default 1,000,000
   requests per second, above what any of them answers), for answers per
   second, CPU per answer and loss;
2. fixed rate: a low offered load (5,000 per second) that every system
   keeps up with, for latency from send to answer.

Then: the per-packet microbenchmark, the allocation and resident-memory
checks, and fastredir with one worker beside two.  The result goes to
bench/results/latest.json and latest.png (quick.json and quick.png with
--quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bench import figures, libreswan, load, native, netns, procfs, report, template
from bench.systems import GATEWAY, SYSTEM_NAMES, SYSTEMS, Context, Running, StartError, System

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RSS_GROWTH_LIMIT_KIB = 2048


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long and how hard each part of the run is."""

    repeats: int = 3
    flood_rate: float = 1_000_000
    flood_seconds: float = 5.0
    fixed_rate: float = 5_000
    fixed_seconds: float = 4.0
    allocation_packets: int = 1_000_000
    rss_requests: int = 5_000_000
    rss_distinct: int = 1_000_000
    rss_rate: float = 400_000
    workers_seconds: float = 5.0


FULL = Settings()
QUICK = Settings(
    repeats=1,
    flood_seconds=1.5,
    fixed_seconds=1.0,
    allocation_packets=1_000_000,  # the no-growth check covers a million packets in CI too
    rss_requests=300_000,
    rss_distinct=100_000,
    rss_rate=300_000,
    workers_seconds=1.5,
)


def log(message: str) -> None:
    print(message, flush=True)


def choose_cores() -> tuple[frozenset[int] | None, frozenset[int] | None, str]:
    """Return (system cores, generator cores, description) from this
    process's allowed CPUs: the first for the system, the second for the
    generator."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None, f"not pinned: only {len(allowed)} CPU available"
    return frozenset({allowed[0]}), frozenset({allowed[1]}), f"system on CPU {allowed[0]}, generator on CPU {allowed[1]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine_info(cores_note: str, namespace_note: str) -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip
    from fastredir import __version__

    return {
        "cpu": procfs.cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fastredir": __version__,
        "commit": commit.stdout.strip() or None,
        "load_average_at_start": os.getloadavg(),
        "pinning": cores_note,
        "network": namespace_note,
    }


class Bench:
    """One run of the whole suite."""

    def __init__(self, settings: Settings, systems: list[System], quick: bool, fetch_libreswan: bool,
                 use_namespace: bool = True) -> None:  # fmt: skip
        self.settings = settings
        self.use_namespace = use_namespace
        self.systems = systems
        self.quick = quick
        self.fetch_libreswan = fetch_libreswan
        self.failures: list[str] = []
        self.skipped: dict[str, str] = {}

    # -- set-up -------------------------------------------------------

    def set_up(self, work: pathlib.Path) -> None:
        self.system_cores, self.generator_cores, self.cores_note = choose_cores()
        if self.generator_cores:
            # This process only waits; keep it off the system's core.
            os.sched_setaffinity(0, self.generator_cores)
        log(f"compiling the load generator and the kernel floor with {native.compiler()}")
        binaries = native.build_all(work)
        template_path, nonce_offset, nonce_length = template.write_template(work)

        if self.use_namespace:
            self.namespace, reason = netns.open_namespace()
        else:
            self.namespace, reason = None, "--no-namespace"
        if self.namespace is not None:
            prefix, port = self.namespace.prefix, 500
            self.namespace_note = f"loopback of network namespace {self.namespace.name}, port 500"
        else:
            prefix, port = [], free_port()
            self.namespace_note = f"host loopback, port {port} ({reason})"
        log(f"network: {self.namespace_note}; {self.cores_note}")

        installation, libreswan_reason = None, None
        if any(system.name == "libreswan" for system in self.systems):
            installation, libreswan_reason = libreswan.find(self.fetch_libreswan, log)
        self.context = Context(
            root=ROOT,
            work=work,
            floor_binary=binaries["floor"],
            address="127.0.0.1",
            port=port,
            prefix=prefix,
            cores=self.system_cores,
            libreswan=installation,
            libreswan_reason=libreswan_reason,
        )
        self.target = load.Target(
            binary=binaries["loadgen"],
            template=template_path,
            nonce_offset=nonce_offset,
            nonce_length=nonce_length,
            address="127.0.0.1",
            port=port,
            prefix=tuple(prefix),
            cores=self.generator_cores,
        )

    def tear_down(self) -> None:
        if getattr(self, "namespace", None) is not None:
            self.namespace.delete()

    # -- measurements --------------------------------------------------

    def load_for(self, system: System, **changes) -> load.Load:
        if system.check == "count":
            base = load.Load(check="count", answer_length=template.ANSWER_LENGTH)
        else:
            base = load.Load(gateway=GATEWAY)
        return dataclasses.replace(base, **changes)

    def measure_system(self, system: System) -> dict:
        """Start `system`, run the flood and the fixed-rate load, stop it."""
        settings = self.settings
        running = Running(system, self.context)
        try:
            running.wait_ready()
            pids = running.pids()
            flood = load.run(
                self.target,
                self.load_for(system, duration=settings.flood_seconds, rate=settings.flood_rate),
                watch=pids,
            )
            running.wait_idle()
            fixed = load.run(
                self.target,
                self.load_for(system, duration=settings.fixed_seconds, rate=settings.fixed_rate),
                watch=pids,
            )
            rss = sum(procfs.resident_kib(pid) for pid in running.pids())
            running.wait_idle()
        finally:
            running.stop()
        return {
            "flood": figures.run_figures(flood, self.system_cores),
            "fixed_rate": figures.run_figures(fixed, self.system_cores),
            "rss_kib": rss,
        }

    @staticmethod
    def other_load_text(run: dict) -> str:
        share = run.get("other_load_on_system_cores")
        return "?" if share is None else f"{share:.0%}"

    def run_systems(self) -> dict[str, list[dict]]:
        runs: dict[str, list[dict]] = {system.name: [] for system in self.systems}
        available = []
        for system in self.systems:
            reason = system.unavailable(self.context)
            if reason:
                self.skipped[system.name] = reason
                log(f"{system.name}: skipped: {reason}")
            else:
                available.append(system)
        for repeat in range(self.settings.repeats):
            for system in available:
                if system.name in self.skipped:
                    continue
                log(f"[{repeat + 1}/{self.settings.repeats}] {system.name}: {system.description}")
                try:
                    measured = self.measure_system(system)
                except (StartError, load.LoadError) as exc:
                    self.skipped[system.name] = f"failed: {exc}"
                    self.failures.append(f"{system.name}: {exc}")
                    log(f"{system.name}: failed: {exc}")
                    continue
                runs[system.name].append(measured)
                flood, fixed = measured["flood"], measured["fixed_rate"]
                log(
                    f"    flood {flood['offered_per_s']:,.0f}/s offered: {flood['answers_per_s']:,.0f} answers/s, "
                    f"{flood['cpu_ns_per_answer'] or 0:,.0f} CPU ns/answer; "
                    f"{fixed['offered_per_s']:,.0f}/s: p50 {fixed['p50_us'] or 0:,.0f} us, "
                    f"p99 {fixed['p99_us'] or 0:,.0f} us, lost {fixed['lost_fraction']:.2%}; "
                    f"other processes took {self.other_load_text(flood)} of the system's core"
                )
                for phase in (flood, fixed):
                    if phase["answers_invalid"] or phase["duplicates"]:
                        self.failures.append(
                            f"{system.name}: {phase['answers_invalid']} invalid and "
                            f"{phase['duplicates']} duplicate answers"
                        )
        return runs

    def run_micro(self) -> dict:
        log("microbenchmark: process_many over 1024 requests, both implementations")
        command = [sys.executable, "-m", "bench.micro", *(["--quick"] if self.quick else [])]
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            env=self.context.environment(), preexec_fn=load.pin_to(self.system_cores), timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            self.failures.append(f"microbenchmark failed: {result.stderr.strip()[-500:]}")
            return {}
        micro = json.loads(result.stdout)
        micro["ratio_pure_to_cython"] = micro["python_ns_per_packet"] / micro["cython_ns_per_packet"]
        log(
            f"    Cython {micro['cython_ns_per_packet']:.1f} ns/packet, "
            f"pure Python {micro['python_ns_per_packet']:,.0f} ns/packet"
        )
        return micro

    def run_allocations(self) -> dict:
        packets = self.settings.allocation_packets
        log(f"allocation check: {packets:,} datagrams through the Cython Loop in one process")
        generator_core = min(self.generator_cores) if self.generator_cores else None
        command = [
            *self.context.prefix, sys.executable, "-m", "bench.allocations",
            "--generator", str(self.target.binary), "--template", str(self.target.template),
            "--nonce-offset", str(self.target.nonce_offset), "--nonce-length", str(self.target.nonce_length),
            "--packets", str(packets), "--port", str(self.context.port),
            *(["--generator-core", str(generator_core)] if generator_core is not None else []),
        ]  # fmt: skip
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            env=self.context.environment(), preexec_fn=load.pin_to(self.system_cores), timeout=300,
        )  # fmt: skip
        try:
            outcome = json.loads(result.stdout)
        except json.JSONDecodeError:
            self.failures.append(f"allocation check failed to run: {result.stderr.strip()[-800:]}")
            return {"passed": False}
        for failure in outcome["failures"]:
            self.failures.append(f"allocation check: {failure}")
        log(
            f"    {outcome['packets_measured']:,} datagrams: allocated blocks grew by {outcome['block_growth']} "
            f"(allowed {outcome['block_slack']}); {outcome['answers_valid']:,} valid answers, "
            f"{outcome['answers_invalid']} invalid: {'passed' if outcome['passed'] else 'FAILED'}"
        )
        return outcome

    def run_resident_memory(self) -> dict:
        """Flood `fastredir serve` with requests from many distinct clients
        and compare its resident memory before and after."""
        settings = self.settings
        log(
            f"resident memory check: fastredir serve, {settings.rss_requests:,} requests from "
            f"{settings.rss_distinct:,} distinct initiator SPIs on 64 source addresses"
        )
        system = next(s for s in SYSTEMS if s.name == "fastredir")
        running = Running(system, self.context)

        try:
            running.wait_ready()
            warmup = load.run(self.target, self.load_for(system, duration=0, count=200_000, rate=settings.rss_rate))
            running.wait_idle()
            before = procfs.resident_kib(running.pid)
            main = load.run(
                self.target,
                self.load_for(
                    system, duration=0, count=settings.rss_requests, rate=settings.rss_rate,
                    distinct=settings.rss_distinct,
                ),
            )  # fmt: skip
            running.wait_idle()
            after = procfs.resident_kib(running.pid)
        except (StartError, load.LoadError) as exc:
            running.stop()
            self.failures.append(f"resident memory check: {exc}")
            return {"passed": False, "error": str(exc)}
        running.stop()

        # fastredir logs its totals, warm-up included, when it stops.
        counters = re.findall(r"final counters: received=(\d+) redirected=(\d+)", running.output_path.read_text())
        outcome = {
            "requests_sent": main["sent"],
            "distinct_spis": settings.rss_distinct,
            "answers_valid": main["answers_valid"],
            "answers_invalid": main["answers_invalid"] + warmup["answers_invalid"],
            "duplicates": main["duplicates"],
            "received_by_fastredir_with_warmup": int(counters[-1][0]) if counters else None,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "rss_growth_kib": after - before,
            "limit_kib": RSS_GROWTH_LIMIT_KIB,
        }

        failures = []
        if after - before >= RSS_GROWTH_LIMIT_KIB:
            failures.append(f"resident memory grew by {after - before} KiB")
        if outcome["answers_invalid"] or outcome["duplicates"]:
            failures.append(f"{outcome['answers_invalid']} invalid, {outcome['duplicates']} duplicate answers")
        if main["answers_valid"] == 0:
            failures.append("no valid answer")
        outcome["passed"] = not failures
        self.failures.extend(f"resident memory check: {failure}" for failure in failures)
        received = outcome["received_by_fastredir_with_warmup"]
        log(
            f"    fastredir received {'?' if received is None else f'{received:,}'} requests with the warm-up; "
            f"RSS {before:,} KiB -> {after:,} KiB ({after - before:+,} KiB, limit {RSS_GROWTH_LIMIT_KIB} KiB): "
            f"{'passed' if outcome['passed'] else 'FAILED'}"
        )
        return outcome

    def run_workers(self) -> dict:
        """Flood fastredir with `workers: 1` (one core) and `workers: 2`
        (both cores, one shared with the generator)."""
        settings = self.settings
        system = next(s for s in SYSTEMS if s.name == "fastredir")
        all_cores = (self.system_cores or frozenset()) | (self.generator_cores or frozenset()) or None
        outcome = {}
        for workers in (1, 2):
            config = self.context.work / f"workers-{workers}.yaml"
            config.write_text(
                f"listen:\n  - address: {self.context.address}\n    port: {self.context.port}\n"
                f"gateways:\n  - {GATEWAY}\nworkers: {workers}\nlogging:\n  stats_interval: 0\n"
            )
            cores = self.system_cores if workers == 1 else all_cores
            runs = []
            for repeat in range(settings.repeats):
                running = Running(system, self.context, config=config, cores=cores)
                try:
                    running.wait_ready()
                    deadline = time.monotonic() + 10
                    while len(running.pids()) < (1 if workers == 1 else workers + 1) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    result = load.run(
                        self.target,
                        self.load_for(system, duration=settings.workers_seconds, rate=settings.flood_rate),
                        watch=running.pids(),
                    )
                    running.wait_idle()
                except (StartError, load.LoadError) as exc:
                    self.failures.append(f"workers {workers}: {exc}")
                    running.stop()
                    break
                running.stop()
                run = figures.run_figures(result, cores if workers == 1 else None)
                # Each worker logs its own totals when it stops.
                totals = re.findall(r"worker (\d+): final counters: received=(\d+)", running.output_path.read_text())
                run["received_per_worker"] = [int(received) for _, received in sorted(totals)] or None
                runs.append(run)
            if not runs:
                continue
            merged = figures.median_figures(runs)
            outcome[f"workers_{workers}"] = {
                "answers_per_s": merged["answers_per_s"],
                "received_per_worker": runs[-1]["received_per_worker"],
                "cpu_ns_per_answer": merged["cpu_ns_per_answer"],
                "offered_per_s": merged["offered_per_s"],
                "responder_busy_fraction": merged["responder_busy_fraction"],
                "cores": sorted(cores) if cores else None,
                "runs": runs,
            }
            split = runs[-1]["received_per_worker"]
            log(
                f"workers: {workers}: {merged['answers_per_s']:,.0f} answers/s, "
                f"{merged['cpu_ns_per_answer']:,.0f} CPU ns/answer, "
                f"{merged['responder_busy_fraction']:.2f} cores busy"
                + (f"; requests received per worker in the last run: {split}" if split else "")
            )
        if "workers_1" in outcome and "workers_2" in outcome:
            outcome["speedup"] = outcome["workers_2"]["answers_per_s"] / outcome["workers_1"]["answers_per_s"]
        return outcome


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark fastredir beside the kernel floor, its pure-Python twin, plain Python "
        "and asyncio redirectors and libreswan, on loopback.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: one short repetition of everything")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEM_NAMES),
        help=f"comma-separated systems to run (default: all of {', '.join(SYSTEM_NAMES)})",
    )
    parser.add_argument("--repeats", type=int, help="repetitions of each system (default 3, 1 with --quick)")
    parser.add_argument("--flood-rate", type=float, help="offered requests per second of the flood (default 1000000)")
    parser.add_argument("--fixed-rate", type=float, help="offered requests per second of the latency run (default 5000)")
    parser.add_argument("--no-libreswan-fetch", action="store_true", help="do not apt-get download libreswan")
    parser.add_argument(
        "--no-namespace", action="store_true", help="use the host's loopback instead of a private network namespace"
    )
    parser.add_argument("--skip-checks", action="store_true", help="skip the allocation and memory checks")
    parser.add_argument("--skip-workers", action="store_true", help="skip the workers: 1 vs 2 comparison")
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        default=RESULTS,
        help="folder for latest.json and latest.png, or quick.json and quick.png with --quick (default bench/results)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary folder (binaries, logs)")
    args = parser.parse_args(argv)
    unknown = set(args.systems.split(",")) - set(SYSTEM_NAMES)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEM_NAMES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    settings = QUICK if args.quick else FULL
    changes = {"repeats": args.repeats, "flood_rate": args.flood_rate, "fixed_rate": args.fixed_rate}
    settings = dataclasses.replace(settings, **{key: value for key, value in changes.items() if value})
    chosen = set(args.systems.split(","))
    systems = [system for system in SYSTEMS if system.name in chosen]
    bench = Bench(
        settings, systems, args.quick, fetch_libreswan=not args.no_libreswan_fetch, use_namespace=not args.no_namespace
    )
    # Let SIGTERM unwind like Ctrl-C, so that the systems under test are
    # stopped and the network namespace is deleted.
    signal.signal(signal.SIGTERM, lambda signal_number, frame: sys.exit(128 + signal_number))
    started = time.monotonic()
    work = pathlib.Path(tempfile.mkdtemp(prefix="fastredir-bench-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    try:
        bench.set_up(work)
        machine = machine_info(bench.cores_note, bench.namespace_note)
        if bench.context.libreswan is not None:
            machine["libreswan"] = bench.context.libreswan.version
        runs = bench.run_systems()
        micro = bench.run_micro()
        checks = {}
        if not args.skip_checks:
            checks["allocations"] = bench.run_allocations()
            checks["resident_memory"] = bench.run_resident_memory()
        workers = {} if args.skip_workers else bench.run_workers()
    finally:
        bench.tear_down()
        if args.keep_work:
            log(f"temporary files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    document = report.build_document(
        runs=runs,
        skipped=bench.skipped,
        micro=micro,
        checks=checks,
        workers=workers,
        machine=machine,
        settings=dataclasses.asdict(settings),
        quick=args.quick,
        failures=bench.failures,
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        elapsed=time.monotonic() - started,
    )
    print()
    print(report.format_table(document))
    # A smoke run must not replace the results of the last full run.
    stem = "quick" if args.quick else "latest"
    args.output.mkdir(parents=True, exist_ok=True)
    json_path = args.output / f"{stem}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    plot_path = report.plot(document, args.output / f"{stem}.png")
    log(f"\nwrote {json_path}" + (f" and {plot_path}" if plot_path else " (no plot: matplotlib is not installed)"))
    if bench.failures:
        log("\nchecks that failed:\n" + "\n".join(f"  {failure}" for failure in bench.failures))
        return 1
    return 0
