"""The workloads: what each one sends, how it is measured, and which target it is checked against."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .loadgen import BodyFactory, Ledger, Sender, Target, new_client_session, wait_for_delivery
from .processes import (
    BenchError,
    Channel,
    child_environment,
    Listener,
    Relay,
    ResourceMonitor,
    create_channel,
    current_rss,
    stop_all,
)
from .report import MIB, RunResult, WorkloadResult

KIB = 1024
REQUEST_TIMEOUT = 120.0
PROGRESS_INTERVAL = 2.0
WARM_UP_EVENTS = 20
WARM_UP_SENDERS = 5
# A warm-up at a workload's concurrency sends this many events per sender, so that each
# connection the run will use, the listener's to the target too, is open and has carried some.
WARM_UP_EVENTS_PER_SENDER = 4
WARM_UP_TIMEOUT = 60.0
# Latency runs wait for each event before sending the next, at most this long per event
# and in all.
ARRIVAL_TIMEOUT = 10.0
ARRIVALS_TOTAL_TIMEOUT = 120.0
RSS_LIMIT_MIB = 150
# A relayed event crosses three hops (sender to relay, relay to listener, listener to
# target) where a bare one crosses one, so hookrelay adds two.
ADDED_HOPS = 2


@dataclass(frozen=True)
class Workload:
    """One workload. `events` is the number of idle listeners for the `idle` kind."""

    name: str
    title: str
    kind: str
    events: int
    body_size: int
    senders: int
    concurrency: int
    binary: bool = False
    min_ratio: float | None = None

    def parameters(self) -> dict[str, object]:
        return {
            "events": self.events, "body_bytes": self.body_size, "senders": self.senders,
            "binary_body": self.binary,
        }

    def describe_count(self) -> str:
        noun = "listener" if self.kind == "idle" else "event"
        return f"{self.events:,} {noun}{'' if self.events == 1 else 's'}"


WORKLOADS = [
    Workload("1kb-x50", "1 KB JSON, 50 concurrent senders", "live", 2_000, KIB, 50, 50, min_ratio=0.6),
    Workload("100kb-x10", "100 KB JSON, 10 concurrent senders", "live", 500, 100 * KIB, 10, 10, min_ratio=0.5),
    Workload("one-sender", "1 KB, one sender, one event at a time", "latency", 200, KIB, 1, 1),
    Workload("backlog", "10,000 held 1 KB events drained by one listener", "backlog", 10_000, KIB, 50, 50,
             min_ratio=0.6),
    Workload("held-100k", "relay memory while 100,000 1 KB events are held", "held", 100_000, KIB, 50, 50),
    Workload("idle-listeners", "1,000 idle listeners on 1,000 channels", "idle", 1_000, KIB, 1, 1),
    Workload("25mib", "one 25 MiB binary body end to end", "large", 1, 25 * MIB, 1, 1, binary=True),
    Workload("redis-2node", "1 KB JSON posted to relay node A, listener on node B, Redis between them", "redis",
             2_000, KIB, 50, 50, min_ratio=0.6),
]
QUICK_EVENTS = {
    "1kb-x50": 300, "100kb-x10": 60, "one-sender": 30, "backlog": 1_000,
    "held-100k": 3_000, "idle-listeners": 10, "25mib": 1, "redis-2node": 300,
}


def select_workloads(*, quick: bool, only: list[str] | None, events: int | None = None) -> list[Workload]:
    """Return the workloads named in `only` (all when None), with quick or explicit event counts.

    `events` leaves the 25 MiB workload at one body, so that a large count for the other
    workloads cannot multiply gigabytes of traffic.
    """
    chosen = [workload for workload in WORKLOADS if not only or workload.name in only]
    if quick:
        chosen = [dataclasses.replace(workload, events=QUICK_EVENTS[workload.name]) for workload in chosen]
    if events is not None:
        chosen = [
            workload if workload.kind == "large" else dataclasses.replace(workload, events=events)
            for workload in chosen
        ]
    return chosen


@dataclass
class Bench:
    """Shared state of one bench run: the hookrelay command, the target, the console and a scratch folder."""

    hookrelay: str
    root: Path
    target: Target
    console: Console
    quick: bool
    concurrency: int | None = None
    rounds: int = 1
    max_listeners: int | None = None
    idle_processes: bool = False
    serve_options: list[str] = dataclasses.field(default_factory=list)
    _count: int = 0
    _started: float = dataclasses.field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self._started:7.1f}s[/] {message}")

    def new_ledger(self) -> Ledger:
        self._count += 1
        return self.target.open_ledger(f"r{self._count}")

    def new_dir(self, name: str) -> Path:
        self._count += 1
        path = self.root / f"{self._count:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def child_env(self, path: Path) -> dict[str, str]:
        """Return the environment for a process whose files live at `path`, with its own config directory."""
        return child_environment(path.with_name(path.name + ".config"))

    def listener_concurrency(self, workload: Workload) -> int:
        return self.concurrency or workload.concurrency

    @asynccontextmanager
    async def progress(self, label: str, ledger: Ledger, total: int) -> AsyncIterator[None]:
        """Log the counts of `ledger` every few seconds while the measured block runs, with a steady heap."""

        def report() -> None:
            self.log(f"{label}: sent {len(ledger.sent_at):,}/{total:,}, accepted {len(ledger.accepted):,}, "
                     f"delivered {len(ledger.arrived_at):,}")

        async def report_periodically() -> None:
            while True:
                await asyncio.sleep(PROGRESS_INTERVAL)
                report()

        task = asyncio.create_task(report_periodically())
        try:
            with steady_heap():
                yield
        finally:
            task.cancel()
            report()

    async def wait_for_delivery(self, ledger: Ledger, total: int, stack: Stack | None = None) -> None:
        """Wait for the accepted events, and raise BenchError as soon as a process of `stack` exits."""
        stall_timeout = 15.0 if self.quick else 30.0
        on_tick = stack.check_running if stack is not None else None
        await wait_for_delivery(ledger, stall_timeout=stall_timeout, max_wait=120.0 + total / 200, on_tick=on_tick)


@contextmanager
def steady_heap() -> Iterator[None]:
    """Keep the load generator's own garbage collector from stalling a measured block.

    A full collection of the bench process's heap took 12-14 ms here, about 4 % of a
    2,000-event run of 1kb-x50, and it fell into whichever run crossed the collector's
    threshold, mostly the hookrelay one. Collected and frozen first, the heap leaves a
    collection during the block only the block's own objects to scan.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Stack:
    """A relay with one channel and the listener processes started on it."""

    def __init__(self, bench: Bench, relay: Relay) -> None:
        self.bench = bench
        self.relay = relay
        self.channel: Channel | None = None
        self.listeners: list[Listener] = []
        self._listeners_started = 0
        self._checked_at = 0.0

    async def create_channel(self) -> Channel:
        env = self.bench.child_env(self.relay.log_path.with_name("channel-create"))
        return await create_channel(self.bench.hookrelay, self.relay.url, env)

    def start_listener(self, channel: Channel, concurrency: int) -> Listener:
        log_path = self.relay.log_path.with_name(f"listener-{self._listeners_started}.log")
        self._listeners_started += 1
        listener = Listener(
            self.bench.hookrelay, log_path, self.bench.child_env(log_path),
            relay_url=self.relay.url, channel=channel, forward=self.bench.target.url, concurrency=concurrency,
        )
        self.listeners.append(listener)
        listener.spawn()
        return listener

    async def warm_up(self, channel: Channel, senders: int = WARM_UP_SENDERS) -> None:
        """Send a few events through `channel` from `senders` at once and wait for them, so its listener is connected."""
        url = f"{channel.url}/warm-up"
        try:
            await warm_up(self.bench, url, senders=senders)
        except BenchError as exc:
            logs = [listener.describe_exit() for listener in self.listeners if listener.exited() is not None]
            raise BenchError("; ".join([str(exc), *logs])) from None

    def check_running(self) -> None:
        """Raise BenchError if the relay or a listener has exited.

        Calls within a second of the last check return at once.
        """
        now = time.monotonic()
        if now - self._checked_at < 1.0:
            return
        self._checked_at = now
        for process in [self.relay, *self.listeners]:
            if process.exited() is not None:
                raise BenchError(process.describe_exit())

    def stop_listeners(self) -> None:
        stop_all(self.listeners)
        self.listeners.clear()

    def stop(self) -> None:
        stop_all(self.listeners)
        self.relay.stop()


@asynccontextmanager
async def open_stack(bench: Bench, workload: Workload, *, sync: str | None = None) -> AsyncIterator[Stack]:
    """Start a relay on a fresh data directory, create one channel, and stop every process on exit."""
    max_body = 32 * MIB if workload.body_size > MIB else None
    workdir = bench.new_dir(workload.name)
    relay = Relay(
        bench.hookrelay, workdir, bench.child_env(workdir / "relay"),
        sync=sync, max_body=max_body, extra_options=bench.serve_options,
    )
    stack = Stack(bench, relay)
    try:
        await relay.start()
        stack.channel = await stack.create_channel()
        yield stack
    finally:
        stack.stop()


async def warm_up(bench: Bench, url: str, count: int | None = None, *, senders: int = WARM_UP_SENDERS) -> None:
    """Send small events to `url` from `senders` at once and wait for all of them, so connections and code paths are warm.

    `count` defaults to WARM_UP_EVENTS_PER_SENDER per sender, and at least WARM_UP_EVENTS.
    """
    if count is None:
        count = max(WARM_UP_EVENTS, WARM_UP_EVENTS_PER_SENDER * senders)
    ledger = bench.new_ledger()
    async with new_client_session(senders, REQUEST_TIMEOUT) as session:
        await Sender(session, url, BodyFactory(KIB), ledger).send_many(count, senders)
        await wait_for_delivery(ledger, stall_timeout=WARM_UP_TIMEOUT, max_wait=WARM_UP_TIMEOUT)
    if ledger.first_error or ledger.missing():
        reason = ledger.first_error or f"{ledger.missing()} of {count} never arrived"
        raise BenchError(f"warm-up through {url} failed: {reason}")


async def drive(
    bench: Bench, sender: Sender, workload: Workload, count: int, senders: int, stack: Stack | None = None
) -> None:
    """Send the workload's events: one at a time for latency runs, else from concurrent senders."""
    if workload.kind in ("latency", "large"):
        await sender.send_one_at_a_time(
            count, per_event_timeout=ARRIVAL_TIMEOUT, total_timeout=ARRIVALS_TOTAL_TIMEOUT
        )
    else:
        await sender.send_many(count, senders)
    await bench.wait_for_delivery(sender.ledger, count, stack)


async def measure_bare(bench: Bench, workload: Workload, *, senders: int) -> RunResult:
    """Post the workload straight to the target: the baseline that hookrelay is compared with."""
    url = f"{bench.target.url}/{workload.name}"
    await warm_up(bench, url, senders=senders)
    ledger = bench.new_ledger()
    bodies = BodyFactory(workload.body_size, binary=workload.binary)
    monitor = start_monitor()
    try:
        async with new_client_session(senders, REQUEST_TIMEOUT) as session:
            sender = Sender(session, url, bodies, ledger)
            async with bench.progress(f"{workload.name} bare", ledger, workload.events):
                await drive(bench, sender, workload, workload.events, senders)
    finally:
        usage = monitor.finish()

    run = RunResult.from_ledger("bare", ledger)
    run.record_usage(usage)
    return run


async def measure_relayed(bench: Bench, workload: Workload, *, sync: str | None = None) -> RunResult:
    """Post the workload to a relay whose listener forwards it to the target."""
    label = "hookrelay" if sync is None else f"hookrelay --sync {sync}"
    concurrency = bench.listener_concurrency(workload)
    async with open_stack(bench, workload, sync=sync) as stack:
        listener = stack.start_listener(stack.channel, concurrency)
        await stack.warm_up(stack.channel, senders=workload.senders)

        ledger = bench.new_ledger()
        bodies = BodyFactory(workload.body_size, binary=workload.binary)
        monitor = start_monitor(relay=stack.relay.pid, listener=listener.pid)
        try:
            async with new_client_session(workload.senders, REQUEST_TIMEOUT) as session:
                sender = Sender(session, f"{stack.channel.url}/{workload.name}", bodies, ledger)
                async with bench.progress(f"{workload.name} {label}", ledger, workload.events):
                    await drive(bench, sender, workload, workload.events, workload.senders, stack)
        finally:
            usage = monitor.finish()

    run = RunResult.from_ledger(label, ledger, concurrency=concurrency)
    run.record_usage(usage)
    return run


def start_monitor(**pids: int) -> ResourceMonitor:
    """Start sampling the load generator itself and the hookrelay processes named in `pids`."""
    monitor = ResourceMonitor()
    monitor.watch("loadgen", os.getpid())
    for name, pid in pids.items():
        monitor.watch(name, pid)
    return monitor


def ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


async def run_live(bench: Bench, workload: Workload) -> WorkloadResult:
    """Measure delivery throughput from concurrent senders with a listener connected, against bare.

    Bare and hookrelay take turns for `bench.rounds` rounds, each with the workload's full
    count. The round with the median ratio is reported, and every round counts in the
    delivery checks. One run of a few hundred milliseconds moved by a tenth from round to
    round on a shared 2-core machine, and alternating gives both paths the same conditions.
    """
    result = WorkloadResult(workload.name, workload.title, parameters=workload.parameters())
    rounds = []
    for number in range(1, bench.rounds + 1):
        if bench.rounds > 1:
            bench.log(f"{workload.name}: round {number} of {bench.rounds}")
        bare = await measure_bare(bench, workload, senders=workload.senders)
        relayed = await measure_relayed(bench, workload)
        relayed.ratio_to_bare = ratio(relayed.throughput, bare.throughput)
        rounds.append((bare, relayed))

    median = median_round(rounds)
    result.runs += list(median)
    result.other_rounds = [run for pair in rounds if pair is not median for run in pair]
    if bench.rounds > 1:
        result.facts["ratio to bare, each round"] = ", ".join(f"{relayed.ratio_to_bare or 0:.2f}" for _, relayed in rounds)
    result.check_at_least("throughput vs bare", median[1].ratio_to_bare, workload.min_ratio, "x")
    result.check_delivery()
    return result


def median_round(rounds: list[tuple[RunResult, RunResult]]) -> tuple[RunResult, RunResult]:
    """Return the (bare, hookrelay) pair whose ratio is the median, the lower middle one of an even count."""
    ordered = sorted(rounds, key=lambda pair: pair[1].ratio_to_bare or 0.0)
    return ordered[(len(ordered) - 1) // 2]


async def run_latency(bench: Bench, workload: Workload) -> WorkloadResult:
    """Measure the latency that hookrelay adds for one sender with one event in flight, at both sync settings."""
    result = WorkloadResult(workload.name, workload.title, parameters=workload.parameters())
    bare = await measure_bare(bench, workload, senders=1)
    result.runs.append(bare)
    for sync, limit in ((None, 1.0), ("full", 2.0)):
        relayed = await measure_relayed(bench, workload, sync=sync)
        relayed.ratio_to_bare = ratio(relayed.throughput, bare.throughput)
        result.runs.append(relayed)
        added = latency_p50(relayed) - latency_p50(bare) if relayed.latency_ms and bare.latency_ms else None
        result.facts[f"{relayed.label}: added p50, both hops (ms)"] = added
        result.check_at_most(
            f"added p50 per hop, sync {sync or 'default'}", None if added is None else added / ADDED_HOPS,
            limit, " ms", note=f"(hookrelay p50 - bare p50) / {ADDED_HOPS} added hops",
        )
    result.check_delivery()
    return result


def latency_p50(run: RunResult) -> float:
    assert run.latency_ms is not None
    return run.latency_ms["p50"]


async def run_large(bench: Bench, workload: Workload) -> WorkloadResult:
    """Send one big binary body: end-to-end time, and the memory it costs relay and listener."""
    result = WorkloadResult(workload.name, workload.title, parameters=workload.parameters())
    bare = await measure_bare(bench, workload, senders=1)
    relayed = await measure_relayed(bench, workload)
    result.runs += [bare, relayed]
    for run in (bare, relayed):
        seconds = run.latency_ms["p50"] / 1000 if run.latency_ms else None
        result.facts[f"{run.label}: end to end (s)"] = seconds
    result.facts["relay --max-body (MiB)"] = 32
    result.check_delivery()
    return result


async def run_backlog(bench: Bench, workload: Workload) -> WorkloadResult:
    """Measure how fast one listener drains events posted while no listener ran, against bare."""
    result = WorkloadResult(workload.name, workload.title, parameters=workload.parameters())
    concurrency = bench.listener_concurrency(workload)
    bare = await measure_bare(bench, workload, senders=concurrency)
    relayed = await measure_drain(bench, workload, result)
    relayed.ratio_to_bare = ratio(relayed.throughput, bare.throughput)
    result.runs += [bare, relayed]

    result.check_at_least("drain throughput vs bare", relayed.ratio_to_bare, workload.min_ratio, "x",
                          note=f"bare: {concurrency} senders; hookrelay: listener --concurrency {concurrency}")
    result.check_delivery()
    return result


async def hold_events(bench: Bench, stack: Stack, workload: Workload, ledger: Ledger) -> float:
    """Post the workload's events while no listener is connected, and return the seconds it took."""
    bodies = BodyFactory(workload.body_size, binary=workload.binary)
    started = time.perf_counter()
    async with new_client_session(workload.senders, REQUEST_TIMEOUT) as session:
        sender = Sender(session, f"{stack.channel.url}/{workload.name}", bodies, ledger)
        async with bench.progress(f"{workload.name} posting with no listener", ledger, workload.events):
            await sender.send_many(workload.events, workload.senders)
    return time.perf_counter() - started


async def warm_up_and_disconnect(stack: Stack, concurrency: int) -> None:
    """Run the whole path once with a temporary listener, so first-use costs fall outside the measurement."""
    stack.start_listener(stack.channel, concurrency)
    await stack.warm_up(stack.channel)
    stack.stop_listeners()
    # A listener that ended on SIGTERM has closed its websocket. The pause lets the relay
    # free the closed session before memory is sampled.
    await asyncio.sleep(0.5)


async def drain(bench: Bench, stack: Stack, workload: Workload, ledger: Ledger, monitor: ResourceMonitor) -> float:
    """Connect one listener and wait until the held events arrived. Return the seconds from spawn to first arrival."""
    listener = stack.start_listener(stack.channel, bench.listener_concurrency(workload))
    spawned_at = time.perf_counter()
    monitor.watch("listener", listener.pid)
    async with bench.progress(f"{workload.name} draining", ledger, workload.events):
        await bench.wait_for_delivery(ledger, workload.events, stack)
    first_arrival = min(ledger.arrived_at.values(), default=spawned_at)
    return first_arrival - spawned_at


async def measure_drain(bench: Bench, workload: Workload, result: WorkloadResult) -> RunResult:
    concurrency = bench.listener_concurrency(workload)
    async with open_stack(bench, workload) as stack:
        await warm_up_and_disconnect(stack, concurrency)
        ledger = bench.new_ledger()
        monitor = start_monitor(relay=stack.relay.pid)
        try:
            ingest_seconds = await hold_events(bench, stack, workload, ledger)
            result.facts["ingest with no listener (events/s)"] = len(ledger.accepted) / ingest_seconds
            result.facts["data directory when held (MiB)"] = stack.relay.data_size() / MIB
            startup = await drain(bench, stack, workload, ledger, monitor)
            result.facts["listener spawn to first delivery (s)"] = startup
        finally:
            usage = monitor.finish()

    run = RunResult.from_ledger("hookrelay", ledger, concurrency=concurrency, drained=True)
    run.record_usage(usage)
    return run


async def run_held(bench: Bench, workload: Workload) -> WorkloadResult:
    """Measure relay memory before and after holding many events, then drain them to prove none was lost."""
    result = WorkloadResult(workload.name, workload.title, parameters=workload.parameters())
    concurrency = bench.listener_concurrency(workload)
    async with open_stack(bench, workload) as stack:
        await warm_up_and_disconnect(stack, concurrency)
        ledger = bench.new_ledger()
        monitor = start_monitor(relay=stack.relay.pid)
        try:
            result.facts["relay RSS before (MiB)"] = current_rss(stack.relay.pid) / MIB
            ingest_seconds = await hold_events(bench, stack, workload, ledger)
            result.facts["ingest with no listener (events/s)"] = len(ledger.accepted) / ingest_seconds
            result.facts["relay RSS after (MiB)"] = current_rss(stack.relay.pid) / MIB
            holding_peak = monitor.peak("relay")
            result.facts["relay peak RSS while holding (MiB)"] = holding_peak / MIB
            result.facts["data directory when held (MiB)"] = stack.relay.data_size() / MIB
            await drain(bench, stack, workload, ledger, monitor)
        finally:
            usage = monitor.finish()

    run = RunResult.from_ledger("hookrelay", ledger, concurrency=concurrency, drained=True)
    run.record_usage(usage)
    result.runs.append(run)
    result.check_below(f"relay peak RSS holding {len(ledger.accepted):,} events", holding_peak / MIB,
                       RSS_LIMIT_MIB, " MiB")
    result.check_delivery()
    return result
