"""Build the relay application and run it until a signal stops it.

Shutdown recipe: stop accepting connections, close listener websockets with
1001 (going away), give in-flight requests ``shutdown_grace`` seconds, close
the store after its queued writes commit, and log "stopped".
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from relay_server import api, history
from relay_server.config import ServerConfig
from relay_server.ingest import INGEST_PREFIX, handle_ingest
from relay_server.protocol import CLOSE_GOING_AWAY
from relay_server.state import RelayState
from relay_server.store.base import EventStore
from relay_server.store.sqlite import SQLiteStore

logger = logging.getLogger("hookrelay.server")

PRUNE_INTERVAL = 60.0


def build_app(state: RelayState) -> web.Application:
    # Bodies are read by ingest itself, bounded by max_body; this bound is for
    # any other handler that reads a body.
    app = web.Application(client_max_size=state.config.max_body)
    app["state"] = state
    api.add_routes(app)
    history.add_routes(app)
    app.router.add_route("*", INGEST_PREFIX + "{channel}", handle_ingest)
    app.router.add_route("*", INGEST_PREFIX + "{channel}/{tail:.*}", handle_ingest)
    app.on_shutdown.append(_close_sessions)
    return app


def open_store(config: ServerConfig) -> EventStore:
    return SQLiteStore(config.data_dir, synchronous=config.synchronous, retention=config.retention)


async def serve(config: ServerConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run the relay until ``stop`` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    store = open_store(config)
    await store.open()
    state = RelayState(config=config, store=store)
    runner = web.AppRunner(
        build_app(state),
        auto_decompress=False,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=config.shutdown_grace,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        await site.start()
        state.base_url = config.base_url(_bound_port(runner))
        logger.info("relay listening on %s data_dir=%s", _listen_url(config, runner), config.data_dir)
        _install_signal_handlers(stop)
        pruner = asyncio.create_task(_prune_forever(store), name="hookrelay-prune")
        await stop.wait()
        pruner.cancel()
        logger.info("relay stopping: closing %d listener sessions", len(state.sessions))
    finally:
        await runner.cleanup()
        await store.close()
        logger.info("relay stopped")


async def _close_sessions(app: web.Application) -> None:
    state: RelayState = app["state"]
    for ws in list(state.sessions):
        await ws.close(code=CLOSE_GOING_AWAY, message=b"relay shutting down")


async def _prune_forever(store: EventStore) -> None:
    while True:
        try:
            await store.prune(time.time())
        except Exception as exc:  # noqa: BLE001 - retention must keep running
            logger.error("retention pass failed: %s", exc)
        await asyncio.sleep(PRUNE_INTERVAL)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass


def _bound_port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


def _listen_url(config: ServerConfig, runner: web.AppRunner) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{_bound_port(runner)}"
