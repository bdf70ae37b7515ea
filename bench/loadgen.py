"""Load generator: webhook bodies, the senders, and the local target that checks each delivery.

One process plays both ends. Senders post bodies that each carry a unique bench id. The
target, an aiohttp server on 127.0.0.1, finds that id in every body it receives. It
compares the body's SHA-256 with the one recorded at send time and stores the arrival
time. Send and arrival times come from the same `time.perf_counter()` clock, so a
latency is a plain difference.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

EVENT_ID_HEADER = "X-Hookrelay-Event-Id"
TARGET_PATH = "/hook"
TARGET_MAX_BODY = 64 * 1024 * 1024

# A body starts with its bench id so that the target can read it without parsing JSON.
# JSON bodies start with {"bench_id":"<id>" and binary bodies with BENCH <id> and a newline.
_BENCH_ID = re.compile(rb'\A(?:\{"bench_id":"|BENCH )([A-Za-z0-9_.-]{1,64})')


class BodyFactory:
    """Webhook bodies of one exact size, each unique through the bench id it starts with.

    JSON bodies are a valid JSON object padded with printable ASCII. Binary bodies are
    random bytes (NUL and bytes that are invalid UTF-8 included), so a relay that decodes
    or re-encodes them shows up as a body mismatch.
    """

    def __init__(self, size: int, *, binary: bool = False) -> None:
        self.size = size
        self.binary = binary
        self.content_type = "application/octet-stream" if binary else "application/json"
        if binary:
            self._padding = os.urandom(size)
        else:
            alphabet = (string.ascii_letters + string.digits).encode()
            self._padding = bytes(alphabet[byte % len(alphabet)] for byte in os.urandom(size))

    def make(self, bench_id: str) -> bytes:
        """Build the body for `bench_id`, exactly `size` bytes long when the size allows."""
        if self.binary:
            head = b"BENCH " + bench_id.encode() + b"\n"
            return head + self._padding[: max(0, self.size - len(head))]

        head = b'{"bench_id":"' + bench_id.encode() + b'","type":"bench.event","padding":"'
        tail = b'"}'
        return head + self._padding[: max(0, self.size - len(head) - len(tail))] + tail


@dataclass
class Ledger:
    """Events of one measured run: what was sent, what the relay accepted, what arrived.

    Events are keyed by bench id. An arrival whose body has the right id but a different
    SHA-256 counts as a mismatch and not as a delivery.
    """

    tag: str
    digests: dict[str, bytes] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    rejected: int = 0
    send_errors: int = 0
    first_error: str | None = None
    last_response_at: float = 0.0
    arrived_at: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0
    mismatches: int = 0
    event_ids: set[str] = field(default_factory=set)
    repeated_event_ids: int = 0
    _missing: int = 0
    _waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)

    def bench_id(self, number: int) -> str:
        return f"{self.tag}-{number:07d}"

    def record_send(self, bench_id: str, body: bytes) -> None:
        self.digests[bench_id] = hashlib.sha256(body).digest()
        self.sent_at[bench_id] = time.perf_counter()

    def record_response(self, bench_id: str, status: int) -> None:
        self.last_response_at = time.perf_counter()
        if 200 <= status < 300:
            self.accepted.add(bench_id)
            if bench_id not in self.arrived_at:
                self._missing += 1
        else:
            self.rejected += 1
            self.first_error = self.first_error or f"HTTP {status} for {bench_id}"

    def record_send_error(self, bench_id: str, error: BaseException) -> None:
        self.last_response_at = time.perf_counter()
        self.send_errors += 1
        self.first_error = self.first_error or f"{type(error).__name__} for {bench_id}: {error}"

    def record_arrival(self, bench_id: str, body: bytes, event_id: str | None, at: float) -> None:
        if event_id is not None:
            if event_id in self.event_ids:
                self.repeated_event_ids += 1
            self.event_ids.add(event_id)

        if hashlib.sha256(body).digest() != self.digests.get(bench_id):
            self.mismatches += 1
        elif bench_id in self.arrived_at:
            self.duplicates += 1
        else:
            self.arrived_at[bench_id] = at
            if bench_id in self.accepted:
                self._missing -= 1
            waiter = self._waiters.pop(bench_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(at)

    async def wait_arrival(self, bench_id: str, timeout: float) -> bool:
        """Wait until `bench_id` arrived intact, and return False if it did not within `timeout` seconds."""
        if bench_id in self.arrived_at:
            return True
        waiter = self._waiters.setdefault(bench_id, asyncio.get_running_loop().create_future())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return False
        return True

    def missing(self) -> int:
        """Count accepted events that have not arrived intact yet."""
        return self._missing


class Target:
    """Local HTTP server that plays the user's app and checks every delivery.

    It returns 200 with an empty body at once, so the target adds as little time as it can.
    """

    def __init__(self) -> None:
        self.ledgers: dict[str, Ledger] = {}
        self.strays = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{TARGET_PATH}"

    async def start(self) -> None:
        app = web.Application(client_max_size=TARGET_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Keep-alive connections from idle listeners stay open for the whole run.
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=3600)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def open_ledger(self, tag: str) -> Ledger:
        ledger = Ledger(tag)
        self.ledgers[tag] = ledger
        return ledger

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.perf_counter()
        self._record(body, request.headers.get(EVENT_ID_HEADER), at)
        return web.Response(status=200)

    def _record(self, body: bytes, event_id: str | None, at: float) -> None:
        match = _BENCH_ID.match(body)
        bench_id = match.group(1).decode() if match else ""
        ledger = self.ledgers.get(bench_id.rpartition("-")[0])
        if ledger is None:
            # A body without a known bench id is garbled or belongs to no open run.
            self.strays += 1
            return
        ledger.record_arrival(bench_id, body, event_id, at)


@dataclass
class Sender:
    """Client that posts bodies from a factory to one URL and records each send and response in a ledger."""

    session: aiohttp.ClientSession
    url: str
    bodies: BodyFactory
    ledger: Ledger

    async def send(self, number: int) -> str:
        bench_id = self.ledger.bench_id(number)
        body = self.bodies.make(bench_id)
        headers = {"Content-Type": self.bodies.content_type}
        self.ledger.record_send(bench_id, body)
        try:
            async with self.session.post(self.url, data=body, headers=headers) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.ledger.record_send_error(bench_id, exc)
            return bench_id
        self.ledger.record_response(bench_id, response.status)
        return bench_id

    async def send_many(self, count: int, concurrency: int) -> None:
        """Post `count` events from `concurrency` senders that each wait for their response."""
        numbers = iter(range(count))

        async def run_one_sender() -> None:
            for number in numbers:
                await self.send(number)

        await asyncio.gather(*(run_one_sender() for _ in range(min(concurrency, count))))

    async def send_one_at_a_time(self, count: int, *, per_event_timeout: float, total_timeout: float) -> None:
        """Post `count` events, each only after the previous one arrived or its wait timed out.

        Waiting stops after `total_timeout` seconds in all. The remaining events are then
        sent back to back, so a relay that delivers nothing cannot stall the bench.
        """
        deadline = time.monotonic() + total_timeout
        for number in range(count):
            await self.send_and_wait(number, min(per_event_timeout, deadline - time.monotonic()))

    async def send_and_wait(self, number: int, timeout: float) -> None:
        bench_id = await self.send(number)
        if bench_id in self.ledger.accepted and timeout > 0:
            await self.ledger.wait_arrival(bench_id, timeout)


async def wait_for_delivery(
    ledger: Ledger,
    *,
    stall_timeout: float,
    max_wait: float,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Wait until every accepted event arrived, no event arrived for `stall_timeout` s, or `max_wait` s passed.

    `on_tick` runs every 50 ms and may raise to end the wait early.
    """
    started = time.monotonic()
    last_progress = started
    arrived = len(ledger.arrived_at)
    while ledger.missing() > 0:
        now = time.monotonic()
        if now - last_progress > stall_timeout or now - started > max_wait:
            return
        await asyncio.sleep(0.05)
        if len(ledger.arrived_at) != arrived:
            arrived = len(ledger.arrived_at)
            last_progress = time.monotonic()
        if on_tick is not None:
            on_tick()


def new_client_session(concurrency: int, request_timeout: float) -> aiohttp.ClientSession:
    """Create the senders' session: one pooled connection per sender and no cookies."""
    connector = aiohttp.TCPConnector(limit=max(concurrency, 1), limit_per_host=max(concurrency, 1))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=request_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
