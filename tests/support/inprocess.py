"""The relay application served in the test's own process, for tests that need a hand on its store or hub."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from relay_server import ids
from relay_server.app import build_app
from relay_server.config import ServerConfig
from relay_server.state import RelayState
from relay_server.store import ChannelRecord, SQLiteStore


@contextlib.asynccontextmanager
async def serving(store: SQLiteStore, data_dir: Path) -> AsyncIterator[tuple[str, RelayState]]:
    """Open ``store``, serve the relay application over it on 127.0.0.1, and yield the base URL and the state."""
    await store.open()
    state = RelayState(config=ServerConfig(data_dir=data_dir), store=store)
    runner = web.AppRunner(build_app(state))
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", state
    finally:
        await runner.cleanup()
        await store.close()


async def add_channel(store: SQLiteStore, channel_id: str) -> str:
    """Store a channel with a new token and return the token."""
    token = ids.new_token()
    await store.create_channel(ChannelRecord(channel_id, ids.hash_token(token), time.time()))
    return token
