"""Results of a bench run, the checks against the targets, and their output as Rich tables or JSON."""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
from rich import box
from rich.console import Console
from rich.table import Table

from .loadgen import Ledger
from .processes import ResourceMonitor, Usage

MIB = 1024 * 1024


def percentile(values: list[float], percent: float) -> float:
    """Return the nearest-rank percentile of `values`, which must not be empty."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RunResult:
    """Counts, speed, latency and resource use of one path (bare or through hookrelay) in a workload.

    `seconds` is the measured window: from the first send to the last arrival, except for a
    drained backlog, where it starts at the first arrival. Latencies are in milliseconds from
    the start of a send to the moment the target had read the whole body.
    """

    label: str
    sent: int
    accepted: int
    delivered: int
    lost: int
    duplicates: int
    repeated_event_ids: int
    mismatches: int
    failed_sends: int
    seconds: float
    throughput: float | None
    accepted_per_second: float | None
    latency_ms: dict[str, float] | None
    concurrency: int | None = None
    relay: Usage | None = None
    listener: Usage | None = None
    loadgen: Usage | None = None
    others: Usage | None = None
    ratio_to_bare: float | None = None
    first_error: str | None = None

    def record_usage(self, usage: dict[str, Usage]) -> None:
        self.relay = usage.get("relay")
        self.listener = usage.get("listener")
        self.loadgen = usage.get("loadgen")
        self.others = usage.get(ResourceMonitor.OTHERS)

    @classmethod
    def from_ledger(
        cls, label: str, ledger: Ledger, *, concurrency: int | None = None, drained: bool = False
    ) -> RunResult:
        """Summarise a ledger. A `drained` run is timed from its first arrival and has no latency."""
        arrivals = ledger.arrived_at
        latencies = [(at - ledger.sent_at[bench_id]) * 1000 for bench_id, at in arrivals.items()]
        starts = arrivals.values() if drained else ledger.sent_at.values()
        seconds = max(arrivals.values()) - min(starts) if arrivals else 0.0
        first_send = min(ledger.sent_at.values(), default=0.0)
        accepting_seconds = ledger.last_response_at - first_send
        return cls(
            label=label,
            sent=len(ledger.sent_at),
            accepted=len(ledger.accepted),
            delivered=len(arrivals),
            lost=ledger.missing(),
            duplicates=ledger.duplicates,
            repeated_event_ids=ledger.repeated_event_ids,
            mismatches=ledger.mismatches,
            failed_sends=ledger.rejected + ledger.send_errors,
            seconds=seconds,
            throughput=len(arrivals) / seconds if seconds > 0 else None,
            accepted_per_second=len(ledger.accepted) / accepting_seconds if accepting_seconds > 0 else None,
            latency_ms=_latency_summary(latencies) if latencies and not drained else None,
            concurrency=concurrency,
            first_error=ledger.first_error,
        )


def _latency_summary(latencies: list[float]) -> dict[str, float]:
    return {f"p{rank}": percentile(latencies, rank) for rank in (50, 95, 99)}


@dataclass
class Check:
    """One measured figure against its target. `passed` is None where it could not be measured."""

    name: str
    measured: str
    target: str
    passed: bool | None
    note: str = ""


@dataclass
class WorkloadResult:
    name: str
    title: str
    parameters: dict[str, Any] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    # The runs of the rounds not shown in `runs`, counted in the delivery checks.
    other_rounds: list[RunResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # Why the workload did not run, when something it needs is missing.
    skipped: str | None = None

    def run(self, label: str) -> RunResult | None:
        return next((run for run in self.runs if run.label == label), None)

    def check_at_least(self, name: str, value: float | None, minimum: float, unit: str = "", note: str = "") -> None:
        measured = "not measured" if value is None else f"{value:.2f}{unit}"
        passed = None if value is None else value >= minimum
        self.checks.append(Check(name, measured, f">= {minimum:g}{unit}", passed, note))

    def check_at_most(self, name: str, value: float | None, maximum: float, unit: str = "", note: str = "") -> None:
        measured = "not measured" if value is None else f"{value:.2f}{unit}"
        passed = None if value is None else value <= maximum
        self.checks.append(Check(name, measured, f"<= {maximum:g}{unit}", passed, note))

    def check_below(self, name: str, value: float | None, limit: float, unit: str = "", note: str = "") -> None:
        measured = "not measured" if value is None else f"{value:.1f}{unit}"
        passed = None if value is None else value < limit
        self.checks.append(Check(name, measured, f"< {limit:g}{unit}", passed, note))

    def check_delivery(self) -> None:
        """Add the zero-lost and zero-mismatch checks over every hookrelay run of every round."""
        relayed = [run for run in self.runs + self.other_rounds if not run.label.startswith("bare")]
        if not relayed:
            return
        lost = sum(run.lost for run in relayed)
        mismatches = sum(run.mismatches for run in relayed)
        self.checks.append(Check("lost", str(lost), "0", lost == 0))
        self.checks.append(Check("body mismatches", str(mismatches), "0", mismatches == 0))


def lost_or_mismatched(results: list[WorkloadResult], strays: int) -> bool:
    """Return True if a run lost an accepted event or delivered a changed body, or a body had no known bench id."""
    runs = [run for result in results for run in result.runs + result.other_rounds]
    return strays > 0 or any(run.lost or run.mismatches for run in runs)


def machine_facts(loop_name: str, busy_before: float) -> dict[str, Any]:
    return {
        "cpu_busy_before_start_percent": busy_before,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadgen_event_loop": loop_name,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def to_json(
    results: list[WorkloadResult], *, quick: bool, machine: dict[str, Any], strays: int, serve_options: list[str]
) -> dict[str, Any]:
    return {
        "quick": quick,
        "relay_serve_options": serve_options,
        "machine": machine,
        "strays": strays,
        "ok": not lost_or_mismatched(results, strays),
        "workloads": [asdict(result) for result in results],
    }


def make_console() -> Console:
    """Create the stderr console; off a terminal it is wide enough that table rows do not wrap."""
    width = None if sys.stderr.isatty() else 220
    return Console(stderr=True, width=width, highlight=False)


def print_tables(console: Console, results: list[WorkloadResult], machine: dict[str, Any]) -> None:
    console.print(_runs_table(results))
    console.print(_resources_table(results))
    console.print(_checks_table(results))
    facts = _facts_table(results)
    if facts.row_count:
        console.print(facts)
    for result in results:
        if result.error:
            console.print(f"[red]{result.name} failed:[/] {result.error}")
        if result.skipped:
            console.print(f"[yellow]{result.name} skipped:[/] {result.skipped}")
        for run in result.runs:
            if run.failed_sends:
                console.print(f"[yellow]{result.name} {run.label}: {run.failed_sends} sends failed, "
                              f"the first with {run.first_error}[/]")
    memory = machine["memory_bytes"] / MIB / 1024
    console.print(
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {memory:.0f} GiB, "
        f"Python {machine['python']}, load generator on {machine['loadgen_event_loop']}, "
        f"CPU {machine['cpu_busy_before_start_percent']:.0f} % busy before the start"
    )


def _runs_table(results: list[WorkloadResult]) -> Table:
    headers = [
        "sent", "failed", "accepted", "delivered", "lost", "dup", "mismatch",
        "accepted/s", "delivered/s", "x bare", "p50 ms", "p95 ms", "p99 ms",
    ]
    table = _per_run_table("Deliveries", headers)
    for result in results:
        if result.error:
            table.add_row(result.name, "[red]failed (reason below)[/]")
        if result.skipped:
            table.add_row(result.name, "[yellow]skipped (reason below)[/]")
        for run in result.runs:
            latency = run.latency_ms or {}
            table.add_row(
                result.name, run.label,
                str(run.sent), _flag(run.failed_sends), str(run.accepted), str(run.delivered),
                _flag(run.lost), str(run.duplicates), _flag(run.mismatches),
                _number(run.accepted_per_second, "{:,.0f}"), _number(run.throughput, "{:,.0f}"),
                _number(run.ratio_to_bare, "{:.2f}"),
                *(_number(latency.get(key), "{:.2f}") for key in ("p50", "p95", "p99")),
            )
    return table


def _resources_table(results: list[WorkloadResult]) -> Table:
    headers = [
        "relay peak MiB", "relay CPU s", "relay CPU ms/event",
        "listener peak MiB", "listener CPU s", "listener CPU ms/event",
        "loadgen CPU s", "other processes CPU s", "window s", "listener concurrency",
    ]
    table = _per_run_table("Resources", headers)
    for result in results:
        for run in result.runs:
            table.add_row(result.name, run.label, *_usage_cells(run.relay, run.delivered),
                          *_usage_cells(run.listener, run.delivered),
                          _number(run.loadgen and run.loadgen.cpu_seconds, "{:.2f}"),
                          _number(run.others and run.others.cpu_seconds, "{:.2f}"),
                          _number(run.seconds, "{:.2f}"), _number(run.concurrency, "{}"))
    return table


def _usage_cells(usage: Usage | None, delivered: int) -> list[str]:
    """Format peak RSS, CPU seconds and CPU milliseconds per delivered event."""
    if usage is None:
        return ["-", "-", "-"]
    per_event = usage.cpu_seconds * 1000 / delivered if delivered else None
    return [f"{usage.peak_rss / MIB:.0f}", f"{usage.cpu_seconds:.2f}", _number(per_event, "{:.3f}")]


def _per_run_table(title: str, headers: list[str]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("workload", no_wrap=True)
    table.add_column("run", no_wrap=True)
    for header in headers:
        table.add_column(header, justify="right")
    return table


def _checks_table(results: list[WorkloadResult]) -> Table:
    table = Table(title="Targets", box=box.SIMPLE_HEAD, title_justify="left")
    for header in ("workload", "check", "measured", "target", "result", "note"):
        table.add_column(header)
    for result in results:
        for check in result.checks:
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}[check.passed]
            table.add_row(result.name, check.name, check.measured, check.target, verdict, check.note)
    return table


def _facts_table(results: list[WorkloadResult]) -> Table:
    table = Table(title="Details", box=box.SIMPLE_HEAD, title_justify="left")
    for header in ("workload", "measure", "value"):
        table.add_column(header)
    for result in results:
        for name, value in result.facts.items():
            table.add_row(result.name, name, _format_fact(value))
    return table


def _format_fact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _number(value: float | int | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def _flag(count: int) -> str:
    return f"[red]{count}[/]" if count else "0"
