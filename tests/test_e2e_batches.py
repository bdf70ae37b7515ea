"""Batch frames: a burst of events reaches a batch-reading listener in few messages, unchanged and in order."""

from __future__ import annotations

import asyncio

import websockets

from relay_server.protocol import BATCH_TAG, EVENT_TAG, DeliveryResult, decode_events, decode_text, encode_ack
from tests.support.http import send_request
from tests.support.timing import MS

HELD = 40


async def _hold_events(channel, bodies: list[bytes]) -> None:
    for body in bodies:
        response = await send_request(channel.url, "POST", [("Content-Type", "application/octet-stream")], body)
        assert response.status == 202, response.describe()


async def _read_events(relay, channel, query: str, count: int) -> tuple[list[bytes], list]:
    """Connect as a listener with ``query``, read ``count`` events, ack them; return the raw frames and events."""
    url = relay.url.replace("http://", "ws://") + f"/api/channels/{channel.id}/listen?{query}"
    frames: list[bytes] = []
    events = []
    headers = {"Authorization": f"Bearer {channel.token}"}
    async with websockets.connect(url, additional_headers=headers, proxy=None, max_size=None) as ws:
        assert decode_text(await asyncio.wait_for(ws.recv(), 5_000 * MS))["type"] == "welcome"
        while len(events) < count:
            frame = await asyncio.wait_for(ws.recv(), 5_000 * MS)
            assert isinstance(frame, bytes), frame
            frames.append(frame)
            events += decode_events(frame)
        await ws.send(encode_ack([DeliveryResult(event.id, "delivered", 200) for event in events]))
    return frames, events


async def test_held_burst_arrives_in_batch_frames(runner, tmp_path):
    """Held events go out packed in batch frames, every body intact and in the order they were stored."""
    relay = await runner.start_relay(tmp_path / "data")
    channel = await runner.create_channel(relay.url)
    bodies = [bytes([index]) * 100 + b"\x00\xff" + str(index).encode() for index in range(HELD)]
    await _hold_events(channel, bodies)

    frames, events = await _read_events(relay, channel, "window=100&batch=1", HELD)

    assert [event.body for event in events] == bodies
    assert [event.seq for event in events] == sorted(event.seq for event in events)
    assert len({event.id for event in events}) == HELD
    assert any(frame[:1] == BATCH_TAG for frame in frames), [frame[:1] for frame in frames]
    assert len(frames) < HELD


async def test_listener_without_batch_gets_one_frame_per_event(runner, tmp_path):
    """A listener that did not ask for batches gets plain event frames only."""
    relay = await runner.start_relay(tmp_path / "data")
    channel = await runner.create_channel(relay.url)
    bodies = [b'{"n":%d}' % index for index in range(HELD)]
    await _hold_events(channel, bodies)

    frames, events = await _read_events(relay, channel, "window=100", HELD)

    assert [event.body for event in events] == bodies
    assert all(frame[:1] == EVENT_TAG for frame in frames)
    assert len(frames) == HELD


async def test_large_event_travels_alone(runner, tmp_path):
    """Events over 64 KiB leave the batch and arrive as event frames of their own, in order."""
    relay = await runner.start_relay(tmp_path / "data", "--max-body", "4MiB")
    channel = await runner.create_channel(relay.url)
    large = bytes(range(256)) * (6 * 1024)
    bodies = [b"small-1", b"small-2", large, b"small-3", b"small-4", large[: 65 * 1024]]
    await _hold_events(channel, bodies)

    frames, events = await _read_events(relay, channel, "window=100&batch=1", len(bodies))

    assert [event.body for event in events] == bodies
    assert [frame[:1] for frame in frames] == [BATCH_TAG, EVENT_TAG, BATCH_TAG, EVENT_TAG]
    assert [[event.body for event in decode_events(frame)] for frame in frames] == [
        bodies[:2], [large], bodies[3:5], [bodies[5]]
    ]
