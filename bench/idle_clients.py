"""Listeners inside the load generator for the idle-listeners workload.

A `hookrelay listen` process takes about 50 MiB of RSS, so 1,000 of them do not fit on a
small machine. These clients open the relay's listener websocket with the options the real
listener uses (permessage-deflate offered, pings every 10 s) and acknowledge every event
after the target responded, so the relay serves them like real listeners. Frames are encoded and
decoded with `relay_server.protocol`, the module that docs/protocol.md names as the one
implementation of the format.

They forward only the body and the event id header: the bench checks bodies, and header
fidelity is the test suite's job.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from .loadgen import EVENT_ID_HEADER
from .processes import BenchError, Channel

try:
    from relay_client import api_client
    from relay_server import protocol
except ImportError:  # hookrelay is not installed in this environment
    api_client = protocol = None

PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
OPEN_TIMEOUT = 30.0
PING_INTERVAL = 10.0
MAX_MESSAGE = 64 * 1024 * 1024


def protocol_available() -> bool:
    """Return True when the wire protocol is documented and its module could be imported."""
    return PROTOCOL_DOC.is_file() and protocol is not None


async def create_channel_through_api(relay_url: str) -> Channel:
    """Create a channel with the call that `hookrelay channel create` makes, without starting a process."""
    created = await api_client.create_channel(relay_url, None)
    return Channel(id=created["channel"], url=created["url"].rstrip("/"), token=created["token"])


def listen_url(relay_url: str, channel: Channel) -> str:
    websocket_base = "ws" + relay_url.removeprefix("http")
    return f"{websocket_base}/api/channels/{channel.id}/listen"


class ProtocolListener:
    """One listener connection: read the welcome, then forward and acknowledge each event."""

    def __init__(self, relay_url: str, channel: Channel, session: aiohttp.ClientSession, forward_url: str) -> None:
        self.url = listen_url(relay_url, channel)
        self.channel = channel
        self.session = session
        self.forward_url = forward_url
        self.connected = asyncio.Event()
        self.websocket: websockets.ClientConnection | None = None

    async def run(self) -> None:
        async with websockets.connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.channel.token}"},
            max_size=MAX_MESSAGE,
            max_queue=None,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_INTERVAL,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=2,
        ) as websocket:
            self.websocket = websocket
            welcome = protocol.decode_text(await websocket.recv())
            if welcome["type"] != "welcome":
                raise BenchError(f"relay sent {welcome['type']!r} instead of a welcome on channel {self.channel.id}")
            self.connected.set()
            async for frame in websocket:
                if isinstance(frame, bytes):
                    result = await self._forward(protocol.decode_event(frame))
                    await websocket.send(protocol.encode_ack([result]))

    async def _forward(self, event: Any) -> Any:
        url = self.forward_url + event.target.decode("latin-1")
        started = time.perf_counter()
        try:
            async with self.session.request(
                event.method, url, data=event.body, headers={EVENT_ID_HEADER: event.id}
            ) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return protocol.DeliveryResult(event_id=event.id, outcome="failed", error=str(exc) or type(exc).__name__)
        duration_ms = (time.perf_counter() - started) * 1000
        return protocol.DeliveryResult(
            event_id=event.id, outcome="delivered", status=response.status, duration_ms=duration_ms
        )


class ProtocolListeners:
    """Many in-process listeners that share one HTTP session to the target."""

    def __init__(self, relay_url: str, forward_url: str) -> None:
        self.relay_url = relay_url
        self.forward_url = forward_url
        self.listeners: list[ProtocolListener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def connect(self, channels: list[Channel], timeout: float) -> None:
        """Connect one listener per channel and wait until every one has its welcome frame."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        for channel in channels:
            listener = ProtocolListener(self.relay_url, channel, self._session, self.forward_url)
            self.listeners.append(listener)
            self._tasks.append(asyncio.create_task(listener.run(), name=f"bench-listener-{channel.id}"))
        waiting = [asyncio.create_task(listener.connected.wait()) for listener in self.listeners]
        try:
            await self._wait_connected(waiting, timeout)
        finally:
            for task in waiting:
                task.cancel()

    async def _wait_connected(self, waiting: list[asyncio.Task[Any]], timeout: float) -> None:
        done, _ = await asyncio.wait(waiting, timeout=timeout)
        failed = [task for task in self._tasks if task.done()]
        if failed:
            error = failed[0].exception() if not failed[0].cancelled() else None
            raise BenchError(f"{len(failed)} in-process listeners ended while connecting: {error!r}")
        if len(done) < len(waiting):
            raise BenchError(f"{len(waiting) - len(done)} in-process listeners got no welcome within {timeout:.0f} s")

    async def close(self) -> None:
        """Close every websocket with 1001 (going away) and the shared HTTP session."""
        open_websockets = [listener.websocket for listener in self.listeners if listener.websocket is not None]
        await asyncio.gather(*(websocket.close(1001) for websocket in open_websockets), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
