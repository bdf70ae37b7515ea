"""Command line of the benchmark: `python -m bench [--quick] [--only NAME] [--json]`.

Exit status: 0 when every accepted event arrived intact, whether or not the speed and
memory targets were met. 1 when an event was lost or a body arrived changed. 2 when a
workload could not run because a hookrelay process failed. 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
from rich.console import Console

from .idle import run_idle
from .loadgen import Target
from .processes import BenchError, child_environment, unlimited_serve_options
from .redis_nodes import run_redis
from .report import WorkloadResult, lost_or_mismatched, machine_facts, make_console, print_tables, to_json
from .workloads import (
    WORKLOADS,
    Bench,
    Workload,
    run_backlog,
    run_held,
    run_large,
    run_latency,
    run_live,
    select_workloads,
)

EXIT_OK = 0
EXIT_LOST_OR_MISMATCHED = 1
EXIT_WORKLOAD_FAILED = 2
EXIT_INTERRUPTED = 130
# Above this share of CPU busy before the start, other work on the machine skews the figures.
BUSY_WARNING_PERCENT = 20.0
# Rounds of bare and hookrelay in turn for the throughput workloads of a full run.
FULL_ROUNDS = 5

RUNNERS = {
    "live": run_live,
    "latency": run_latency,
    "backlog": run_backlog,
    "held": run_held,
    "idle": run_idle,
    "large": run_large,
    "redis": run_redis,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure hookrelay against a bare baseline: throughput, latency, memory and CPU.",
        epilog="Workloads: " + "; ".join(f"{w.name} ({w.title})" for w in WORKLOADS),
    )
    parser.add_argument("--quick", action="store_true",
                        help="run every workload with small counts, for a smoke test of under a minute")
    parser.add_argument("--only", action="append", metavar="NAME", choices=[w.name for w in WORKLOADS],
                        help="run only this workload; repeat to run several")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document on stdout")
    parser.add_argument("--hookrelay", metavar="PATH", default=default_hookrelay(),
                        help="hookrelay executable to measure (default: the one beside this Python)")
    parser.add_argument("--events", type=int, metavar="N",
                        help="events per workload (listeners for idle-listeners) instead of the default count; "
                             "25mib always sends one body")
    parser.add_argument("--rounds", type=positive_int, metavar="N",
                        help="rounds of bare and hookrelay in turn for 1kb-x50 and 100kb-x10; the round with the "
                             f"median ratio is reported (default: {FULL_ROUNDS}, or 1 with --quick)")
    parser.add_argument("--concurrency", type=int, metavar="N",
                        help="listener --concurrency for every workload (default: one per sender)")
    parser.add_argument("--max-listeners", type=int, metavar="N",
                        help="cap on idle listener processes (default: as many as fit in half the free memory)")
    parser.add_argument("--idle-processes", action="store_true",
                        help="run idle listeners as hookrelay listen processes even where in-process "
                             "websocket clients could speak the documented protocol")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder with data and logs")
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    """Parse a count of at least 1 for argparse."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count; use 1 or more")
    return value


def default_hookrelay() -> str:
    beside_python = Path(sys.executable).parent / "hookrelay"
    return str(beside_python) if beside_python.exists() else (shutil.which("hookrelay") or "hookrelay")


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard limit: hundreds of listeners each hold sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def event_loop_factory() -> tuple[object | None, str]:
    """Use uvloop for the load generator when it is installed, so the generator costs less CPU."""
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"


def measure_busy_cpu(console: Console) -> float:
    """Return the share of CPU in use by other processes during one second, and warn when it is high."""
    busy = psutil.cpu_percent(interval=1.0)
    if busy > BUSY_WARNING_PERCENT:
        console.print(f"[yellow]bench: warning: the CPU was {busy:.0f} % busy before the start; "
                      "other work on this machine lowers and scatters the figures[/]")
    return busy


async def run_workload(bench: Bench, workload: Workload) -> WorkloadResult:
    """Run one workload. A hookrelay process that fails marks only this workload as failed."""
    bench.log(f"[bold]{workload.name}[/]: {workload.title}, {workload.describe_count()}")
    try:
        return await RUNNERS[workload.kind](bench, workload)
    except BenchError as exc:
        bench.log(f"[red]{workload.name} failed:[/] {exc}")
        return WorkloadResult(workload.name, workload.title, parameters=workload.parameters(), error=str(exc))


async def run_all(
    args: argparse.Namespace, console: Console, root: Path
) -> tuple[list[WorkloadResult], int, list[str]]:
    """Run the chosen workloads and return their results, the stray count and the serve options used."""
    target = Target()
    await target.start()
    serve_options = unlimited_serve_options(args.hookrelay, child_environment(root / "help.config"))
    console.print(f"bench: options added to every hookrelay serve: {' '.join(serve_options) or 'none'}")
    bench = Bench(
        hookrelay=args.hookrelay, root=root, target=target,
        console=console, quick=args.quick, concurrency=args.concurrency, max_listeners=args.max_listeners,
        rounds=args.rounds or (1 if args.quick else FULL_ROUNDS),
        idle_processes=args.idle_processes, serve_options=serve_options,
    )
    try:
        results = [await run_workload(bench, workload)
                   for workload in select_workloads(quick=args.quick, only=args.only, events=args.events)]
    finally:
        await target.close()
    return results, target.strays, serve_options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = make_console()
    if not os.access(args.hookrelay, os.X_OK):
        console.print(f"bench: error: hookrelay executable not found at {args.hookrelay}; "
                      "install the project with pip install -e . or pass --hookrelay PATH")
        return EXIT_WORKLOAD_FAILED
    raise_open_file_limit()
    loop_factory, loop_name = event_loop_factory()
    busy_before = measure_busy_cpu(console)
    root = Path(tempfile.mkdtemp(prefix="hookrelay-bench-"))
    console.print(f"bench: measuring {args.hookrelay}, scratch folder {root}")
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results, strays, serve_options = runner.run(run_all(args, console, root))
    except KeyboardInterrupt:
        console.print("bench: interrupted")
        return EXIT_INTERRUPTED
    except BenchError as exc:
        console.print(f"bench: error: {exc}")
        return EXIT_WORKLOAD_FAILED
    finally:
        if args.keep:
            console.print(f"bench: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    machine = machine_facts(loop_name, busy_before)
    print_tables(console, results, machine)
    if args.json:
        document = to_json(results, quick=args.quick, machine=machine, strays=strays, serve_options=serve_options)
        print(json.dumps(document, indent=2))
    if strays:
        console.print(f"[red]bench: {strays} bodies reached the target without a known bench id[/]")
    if lost_or_mismatched(results, strays):
        return EXIT_LOST_OR_MISMATCHED
    return EXIT_WORKLOAD_FAILED if any(result.error for result in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
