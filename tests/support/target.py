"""A local HTTP server that records every request exactly as it arrived.

It stands for the user's application behind `hookrelay listen --forward`.
Tests can make it respond with an error status, hold its responses, or
stop it and start it again on the same port.
"""

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from .timing import MS, wait_until

SHUTDOWN_TIMEOUT = 500 * MS

EVENT_ID_HEADER = "X-Hookrelay-Event-Id"


@dataclass(frozen=True)
class CapturedRequest:
    """One request as the target received it: raw request target, header bytes in order and body bytes."""

    method: str
    raw_target: str
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    received_at: float

    @property
    def path(self) -> str:
        return self.raw_target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.raw_target.partition("?")[2]

    def header_values(self, name: str) -> list[bytes]:
        """Return every value of header `name` (case-insensitive), in arrival order."""
        lowered = name.lower().encode("ascii")
        return [value for header_name, value in self.raw_headers if header_name.lower() == lowered]

    def header(self, name: str) -> str | None:
        """Return the first value of header `name` decoded as Latin-1, or None."""
        values = self.header_values(name)
        return values[0].decode("latin-1") if values else None

    @property
    def event_id(self) -> str | None:
        return self.header(EVENT_ID_HEADER)


class CapturingTarget:
    """An aiohttp server on 127.0.0.1 that records requests and responds with 200 unless configured otherwise."""

    def __init__(self) -> None:
        self.requests: list[CapturedRequest] = []
        self.port: int | None = None
        self.response_delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._error_statuses: list[int] = []
        self._error_status_forever: int | None = None
        self._gate = asyncio.Event()
        self._gate.set()
        self._runner: web.AppRunner | None = None

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def event_ids(self) -> list[str | None]:
        return [request.event_id for request in self.requests]

    async def start(self) -> None:
        """Listen on a free port the first time and on the same port after `stop`."""
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False keeps a gzip body as the bytes that were sent.
        self._runner = web.AppRunner(
            app, auto_decompress=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port or 0, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Release stalled requests and close the server and its connections."""
        self._gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(self, status: int, count: int) -> None:
        """Respond to the next `count` requests with `status`."""
        self._error_statuses.extend([status] * count)

    def fail_always(self, status: int | None) -> None:
        """Respond to every request with `status`, or with 200 again when `status` is None."""
        self._error_status_forever = status

    def stall(self) -> None:
        """Hold every response, with the request already recorded, until `release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def wait_for_requests(self, count: int, timeout: float) -> list[CapturedRequest]:
        """Wait until at least `count` requests arrived and return all of them."""
        await wait_until(
            lambda: len(self.requests) >= count,
            timeout,
            f"{count} requests at the target (got {len(self.requests)})",
        )
        return list(self.requests)

    async def wait_for_event(self, event_id: str, timeout: float) -> CapturedRequest:
        """Wait for the first request that carries `event_id` and return it."""
        await wait_until(lambda: event_id in self.event_ids, timeout, f"event {event_id} at the target")
        return self.requests[self.event_ids.index(event_id)]

    async def wait_for_events(self, event_ids: list[str], timeout: float) -> None:
        """Wait until every id in `event_ids` arrived at least once."""

        def all_arrived() -> bool:
            return set(event_ids) <= set(self.event_ids)

        await wait_until(
            all_arrived,
            timeout,
            f"{len(event_ids)} events at the target (got {len(set(event_ids) & set(self.event_ids))})",
        )

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            CapturedRequest(
                method=request.method,
                raw_target=request.raw_path,
                raw_headers=tuple(request.raw_headers),
                body=body,
                received_at=time.monotonic(),
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._gate.wait()
            if self.response_delay:
                await asyncio.sleep(self.response_delay)
        finally:
            self.in_flight -= 1
        return web.Response(status=self._next_status(), text="target response\n")

    def _next_status(self) -> int:
        if self._error_statuses:
            return self._error_statuses.pop(0)
        return self._error_status_forever or 200
