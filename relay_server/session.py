"""One listener's websocket session: hand out events, take acknowledgements.

A session is a consumer of one consumer group. It keeps at most ``window``
events in flight (sent, not acknowledged), so a listener draining a large
backlog receives a steady stream instead of the whole backlog at once. When
the websocket closes for any reason, the events still in flight go back to
the group and the next claim redelivers them with the same ids.

Events claimed together go out as one ``batch`` frame when the listener
asked for batches, because a websocket message per event cost the relay a
system call per event under load.

A session lasts only as long as the token it opened with: when the
channel's token changes, the session closes with 4401. The node that
rotates the token closes its sessions at once; every session also checks
the token every TOKEN_CHECK_INTERVAL seconds, which covers other nodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time

from aiohttp import WSMsgType, web

from relay_server.errors import StoreError
from relay_server.protocol import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNAUTHORIZED,
    AttemptReport,
    Event,
    ProtocolError,
    Welcome,
    decode_response,
    decode_text,
    encode_batch,
    encode_error,
    encode_event,
    encode_welcome,
)
from relay_server.state import RelayState

logger = logging.getLogger("hookrelay.server.session")

# Events read from the store per claim: bounds the bodies held in memory at
# once, whatever the window.
CLAIM_LIMIT = 64
# A batch frame grows up to about this many bytes.
BATCH_BYTES = 1024 * 1024
# Larger event frames go alone: for them, copying into a batch costs more
# than the message it saves.
PACK_LIMIT = 64 * 1024
# Seconds between checks that the channel still has the token the session
# opened with.
TOKEN_CHECK_INTERVAL = 5.0


class ListenerSession:
    """Moves events from the store to one websocket and acks back."""

    def __init__(
        self,
        state: RelayState,
        ws: web.WebSocketResponse,
        channel: str,
        group: str,
        window: int,
        *,
        token_hash: bytes,
        batch: bool = False,
    ) -> None:
        self.state = state
        self.ws = ws
        self.channel = channel
        self.group = group
        self.window = window
        self.batch = batch
        # The hash of the token the listener connected with.
        self.token_hash = token_hash
        self.consumer = f"{group}-{secrets.token_hex(6)}"
        self.in_flight: set[str] = set()
        # Whether the last claim found fewer events than it requested. Then
        # only the hub's news of an append or a release can give the next
        # claim anything, and an ack, which only makes room, does not wake
        # the pump.
        self.drained = False
        self.wakeup = state.hub.subscribe(channel)

    async def run(self) -> None:
        """Serve the session until the websocket closes, then release what is in flight."""
        logger.info("listener connected channel=%s group=%s consumer=%s", self.channel, self.group, self.consumer)
        try:
            await self._send_welcome()
            tasks = [
                asyncio.create_task(self._pump(), name=f"pump-{self.consumer}"),
                asyncio.create_task(self._receive(), name=f"receive-{self.consumer}"),
                asyncio.create_task(self._check_token(), name=f"token-{self.consumer}"),
            ]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await self._close_after_failure(*tasks)
        finally:
            await self._release()

    async def _close_after_failure(self, *tasks: asyncio.Task[None]) -> None:
        """Log a failed pump or receive loop and close with 1011, so the listener reconnects."""
        failures = [task.exception() for task in tasks if not task.cancelled() and task.exception() is not None]
        if not failures:
            return
        for failure in failures:
            logger.error("session failed consumer=%s: %r", self.consumer, failure, exc_info=failure)
        await self.ws.close(code=CLOSE_INTERNAL_ERROR, message=b"relay error; reconnect")

    async def _send_welcome(self) -> None:
        backlog = await self.state.store.backlog(self.channel, self.group)
        welcome = Welcome(
            channel=self.channel,
            group=self.group,
            consumer=self.consumer,
            window=self.window,
            max_body=self.state.config.max_body,
            backlog=backlog,
            heartbeat=self.state.config.heartbeat,
            extra={"url": self.state.ingest_url(self.channel)},
        )
        await self.ws.send_str(encode_welcome(welcome))

    async def _pump(self) -> None:
        """Claim and send events while the window has room and the store has events.

        A claim that finds fewer events than it requested shows that the
        store has nothing more for this group, so the pump then waits for the
        hub instead of claiming again. Under load, such a second claim would
        come after almost every claim and find nothing.
        """
        while not self.ws.closed:
            # Clear before claiming: a notify that lands during the claim
            # must wake the next wait, not be lost.
            self.wakeup.clear()
            room = min(self.window - len(self.in_flight), CLAIM_LIMIT)
            if room <= 0:
                # An ack wakes the pump: the last claim filled the window.
                await self.wakeup.wait()
                continue
            events = await self.state.store.claim(self.channel, self.group, self.consumer, room)
            self.drained = len(events) < room
            await self._send_frames(self._frames_of(events))
            if self.drained:
                await self.wakeup.wait()

    def _frames_of(self, events: list[Event]) -> list[bytes]:
        """Encode claimed events and count them in flight."""
        frames = []
        for event in events:
            self.in_flight.add(event.id)
            if event.respond_until is not None and time.time() < event.respond_until:
                # A sender still waits for the target's response to this event.
                event = dataclasses.replace(event, respond=True)
            frames.append(encode_event(event))
        return frames

    async def _send_frames(self, frames: list[bytes]) -> None:
        """Send event frames in order, the small ones packed into batch frames when the listener takes them."""
        if not self.batch:
            for frame in frames:
                await self.ws.send_bytes(frame)
            return
        packed: list[bytes] = []
        size = 0
        for frame in frames:
            alone = len(frame) > PACK_LIMIT
            if packed and (alone or size + len(frame) > BATCH_BYTES):
                await self._send_packed(packed)
                packed, size = [], 0
            if alone:
                await self.ws.send_bytes(frame)
            else:
                packed.append(frame)
                size += len(frame)
        if packed:
            await self._send_packed(packed)

    async def _send_packed(self, frames: list[bytes]) -> None:
        await self.ws.send_bytes(frames[0] if len(frames) == 1 else encode_batch(frames))

    async def _check_token(self) -> None:
        """Close the session once the channel no longer has the token it opened with."""
        while not self.ws.closed:
            await asyncio.sleep(TOKEN_CHECK_INTERVAL)
            try:
                channel = await self.state.store.get_channel(self.channel)
            except StoreError as exc:
                logger.warning("token check failed consumer=%s: %s", self.consumer, exc)
                continue
            if channel is None or channel.token_hash != self.token_hash:
                logger.info("listener token no longer valid channel=%s consumer=%s", self.channel, self.consumer)
                await self.ws.close(code=CLOSE_UNAUTHORIZED, message=b"channel token rotated; reconnect with the new token")
                return

    async def _receive(self) -> None:
        async for message in self.ws:
            if message.type == WSMsgType.TEXT:
                await self._handle_text(message.data)
            elif message.type == WSMsgType.BINARY:
                await self._handle_binary(message.data)
            elif message.type == WSMsgType.ERROR:
                logger.warning("listener connection error consumer=%s: %s", self.consumer, self.ws.exception())

    async def _handle_binary(self, frame: bytes) -> None:
        try:
            response = decode_response(frame)
        except ProtocolError as exc:
            await self._protocol_error(str(exc))
            return
        if not self.state.hub.deliver_response(response):
            logger.info("target answer arrived after the sender stopped waiting event_id=%s", response.event_id)

    async def _handle_text(self, text: str) -> None:
        try:
            message = decode_text(text)
        except ProtocolError as exc:
            await self._protocol_error(str(exc))
            return
        if message["type"] == "attempt":
            await self._record_attempt(message["report"])
            return
        if message["type"] != "ack":
            return
        results = message["results"]
        try:
            await self.state.store.ack(self.channel, self.group, results)
        except StoreError as exc:
            # The events stay pending and come back after a reconnect.
            logger.error("ack not stored consumer=%s events=%d: %s", self.consumer, len(results), exc)
            return
        for result in results:
            self.in_flight.discard(result.event_id)
            logger.debug("event acked channel=%s event_id=%s outcome=%s", self.channel, result.event_id, result.outcome)
        if not self.drained:
            self.wakeup.set()
        self.state.hub.touch(self.channel)

    async def _record_attempt(self, report: AttemptReport) -> None:
        try:
            await self.state.store.record_attempt(self.channel, self.group, report)
        except StoreError as exc:
            logger.error("attempt not stored consumer=%s event_id=%s: %s", self.consumer, report.event_id, exc)
            return
        self.state.hub.touch(self.channel)

    async def _protocol_error(self, reason: str) -> None:
        logger.warning("protocol error consumer=%s: %s", self.consumer, reason)
        await self.ws.send_str(encode_error("protocol_error", reason))
        await self.ws.close(code=CLOSE_PROTOCOL_ERROR, message=b"protocol error")

    async def _release(self) -> None:
        self.state.hub.unsubscribe(self.channel, self.wakeup)
        try:
            released = await self.state.store.release(self.channel, self.group, self.consumer)
        except StoreError as exc:
            logger.error("release failed consumer=%s: %s", self.consumer, exc)
            return
        logger.info(
            "listener disconnected channel=%s group=%s consumer=%s released=%d",
            self.channel,
            self.group,
            self.consumer,
            released,
        )
        if released:
            # Another listener of the group may be waiting for work.
            self.state.hub.notify(self.channel)
