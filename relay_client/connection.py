"""The listener's connection to the relay: receive events, forward, ack, reconnect.

One websocket carries everything. A reader task takes every frame off the
socket as soon as it arrives, so keepalive pings get their pongs even while the
target is slow; the relay's in-flight window bounds what can pile up.
Workers forward events in arrival order (one worker keeps the channel's
order, ``concurrency`` workers trade order for speed) and each result is
acknowledged on the connection that is open when it finishes.

A disconnect does not cut a running delivery short: the workers of a lost
connection finish the event in hand and then stop, and its result goes to
the connection open by then. Across reconnects the listener remembers
deliveries it started: when the relay redelivers an event whose delivery
is still running or already finished here, the listener waits for that
result or reuses it instead of forwarding the event a second time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Protocol

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from relay_client import __version__
from relay_client.config import ListenerConfig
from relay_client.errors import RelayRejected, RelayUnreachable, TokenRevoked, Unauthorized
from relay_client.forwarder import MAX_SENDER_ANSWER, Attempt, Forwarder
from relay_server.protocol import (
    CLOSE_UNAUTHORIZED,
    AttemptReport,
    DeliveryResult,
    Event,
    ProtocolError,
    TargetResponse,
    Welcome,
    decode_events,
    decode_text,
    dump_json,
    encode_ack,
    encode_attempt,
    encode_response,
)

# Items the acker sends, in the order deliveries produce them.
Outgoing = DeliveryResult | AttemptReport | TargetResponse

logger = logging.getLogger("hookrelay.client")

# Finished results, kept to acknowledge redeliveries without a second forward.
# As many as a listener can have in flight (4 x --concurrency, at most 1,024),
# which is what a reconnect can bring back at once.
REMEMBERED_RESULTS = 1024


class ListenerEvents(Protocol):
    """Listener events, for the code that renders them (the console, a test)."""

    def connected(self, welcome: Welcome) -> None: ...

    def disconnected(self, reason: str, retry_in: float) -> None: ...

    def finished(self, event: Event, result: DeliveryResult) -> None: ...

    def acknowledged_again(self, event: Event) -> None: ...


class Listener:
    """Keeps one websocket to the relay open and drives deliveries over it."""

    def __init__(self, config: ListenerConfig, forwarder: Forwarder, events: ListenerEvents) -> None:
        self.config = config
        self.forwarder = forwarder
        self.events = events
        # Deliveries in progress, each with the future of its result.
        self._running: dict[str, asyncio.Future[DeliveryResult]] = {}
        self._finished: OrderedDict[str, DeliveryResult] = OrderedDict()
        # Workers of every connection, the lost ones finishing their last event.
        self._workers: set[asyncio.Task[None]] = set()
        # Connection attempts so far; picks the relay among several.
        self._attempt = 0
        # Reports of running deliveries go to the connection open at the time.
        self._outbox: asyncio.Queue[Outgoing] | None = None
        # The largest response body for a waiting sender that the relay takes (its --max-body).
        self._max_sender_response = MAX_SENDER_ANSWER

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve and reconnect with backoff until ``stop`` is set.

        Raises :class:`Unauthorized` or :class:`RelayRejected` when the relay
        refuses the channel, because retrying cannot fix that.
        """
        failures = 0
        while not stop.is_set():
            try:
                await self._serve_once(stop)
                failures = 0
                reason = "the relay closed the connection"
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_UNAUTHORIZED:
                    # A reconnect with the same token can only be refused.
                    await self._finish_running()
                    raise TokenRevoked(self.config.relay_at(self._attempt), self.config.channel) from None
                reason = str(exc) or type(exc).__name__
            except (RelayUnreachable, ProtocolError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            if stop.is_set():
                break
            # With several relay nodes, the next attempt goes to the next one.
            self._attempt += 1
            failures += 1
            delay = self.config.reconnect.delay(failures)
            logger.info("connection lost channel=%s: %s; reconnecting in %.1f s", self.config.channel, reason, delay)
            self.events.disconnected(reason, delay)
            await _sleep_unless(stop, delay)
        await self._finish_running()

    async def _serve_once(self, stop: asyncio.Event) -> None:
        try:
            ws = await self._connect()
        except Exception as exc:
            raise convert_handshake_error(exc, self.config.relay_at(self._attempt), self.config.channel) from exc
        async with ws:
            welcome = await self._read_welcome(ws)
            logger.info("connected channel=%s group=%s consumer=%s backlog=%d", welcome.channel, welcome.group, welcome.consumer, welcome.backlog)
            self.events.connected(welcome)
            self._max_sender_response = min(MAX_SENDER_ANSWER, welcome.max_body)
            await self._pump(ws, stop)

    def _connect(self) -> websockets.connect:
        return websockets.connect(
            self.config.listen_url(self._attempt),
            additional_headers={"Authorization": f"Bearer {self.config.token}"},
            user_agent_header=f"hookrelay/{__version__}",
            max_size=self.config.max_message,
            # Read without limit: the relay's window bounds the frames in flight.
            max_queue=None,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            # On a silent link no close frame comes back; waiting long for it
            # would only delay the reconnect.
            close_timeout=2,
            open_timeout=15,
            # Event bodies are often compressed already or small; deflate per
            # frame costs more CPU than loopback or LAN bandwidth saves.
            compression=None,
        )

    async def _read_welcome(self, ws: websockets.ClientConnection) -> Welcome:
        try:
            frame = await asyncio.wait_for(ws.recv(), timeout=15)
        except asyncio.TimeoutError:
            raise RelayUnreachable(self.config.relay_at(self._attempt), "no welcome frame within 15 s") from None
        if not isinstance(frame, str):
            raise ProtocolError("expected a welcome text frame, got a binary frame")
        message = decode_text(frame)
        if message["type"] == "error":
            raise ProtocolError(f"relay error before welcome: {message.get('message')}")
        if message["type"] != "welcome":
            raise ProtocolError(f"expected a welcome frame, got {message['type']!r}")
        return message["welcome"]

    async def _pump(self, ws: websockets.ClientConnection, stop: asyncio.Event) -> None:
        """Run reader, workers and acker until the connection or ``stop`` ends them."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        acks: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._outbox = acks
        workers = [self._start_worker(queue, i) for i in range(self.config.concurrency)]
        tasks = [
            asyncio.create_task(self._read_frames(ws, queue), name="hookrelay-reader"),
            asyncio.create_task(self._send_acks(ws, acks), name="hookrelay-acker"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="hookrelay-stop")
        try:
            done, _ = await asyncio.wait([*tasks, *workers, stopper], return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                _retire_workers(queue, len(workers))
                await self._drain_on_stop(acks, ws)
        finally:
            self._outbox = None
            _retire_workers(queue, len(workers))
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()

    def _start_worker(self, queue: asyncio.Queue[Event | None], index: int) -> asyncio.Task[None]:
        worker = asyncio.create_task(self._work(queue), name=f"hookrelay-worker-{index}")
        self._workers.add(worker)
        worker.add_done_callback(self._worker_done)
        return worker

    def _worker_done(self, worker: asyncio.Task[None]) -> None:
        self._workers.discard(worker)
        if not worker.cancelled() and worker.exception() is not None and self._outbox is None:
            # No connection waits on a worker of a lost one, so log its failure here.
            logger.error("delivery worker failed after its connection closed: %r", worker.exception())

    async def _read_frames(self, ws: websockets.ClientConnection, queue: asyncio.Queue[Event | None]) -> None:
        async for frame in ws:
            if isinstance(frame, bytes):
                for event in decode_events(frame):
                    queue.put_nowait(event)
                continue
            message = decode_text(frame)
            if message["type"] == "error":
                logger.error("relay reported an error: %s", message.get("message"))

    async def _work(self, queue: asyncio.Queue[Event | None]) -> None:
        """Deliver events one at a time until the queue hands out None."""
        while (event := await queue.get()) is not None:
            result = await self._result_for(event)
            if self._outbox is not None:
                self._outbox.put_nowait(result)

    async def _result_for(self, event: Event) -> DeliveryResult:
        """Forward ``event`` once, or reuse a delivery of it that is running or finished."""
        # A replay arrives with delivery_count 1 and is forwarded again. Only a
        # redelivery of an unacknowledged event reuses the remembered result.
        if event.id in self._finished and event.delivery_count > 1:
            logger.info("redelivery acknowledged from the remembered result event_id=%s", event.id)
            self.events.acknowledged_again(event)
            return self._finished[event.id]
        running = self._running.get(event.id)
        if running is not None:
            # A worker of the lost connection is still delivering it, so wait for that result.
            return await asyncio.shield(running)
        return await self._deliver(event)

    async def _deliver(self, event: Event) -> DeliveryResult:
        finished: asyncio.Future[DeliveryResult] = asyncio.get_running_loop().create_future()
        self._running[event.id] = finished
        try:
            result = await self._forward(event)
        except BaseException as exc:
            _fail_quietly(finished, exc)
            raise
        finally:
            self._running.pop(event.id, None)
        finished.set_result(result)
        self._finished[event.id] = result
        if len(self._finished) > REMEMBERED_RESULTS:
            self._finished.popitem(last=False)
        self.events.finished(event, result)
        return result

    async def _forward(self, event: Event) -> DeliveryResult:
        answered = False

        def report(attempt: Attempt) -> None:
            nonlocal answered
            outbox = self._outbox
            if outbox is None:
                return
            if attempt.response is not None and not answered:
                # The first answer is the one a waiting sender gets.
                answered = True
                outbox.put_nowait(self._fitting_response(attempt.response))
            if not attempt.final:
                outbox.put_nowait(AttemptReport(event.id, attempt.attempt, attempt.status, attempt.duration_ms, attempt.error))

        return await self.forwarder.deliver(event, on_attempt=report)

    def _fitting_response(self, response: TargetResponse) -> TargetResponse:
        """Return ``response``, or a 502 for the sender when its body is larger than the relay takes.

        A cut body would reach the sender as if complete, and a frame over the
        relay's limit would end the connection.
        """
        if len(response.body) <= self._max_sender_response:
            return response
        logger.warning(
            "response too large for the waiting sender event_id=%s status=%d limit_bytes=%d; the sender gets 502",
            response.event_id,
            response.status,
            self._max_sender_response,
        )
        message = f"the local server's response is larger than the relay's limit of {self._max_sender_response} bytes"
        body = dump_json({"error": "response_too_large", "message": message})
        return TargetResponse(response.event_id, 502, ((b"Content-Type", b"application/json"),), body)

    async def _send_acks(self, ws: websockets.ClientConnection, acks: asyncio.Queue[Outgoing]) -> None:
        """Send reports in order, batching results that finish together into one ack."""
        while True:
            pending = [await acks.get()]
            # One turn of the loop lets deliveries that finish together join this ack.
            await asyncio.sleep(0)
            while not acks.empty():
                pending.append(acks.get_nowait())
            await _send_outgoing(ws, pending)

    async def _drain_on_stop(self, acks: asyncio.Queue[Outgoing], ws: websockets.ClientConnection) -> None:
        """On stop, let running deliveries finish within the grace period and ack them."""
        running = list(self._running.values())
        if running:
            logger.info("stopping: waiting up to %.0f s for %d deliveries", self.config.shutdown_grace, len(running))
            await asyncio.wait(running, timeout=self.config.shutdown_grace)
        await asyncio.sleep(0)
        pending = []
        while not acks.empty():
            pending.append(acks.get_nowait())
        try:
            await _send_outgoing(ws, pending)
        except ConnectionClosed:
            pass
        await ws.close(code=1001, reason="listener stopping")

    async def _finish_running(self) -> None:
        """Cancel the deliveries still running when the listener stops for good."""
        workers = list(self._workers)
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)


def _retire_workers(queue: asyncio.Queue[Event | None], count: int) -> None:
    """Drop the events no worker started, which the relay sends again, and stop each worker after its current event."""
    while not queue.empty():
        queue.get_nowait()
    for _ in range(count):
        queue.put_nowait(None)


def _fail_quietly(finished: asyncio.Future[DeliveryResult], exc: BaseException) -> None:
    """Pass a failed delivery's error to a redelivery waiting for it, and mark the error as retrieved."""
    if isinstance(exc, asyncio.CancelledError):
        finished.cancel()
        return
    finished.set_exception(exc)
    finished.exception()


async def _send_outgoing(ws: websockets.ClientConnection, pending: list[Outgoing]) -> None:
    """Send answers and attempt reports as they come and results as one ack per run."""
    results: list[DeliveryResult] = []
    for item in pending:
        if isinstance(item, DeliveryResult):
            results.append(item)
            continue
        if results:
            await ws.send(encode_ack(results))
            results = []
        await ws.send(encode_response(item) if isinstance(item, TargetResponse) else encode_attempt(item))
    if results:
        await ws.send(encode_ack(results))


def convert_handshake_error(exc: Exception, relay: str, channel: str) -> Exception:
    """Turn a websockets handshake failure into the listener's own exception."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 401:
            return Unauthorized(relay, channel)
        if status in (400, 403, 404):
            body = exc.response.body.decode("utf-8", "replace")[:200] if exc.response.body else ""
            return RelayRejected(relay, status, body or "the relay refused the connection")
        if status in (408, 425, 429) or status >= 500:
            # A proxy or relay node that is starting, overloaded or away: try again.
            return RelayUnreachable(relay, f"HTTP {status} during the websocket handshake")
        # Any other status comes from a server that is not a relay, so a retry cannot help.
        return RelayRejected(relay, status, "the server answered without a websocket upgrade; check that --relay is a hookrelay relay")
    if isinstance(exc, InvalidHandshake):
        return RelayUnreachable(relay, f"websocket handshake failed: {exc}")
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return RelayUnreachable(relay, str(exc) or type(exc).__name__)
    return exc


async def _sleep_unless(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except asyncio.TimeoutError:
        pass

