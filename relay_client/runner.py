"""Run the long-lived commands: the listener and the relay server.

Signals: the first SIGINT or SIGTERM starts a clean stop (deliveries in
progress get their grace period, the websocket closes with 1001); a second
one stops at once. ``run_until_stopped`` reports which signal ended the run
so the CLI can exit 130 after Ctrl-C and 0 after SIGTERM.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from relay_client import api_client
from relay_client.config import ListenerConfig
from relay_client.connection import Listener
from relay_client.console import ListenerConsole
from relay_client.dispatch import open_dispatcher
from relay_client.errors import UsageError
from relay_client.settings import ChannelBook, SavedChannel

logger = logging.getLogger("hookrelay.client")

T = TypeVar("T")


async def resolve_channel(relay: str, channel: str | None, token: str | None, admin_token: str | None, book: ChannelBook) -> tuple[SavedChannel, bool]:
    """Find the channel to listen on: given, remembered, or newly created and remembered.

    Returns the channel and whether it was created now.
    """
    if channel and token:
        known = book.find(relay, channel)
        return SavedChannel(relay, channel, token, known.url if known else ""), False
    if channel:
        known = book.find(relay, channel)
        if known is None:
            raise UsageError(
                "--token",
                None,
                f"no token is remembered for channel {channel} on relay {relay}; pass --token,"
                " or --relay with the relay the channel was created on",
            )
        return known, False
    remembered = book.default_for(relay)
    if remembered is not None:
        return remembered, False
    created = await api_client.create_channel(relay, admin_token)
    saved = SavedChannel(relay.rstrip("/"), created["channel"], created["token"], created["url"])
    book.save(saved)
    logger.info("channel created channel=%s relay=%s", saved.channel, relay)
    return saved, True


async def listen(config: ListenerConfig, console: ListenerConsole, stop: asyncio.Event) -> None:
    async with open_dispatcher(config, on_attempt=console.attempt) as dispatcher:
        await Listener(config, dispatcher, console).run(stop)


def run_until_stopped(main: Callable[[asyncio.Event], Awaitable[None]]) -> int | None:
    """Run ``main(stop)`` on a new event loop; returns the signal that stopped it, if any."""
    received: list[int] = []

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal(signum: int) -> None:
            if received:
                # A second signal: stop waiting for the grace period.
                assert task is not None
                task.cancel()
            received.append(signum)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await main(stop)
        except asyncio.CancelledError:
            if not received:
                raise

    run_with_fastest_loop(runner())
    return received[0] if received else None


def run_with_fastest_loop(main: Awaitable[T]) -> T:
    """Run ``main`` on uvloop where it is installed, else on the default loop.

    uvloop lowers the CPU cost per event of both the relay and the listener.
    The objects made at start-up (modules, the app, Rich) live as long as the
    process, so they are frozen out of garbage collection: a full collection
    of the listener scanned them for about 14 ms, during which no event moved.
    """
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    gc.freeze()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
