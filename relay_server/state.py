"""Config, store, hub and live sessions, shared by the relay's request handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from relay_server.config import ServerConfig
from relay_server.hub import Hub
from relay_server.limits import IngressGuard
from relay_server.store.base import EventStore


@dataclass
class RelayState:
    """Shared by every handler of one relay process.

    ``base_url`` is known only after the listening socket is bound, because
    port 0 picks a free port.
    """

    config: ServerConfig
    store: EventStore
    hub: Hub = field(default_factory=Hub)
    base_url: str = ""
    # Open listener websockets, each with the channel it serves.
    sessions: dict[web.WebSocketResponse, str] = field(default_factory=dict)
    guard: IngressGuard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = IngressGuard(self.config.limits)

    def ingest_url(self, channel: str) -> str:
        return f"{self.base_url}/h/{channel}"


# The application key under which handlers find the state: ``request.app[STATE]``.
STATE = web.AppKey("state", RelayState)
