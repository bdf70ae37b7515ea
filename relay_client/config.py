"""The listener's configuration and the forward target.

``ListenerConfig`` is built once by the CLI from options, ``HOOKRELAY_*``
environment variables and the config file, then handed to the connection
and the forwarder, which never read the environment themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from relay_client.errors import UsageError
from relay_client.retry import Backoff, RetryPolicy

if TYPE_CHECKING:
    from relay_client.filters import EventFilter
    from relay_client.routing import Router

DEFAULT_RELAY = "http://127.0.0.1:8787"
MIB = 1024 * 1024
# The largest websocket message a listener accepts, and so the largest body
# a relay may take: an event's frame adds its headers and fields to the body.
MAX_MESSAGE = 64 * MIB
MAX_BODY = MAX_MESSAGE - MIB

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})(?P<path>/.*)?$")


@dataclass(frozen=True, slots=True)
class Target:
    """Where the listener forwards: an origin and a base path.

    The origin is fixed at start-up; nothing in an event can change the host
    the listener connects to.
    """

    scheme: str
    host: str
    port: int
    base_path: str = ""
    # Derived from the fields above once, because the listener needs them for every event.
    authority: str = field(init=False, repr=False, compare=False)
    origin: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        default = 443 if self.scheme == "https" else 80
        authority = self.host if self.port == default else f"{self.host}:{self.port}"
        object.__setattr__(self, "authority", authority)
        object.__setattr__(self, "origin", f"{self.scheme}://{authority}")

    def path_for(self, tail: str) -> str:
        """Join the base path and an event's raw tail (``/a?b``, ``?b`` or empty)."""
        return self.base_path.rstrip("/") + tail if tail.startswith("/") else (self.base_path or "/") + tail

    def url_for(self, tail: str) -> str:
        return self.origin + self.path_for(tail)

    def redacted(self) -> str:
        return self.origin + (self.base_path or "")

    def __str__(self) -> str:
        return self.redacted()


def parse_target(value: str) -> Target:
    """Parse ``8000``, ``localhost:8000``, ``localhost:8000/hooks`` or a full URL."""
    text = value.strip()
    if text.isdigit():
        return Target("http", "localhost", _port(text, value))
    match = _HOST_PORT.match(text)
    if match:
        return Target("http", match["host"], _port(match["port"], value), match["path"] or "")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("--forward", value, "use a port (8000), host:port with an optional path (localhost:8000/hooks) or a URL (http://localhost:8000/hooks)")
    if parts.username or parts.password:
        raise UsageError("--forward", parts.hostname, "credentials in the target URL are not supported")
    if parts.query or parts.fragment:
        raise UsageError("--forward", value, "the target URL takes no query or fragment; events bring their own query")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(parts.scheme, host, port, parts.path)


def _port(text: str, value: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise UsageError("--forward", value, "the port must be between 1 and 65535")
    return port


def split_relays(value: str) -> list[str]:
    """Split a comma-separated list of relay URLs, dropping empty items and trailing slashes."""
    relays = [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
    if not relays:
        raise UsageError("--relay", value, "give a relay URL such as https://relay.example.com")
    return relays


def check_http_url(option: str, value: str, example: str) -> None:
    """Raise :class:`UsageError` unless ``value`` is an http:// or https:// URL with a host and a valid port."""
    text = value.strip()
    if not text:
        raise UsageError(option, value, f"give a URL such as {example}")
    if "://" not in text:
        raise UsageError(option, value, f"the URL needs http:// or https:// in front, such as http://{text}")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise UsageError(option, value, f"use an http:// or https:// URL, not {parts.scheme}://")
    if not parts.hostname:
        raise UsageError(option, value, f"the URL has no host; use a URL such as {example}")
    port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
    try:
        port = parts.port
    except ValueError:
        problem = "is out of range" if port_text.isdigit() else "is not a number"
        raise UsageError(option, value, f"port {port_text} {problem}; use a port from 1 to 65535") from None
    if port == 0:
        raise UsageError(option, value, "port 0 is out of range; use a port from 1 to 65535")
    if parts.query or parts.fragment:
        raise UsageError(option, value, "the URL takes no query or fragment")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """Everything ``hookrelay listen`` needs, grouped by concern."""

    # Relay and channel.
    relay: str
    channel: str
    token: str
    group: str = "default"

    # Target and forwarding.
    target: Target = field(default_factory=lambda: Target("http", "localhost", 8000))
    host_header: str | None = None
    timeout: float = 30.0
    concurrency: int = 1
    retry: RetryPolicy = RetryPolicy()

    # Noise control: which events go out, to which target (None: all of
    # them, to ``target``), and the Standard Webhooks secret that re-signs
    # them (None: forwarded with the sender's headers only).
    event_filter: EventFilter | None = None
    router: Router | None = None
    sign_secret: str | None = field(default=None, repr=False)

    # Connection: the listener pings every ``ping_interval`` seconds and
    # declares the link dead after ``ping_timeout`` more without a pong.
    window: int = 64
    ping_interval: float = 10.0
    ping_timeout: float = 10.0
    reconnect: Backoff = Backoff(base=0.5, cap=30.0)
    max_message: int = MAX_MESSAGE

    # Shutdown: time granted to deliveries in progress on Ctrl-C.
    shutdown_grace: float = 5.0

    @property
    def relays(self) -> list[str]:
        """The relay URLs: ``relay`` may list several relay nodes, separated by commas."""
        return split_relays(self.relay)

    def relay_at(self, attempt: int) -> str:
        """Return the relay for connection ``attempt``: each reconnect tries the next one."""
        relays = self.relays
        return relays[attempt % len(relays)]

    def listen_url(self, attempt: int = 0) -> str:
        parts = urlsplit(self.relay_at(attempt))
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/api/channels/{self.channel}/listen?group={self.group}&window={self.window}&batch=1"
