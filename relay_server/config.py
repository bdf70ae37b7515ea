"""The relay's configuration: one frozen object built once from the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from relay_server.limits import IngressLimits
from relay_server.store.base import Retention

MIB = 1024 * 1024

DEFAULT_PORT = 8787
DEFAULT_MAX_BODY = 25 * MIB
DEFAULT_WINDOW = 512
DEFAULT_HEARTBEAT = 10.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``hookrelay serve`` needs, grouped by concern.

    ``public_url`` is the base senders use (``https://relay.example.com``);
    None means the address the relay listens on. ``admin_token`` None means
    anyone who can reach the relay may create channels.
    """

    # Network.
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    public_url: str | None = None

    # Storage and durability.
    data_dir: Path = Path(".hookrelay")
    synchronous: str = "NORMAL"
    # None keeps events in SQLite under data_dir; ``redis://host:port/db``
    # shares them with every relay node on that Redis.
    store_url: str | None = None
    # Redis only: a node that has not refreshed its listeners for this many
    # seconds is taken for dead, and other nodes redeliver their events.
    node_timeout: float = 15.0
    retention: Retention = field(default_factory=Retention)

    # Limits.
    max_body: int = DEFAULT_MAX_BODY
    window: int = DEFAULT_WINDOW
    limits: IngressLimits = field(default_factory=IngressLimits)

    # Listener connections: the relay pings every ``heartbeat`` seconds and
    # drops a listener that does not answer within half of it.
    heartbeat: float = DEFAULT_HEARTBEAT

    # Access.
    admin_token: str | None = None

    # Shutdown: time granted to in-flight requests before they are cancelled.
    shutdown_grace: float = 5.0

    def base_url(self, bound_port: int) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{bound_port}"
