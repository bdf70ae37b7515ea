"""The two-node Redis workload: the sender posts to relay node A, the listener reads from node B.

Both nodes run `hookrelay serve --store redis://…` against one redis-server that the
bench starts on a free loopback port, with `deploy/redis.conf` (append-only file,
`appendfsync always`) and its data in the scratch folder. Every event therefore
crosses from one node to the other through Redis. The workload measures delivery
throughput against bare with 50 senders, then the latency of one sender with one
event in flight. Without `redis-server` on the PATH it is skipped with a note.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from .loadgen import BodyFactory, Sender, new_client_session
from .processes import BenchError, Channel, ManagedProcess, Relay, Usage, create_channel, read_log_tail, stop_all
from .report import RunResult, WorkloadResult
from .workloads import (
    ADDED_HOPS,
    REQUEST_TIMEOUT,
    Bench,
    Stack,
    Workload,
    drive,
    latency_p50,
    measure_bare,
    ratio,
    start_monitor,
)

REDIS_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "redis.conf"
REDIS_START_TIMEOUT = 10.0
# The latency run sends this share of the workload's events, one at a time.
LATENCY_SHARE = 10
# The 1kb-x50 target of the SQLite relay, which receives the same load.
SQLITE_RATIO = 0.6
MISSING_REDIS = "redis-server is not installed (Debian: apt-get install redis-server); two-node Redis run skipped"


class RedisServer(ManagedProcess):
    """redis-server on 127.0.0.1 with the shipped configuration and its files in `workdir`."""

    def __init__(self, executable: str, workdir: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        log_path = workdir / "redis.log"
        argv = [
            executable, str(REDIS_CONFIG), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(workdir), "--logfile", str(log_path), "--daemonize", "no",
        ]
        super().__init__("redis-server", argv, env, log_path)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server and wait until it replies to PING."""
        self.spawn()
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.exited() is not None:
                raise BenchError(self.describe_exit())
            if await self._answers_ping():
                return
            await asyncio.sleep(0.05)
        raise BenchError(f"redis-server did not reply to PING within {REDIS_START_TIMEOUT:.0f} s:\n"
                         + read_log_tail(self.log_path))

    async def _answers_ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            reply = await asyncio.wait_for(reader.readline(), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()
        # A server still loading its append-only file replies -LOADING.
        return reply.startswith(b"+PONG")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TwoNodes(Stack):
    """Relay node B, which serves the listeners, plus node A and the redis-server they share.

    Channels are created on node A, so their ingest URLs point at node A.
    """

    def __init__(self, bench: Bench, redis: RedisServer, node_a: Relay, node_b: Relay) -> None:
        super().__init__(bench, node_b)
        self.redis = redis
        self.node_a = node_a

    async def create_channel(self) -> Channel:
        env = self.bench.child_env(self.node_a.log_path.with_name("channel-create"))
        return await create_channel(self.bench.hookrelay, self.node_a.url, env)

    def check_running(self) -> None:
        super().check_running()
        for process in (self.redis, self.node_a):
            if process.exited() is not None:
                raise BenchError(process.describe_exit())

    def stop(self) -> None:
        stop_all(self.listeners)
        stop_all([self.node_a, self.relay])
        self.redis.stop()


@asynccontextmanager
async def open_two_nodes(bench: Bench, workload: Workload, executable: str) -> AsyncIterator[TwoNodes]:
    """Start redis-server and two relay nodes on it, and stop all of them on exit."""
    workdir = bench.new_dir(workload.name)
    redis = RedisServer(executable, workdir, bench.child_env(workdir / "redis"))
    nodes = []
    for name in ("node-a", "node-b"):
        nodes.append(Relay(
            bench.hookrelay, workdir / name, bench.child_env(workdir / name / "relay"),
            sync=None, max_body=None, extra_options=bench.serve_options, store_url=redis.url,
        ))
    pair = TwoNodes(bench, redis, *nodes)
    try:
        await redis.start()
        for node in nodes:
            await node.start()
        yield pair
    finally:
        pair.stop()


async def measure_cross_node(bench: Bench, pair: TwoNodes, workload: Workload, label: str) -> tuple[RunResult, str]:
    """Post the workload to node A while a listener on node B forwards it to the target.

    Returns the run and the CPU milliseconds per event of node A, node B and redis-server.
    """
    concurrency = bench.listener_concurrency(workload) if workload.kind != "latency" else 1
    channel = await pair.create_channel()
    listener = pair.start_listener(channel, concurrency)
    await pair.warm_up(channel, senders=workload.senders)

    ledger = bench.new_ledger()
    bodies = BodyFactory(workload.body_size, binary=workload.binary)
    monitor = start_monitor(node_a=pair.node_a.pid, node_b=pair.relay.pid, redis=pair.redis.pid, listener=listener.pid)
    try:
        async with new_client_session(workload.senders, REQUEST_TIMEOUT) as session:
            sender = Sender(session, f"{channel.url}/{workload.name}", bodies, ledger)
            async with bench.progress(f"{workload.name} {label}", ledger, workload.events):
                await drive(bench, sender, workload, workload.events, workload.senders, pair)
    finally:
        usage = monitor.finish()
    pair.stop_listeners()

    run = RunResult.from_ledger(label, ledger, concurrency=concurrency)
    # The relay columns cover both nodes: CPU summed, the larger peak.
    nodes = [usage["node_a"], usage["node_b"]]
    both = Usage(peak_rss=max(node.peak_rss for node in nodes), cpu_seconds=sum(node.cpu_seconds for node in nodes))
    run.record_usage({**usage, "relay": both})
    per_event = [_cpu_ms_per_event(usage[name], run.delivered) for name in ("node_a", "node_b", "redis")]
    return run, ", ".join(per_event)


def _cpu_ms_per_event(usage: Usage, delivered: int) -> str:
    return f"{usage.cpu_seconds * 1000 / delivered:.3f}" if delivered else "-"


async def run_redis(bench: Bench, workload: Workload) -> WorkloadResult:
    """Measure throughput and one-sender latency across two relay nodes that share Redis, against bare."""
    result = WorkloadResult(workload.name, workload.title, parameters=workload.parameters())
    executable = shutil.which("redis-server")
    if executable is None:
        result.skipped = MISSING_REDIS
        bench.log(f"[yellow]{workload.name}: {MISSING_REDIS}[/]")
        return result

    latency = dataclasses.replace(workload, kind="latency", events=max(10, workload.events // LATENCY_SHARE), senders=1)
    bare = await measure_bare(bench, workload, senders=workload.senders)
    bare_one = await measure_bare(bench, latency, senders=1)
    bare_one.label = "bare, one sender"
    async with open_two_nodes(bench, workload, executable) as pair:
        relayed, relayed_cpu = await measure_cross_node(bench, pair, workload, "hookrelay redis, A to B")
        one, one_cpu = await measure_cross_node(bench, pair, latency, "hookrelay redis, A to B, one sender")
    relayed.ratio_to_bare = ratio(relayed.throughput, bare.throughput)
    one.ratio_to_bare = ratio(one.throughput, bare_one.throughput)
    result.runs += [bare, relayed, bare_one, one]

    result.facts["CPU ms/event node A, node B, redis-server"] = relayed_cpu
    result.facts["one sender: CPU ms/event node A, node B, redis-server"] = one_cpu
    added = latency_p50(one) - latency_p50(bare_one) if one.latency_ms and bare_one.latency_ms else None
    result.facts["one sender: added p50, both hops (ms)"] = added
    result.check_at_least("throughput vs bare", relayed.ratio_to_bare, SQLITE_RATIO, "x",
                          note="the 1kb-x50 target, for comparison")
    result.check_at_most("one sender, added p50 per hop", None if added is None else added / ADDED_HOPS, 1.0, " ms",
                         note="the single-node budget")
    result.check_delivery()
    return result
