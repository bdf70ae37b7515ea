"""When a listener session claims: after news of events, and after an ack only while its window is full.

The relay runs in the test's process on a real SQLite store that records
each claim, and the test speaks the listener protocol over a real
websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import websockets

from relay_server.protocol import DeliveryResult, decode_events, decode_text, encode_ack
from relay_server.state import RelayState
from relay_server.store import SQLiteStore
from tests.support.http import send_request
from tests.support.inprocess import add_channel, serving
from tests.support.timing import MS, wait_until

RECEIVE_TIMEOUT = 5_000 * MS


class ClaimRecordingStore(SQLiteStore):
    """A real store that records how many events each claim requested and found."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.claims: list[tuple[int, int]] = []

    async def claim(self, channel, group, consumer, count):
        events = await super().claim(channel, group, consumer, count)
        self.claims.append((count, len(events)))
        return events


@contextlib.asynccontextmanager
async def listening(tmp_path, window: int) -> AsyncIterator[tuple[ClaimRecordingStore, RelayState, str, websockets.ClientConnection]]:
    """Serve a relay with one channel and connect a listener with ``window``; yield the store, state, ingest URL and websocket."""
    store = ClaimRecordingStore(tmp_path)
    async with serving(store, tmp_path) as (base, state):
        token = await add_channel(store, "ch_claims")
        url = base.replace("http://", "ws://") + f"/api/channels/ch_claims/listen?window={window}&batch=1"
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(url, additional_headers=headers, proxy=None) as ws:
            assert decode_text(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT))["type"] == "welcome"
            yield store, state, f"{base}/h/ch_claims", ws


async def post(ingest_url: str, body: bytes) -> None:
    response = await send_request(ingest_url, "POST", [("Content-Type", "application/json")], body)
    assert response.status == 202, response.describe()


async def receive(ws, count: int) -> list:
    """Read event frames until ``count`` events arrived."""
    events = []
    while len(events) < count:
        events += decode_events(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT))
    assert len(events) == count, [event.id for event in events]
    return events


async def ack(ws, events) -> None:
    await ws.send(encode_ack([DeliveryResult(event.id, "delivered", 200) for event in events]))


async def test_no_claim_after_short_claim(tmp_path):
    """A claim that finds fewer events than it requested is not followed by another, nor by one per ack."""
    async with listening(tmp_path, window=8) as (store, state, ingest_url, ws):
        await wait_until(lambda: len(store.claims) == 1, RECEIVE_TIMEOUT, "the first claim")
        for index in range(4):
            await post(ingest_url, b'{"n": %d}' % index)
            events = await receive(ws, 1)
            version = state.hub.version("ch_claims")
            await ack(ws, events)
            # The session touches the channel once the ack is stored.
            await wait_until(lambda: state.hub.version("ch_claims") > version, RECEIVE_TIMEOUT, "the stored ack")

        # The pump handles its wake-ups in order, so a claim for the last
        # event comes after any claim that an ack caused.
        await post(ingest_url, b'{"n": "last"}')
        await receive(ws, 1)

    assert [found for _, found in store.claims] == [0, 1, 1, 1, 1, 1], store.claims


async def test_ack_resumes_a_full_window(tmp_path):
    """With more events stored than the window takes, each ack lets the next event out."""
    async with listening(tmp_path, window=2) as (store, _state, ingest_url, ws):
        for index in range(5):
            await post(ingest_url, b'{"n": %d}' % index)
        first = await receive(ws, 2)
        await ack(ws, first[:1])
        third = await receive(ws, 1)
        await ack(ws, first[1:] + third)
        rest = await receive(ws, 2)

    assert [event.body for event in first + third + rest] == [b'{"n": %d}' % index for index in range(5)]
    assert max(asked for asked, _ in store.claims) <= 2, store.claims
