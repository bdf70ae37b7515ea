"""Filter and route each event, then hand it to the forwarder of its target.

The dispatcher has the forwarder's ``deliver`` signature, so the
connection drives it the same way. An event that a filter rejects, or
that no ``--forward`` rule matches, is not sent anywhere: its result is
``skipped`` with the reason, and the relay keeps it visible in history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

from relay_client.config import ListenerConfig, Target
from relay_client.filters import EventFilter
from relay_client.forwarder import Attempt, Forwarder
from relay_client.resign import StandardWebhooksSigner
from relay_client.routing import Route, Router
from relay_server.protocol import DeliveryResult, Event

logger = logging.getLogger("hookrelay.client.dispatch")


class Dispatcher:
    """Skips filtered events and forwards the rest to the target their route names."""

    def __init__(self, event_filter: EventFilter, router: Router, forwarders: dict[Target, Forwarder]) -> None:
        self.event_filter = event_filter
        self.router = router
        self.forwarders = forwarders

    async def deliver(self, event: Event, on_attempt: Callable[[Attempt], None] | None = None) -> DeliveryResult:
        reason = self.event_filter.rejection(event)
        route = None
        if reason is None:
            route = self.router.resolve(event)
            if route is None:
                reason = "no --forward rule matches and there is no default target"
        if route is None:
            logger.info("event skipped event_id=%s channel=%s event_type=%s: %s", event.id, event.channel, event.event_type, reason)
            return DeliveryResult(event.id, "skipped", None, 0, 0.0, reason)
        forwarded = event if route.tail == event.target else dataclasses.replace(event, target=route.tail)
        return await self.forwarders[route.target].deliver(forwarded, on_attempt=on_attempt)

    def route_of(self, event: Event) -> Route | None:
        return self.router.resolve(event)


@contextlib.asynccontextmanager
async def open_dispatcher(config: ListenerConfig, on_attempt: Callable[[Attempt], None]) -> AsyncIterator[Dispatcher]:
    """Open one forwarder per target of ``config`` and yield the dispatcher over them."""
    router = config.router or Router(default=config.target)
    sign = StandardWebhooksSigner(config.sign_secret).sign if config.sign_secret else None
    async with contextlib.AsyncExitStack() as stack:
        forwarders: dict[Target, Forwarder] = {}
        for target in router.targets:
            forwarder = Forwarder(dataclasses.replace(config, target=target), on_attempt=on_attempt, sign=sign)
            forwarders[target] = await stack.enter_async_context(forwarder)
        yield Dispatcher(config.event_filter or EventFilter(), router, forwarders)
