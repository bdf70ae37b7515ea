"""The idle-listeners workload: many listeners on their own channels, each idle until one event arrives.

It measures the relay's memory per connected listener and the latency of one event to
each. The listeners are in-process websocket clients when the wire protocol is documented
(see idle_clients.py), else real `hookrelay listen` processes, as many as fit in memory.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psutil

from . import idle_clients
from .loadgen import BodyFactory, Ledger, Sender, new_client_session
from .processes import BenchError, Channel, current_rss
from .report import MIB, RunResult, WorkloadResult
from .workloads import (
    KIB,
    ARRIVAL_TIMEOUT,
    ARRIVALS_TOTAL_TIMEOUT,
    REQUEST_TIMEOUT,
    RSS_LIMIT_MIB,
    Bench,
    Stack,
    Workload,
    open_stack,
    start_monitor,
    warm_up,
)

T = TypeVar("T")

# Idle listener processes may use at most this share of the memory available at start.
LISTENER_MEMORY_SHARE = 0.5
CLI_CREATE_CONCURRENCY = 4
API_CREATE_CONCURRENCY = 20
CONNECT_PROBE_CONCURRENCY = 20
CONNECT_TIMEOUT = 300.0
SETTLE_SECONDS = 1.0


async def run_idle(bench: Bench, workload: Workload) -> WorkloadResult:
    """Run the workload with in-process listeners where the protocol allows it, else with processes."""
    result = WorkloadResult(workload.name, workload.title, parameters=workload.parameters())
    async with open_stack(bench, workload) as stack:
        if bench.idle_processes or not idle_clients.protocol_available():
            await measure_with_processes(bench, workload, stack, result)
        else:
            await measure_with_clients(bench, workload, stack, result)
    result.check_delivery()
    return result


async def measure_with_clients(bench: Bench, workload: Workload, stack: Stack, result: WorkloadResult) -> None:
    count = workload.events
    listeners = idle_clients.ProtocolListeners(stack.relay.url, bench.target.url)
    try:
        await listeners.connect([stack.channel], CONNECT_TIMEOUT)
        await stack.warm_up(stack.channel)
        channels = [stack.channel] + await create_channels(bench, stack, count - 1)
        bench.log(f"idle-listeners: connecting {count - 1:,} in-process listeners")

        async def connect_rest() -> None:
            await listeners.connect(channels[1:], CONNECT_TIMEOUT)

        await measure_idle(bench, workload, stack, result, channels, connect_rest)
    finally:
        await listeners.close()
    result.facts["listeners"] = f"{count:,} in-process websocket clients"


async def measure_with_processes(bench: Bench, workload: Workload, stack: Stack, result: WorkloadResult) -> None:
    first = stack.start_listener(stack.channel, 1)
    await stack.warm_up(stack.channel)
    count = fitting_listener_count(bench, workload, first.pid)
    bench.log(f"idle-listeners: running {count:,} listener processes (of {workload.events:,} requested)")
    channels = [stack.channel] + await create_channels(bench, stack, count - 1)

    async def connect_rest() -> None:
        await connect_listener_processes(bench, stack, channels[1:])

    await measure_idle(bench, workload, stack, result, channels, connect_rest)
    listener_rss = sum(current_rss(listener.pid) for listener in stack.listeners)
    result.facts["listeners"] = f"{count:,} hookrelay listen processes"
    result.facts["listener process RSS, mean (MiB)"] = listener_rss / count / MIB


async def measure_idle(
    bench: Bench, workload: Workload, stack: Stack, result: WorkloadResult,
    channels: list[Channel], connect_rest: Callable[[], Awaitable[None]],
) -> None:
    """Measure relay memory before and after the other listeners connect, then one event's latency to each."""
    count = len(channels)
    monitor = start_monitor(relay=stack.relay.pid)
    try:
        rss_before = current_rss(stack.relay.pid)
        await connect_rest()
        await asyncio.sleep(SETTLE_SECONDS)
        rss_connected = current_rss(stack.relay.pid)

        ledger = bench.new_ledger()
        async with bench.progress("idle-listeners one event per channel", ledger, count):
            await send_one_per_channel(bench, stack, channels, ledger)
        rss_after_events = current_rss(stack.relay.pid)
    finally:
        usage = monitor.finish()

    run = RunResult.from_ledger("hookrelay", ledger, concurrency=1)
    run.record_usage(usage)
    result.runs.append(run)
    per_listener = (rss_connected - rss_before) / (count - 1) if count > 1 else None
    result.facts["relay RSS with 1 listener (MiB)"] = rss_before / MIB
    result.facts[f"relay RSS with {count:,} idle listeners (MiB)"] = rss_connected / MIB
    result.facts["relay RSS after one event on each (MiB)"] = rss_after_events / MIB
    result.facts["relay RSS per idle listener (KiB)"] = None if per_listener is None else per_listener / KIB
    check_relay_memory(result, workload, count, usage["relay"].peak_rss, rss_before, per_listener)


def check_relay_memory(
    result: WorkloadResult, workload: Workload, count: int, peak: int, rss_before: int, per_listener: float | None
) -> None:
    """Check the relay's peak RSS, extrapolated linearly when fewer listeners ran than the workload names."""
    if count >= workload.events:
        result.check_below(f"relay peak RSS with {count:,} listeners", peak / MIB, RSS_LIMIT_MIB, " MiB")
        return
    estimate = None if per_listener is None else (rss_before + per_listener * (workload.events - 1)) / MIB
    result.check_below(
        f"relay RSS with {workload.events:,} listeners (estimate)", estimate, RSS_LIMIT_MIB, " MiB",
        note=f"extrapolated linearly from {count:,} idle listener processes",
    )


async def create_channels(bench: Bench, stack: Stack, count: int) -> list[Channel]:
    """Create `count` channels in-process through the client API module when it is installed, else with the CLI."""
    if idle_clients.api_client is not None:
        bench.log(f"idle-listeners: creating {count:,} channels through relay_client.api_client")
        create = functools.partial(idle_clients.create_channel_through_api, stack.relay.url)
        return await gather_limited(API_CREATE_CONCURRENCY, [create] * count)
    bench.log(f"idle-listeners: creating {count:,} channels with hookrelay channel create")
    return await gather_limited(CLI_CREATE_CONCURRENCY, [stack.create_channel] * count)


async def gather_limited(limit: int, factories: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the awaitables that `factories` make, at most `limit` at a time. The first failure cancels the rest."""
    semaphore = asyncio.Semaphore(limit)

    async def run(factory: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await factory()

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run(factory)) for factory in factories]
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [task.result() for task in tasks]


def fitting_listener_count(bench: Bench, workload: Workload, listener_pid: int) -> int:
    """Return how many listener processes fit in LISTENER_MEMORY_SHARE of the available memory."""
    try:
        unique = psutil.Process(listener_pid).memory_full_info().uss
    except psutil.Error:
        unique = current_rss(listener_pid)
    available = psutil.virtual_memory().available
    count = min(workload.events, int(available * LISTENER_MEMORY_SHARE // max(unique, 1)))
    if bench.max_listeners is not None:
        count = min(count, bench.max_listeners)
    return max(count, 1)


async def connect_listener_processes(bench: Bench, stack: Stack, channels: list[Channel]) -> None:
    """Start one listener process per channel and wait until each one delivered a warm-up event."""
    for channel in channels:
        stack.start_listener(channel, 1)
    connected = 0

    async def probe(channel: Channel) -> None:
        nonlocal connected
        await warm_up(bench, f"{channel.url}/warm-up", count=1)
        connected += 1
        if connected % 50 == 0:
            bench.log(f"idle-listeners: {connected}/{len(channels)} listeners connected")

    probes = [functools.partial(probe, channel) for channel in channels]
    try:
        await asyncio.wait_for(gather_limited(CONNECT_PROBE_CONCURRENCY, probes), CONNECT_TIMEOUT)
    except TimeoutError:
        raise BenchError(f"only {connected} of {len(channels)} listener processes connected "
                         f"within {CONNECT_TIMEOUT:.0f} s") from None


async def send_one_per_channel(bench: Bench, stack: Stack, channels: list[Channel], ledger: Ledger) -> None:
    """Send one 1 KB event to each channel in turn, each after the previous one arrived."""
    bodies = BodyFactory(KIB)
    deadline = time.monotonic() + ARRIVALS_TOTAL_TIMEOUT
    async with new_client_session(1, REQUEST_TIMEOUT) as session:
        for number, channel in enumerate(channels):
            sender = Sender(session, f"{channel.url}/idle", bodies, ledger)
            await sender.send_and_wait(number, min(ARRIVAL_TIMEOUT, deadline - time.monotonic()))
    await bench.wait_for_delivery(ledger, len(channels), stack)
