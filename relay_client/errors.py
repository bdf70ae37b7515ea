"""Exceptions of the listener and the CLI.

Tree::

    ClientError
    ├── RelayUnreachable     the relay did not answer; the listener retries
    ├── NotARelay            a server answered, but not as a hookrelay relay does
    ├── RelayRejected        the relay answered with a refusal (bad token, bad request)
    │   ├── Unauthorized     the channel token was not accepted
    │   │   └── TokenRevoked  the relay cut off the listener: token rotated or channel deleted
    │   └── AdminUnauthorized  the admin token was missing or not accepted
    ├── TargetError          one attempt to deliver an event to the target failed
    └── UsageError           an option or config value is invalid

Texts are fragments the CLI prints after ``hookrelay: error: ``. Foreign
exceptions (aiohttp, websockets) are converted where they are caught.
"""

from __future__ import annotations


class ClientError(Exception):
    """Root of the listener's exceptions."""


class RelayUnreachable(ClientError):
    def __init__(self, relay: str, reason: str) -> None:
        super().__init__(relay, reason)
        self.relay = relay
        self.reason = reason

    def __str__(self) -> str:
        return f"relay {self.relay} is unreachable: {self.reason}"


class NotARelay(ClientError):
    """The server at ``relay`` sent a response that no hookrelay relay sends.

    ``request`` is the request line without its query (``GET /api/…``), and
    ``reason`` names the defect of the response.
    """

    def __init__(self, relay: str, request: str, reason: str) -> None:
        super().__init__(relay, request, reason)
        self.relay = relay
        self.request = request
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"{self.relay} did not answer like a hookrelay relay ({self.request}: {self.reason}); "
            "check that --relay is the base URL of a hookrelay relay"
        )


class RelayRejected(ClientError):
    def __init__(self, relay: str, status: int, message: str) -> None:
        super().__init__(relay, status, message)
        self.relay = relay
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"relay {self.relay} rejected the request: HTTP {self.status}: {self.message}"


class Unauthorized(RelayRejected):
    def __init__(self, relay: str, channel: str) -> None:
        super().__init__(relay, 401, "missing or invalid channel token")
        self.channel = channel

    def __str__(self) -> str:
        return (
            f"relay {self.relay} rejected the token for channel {self.channel} (HTTP 401); "
            "check --token, or run 'hookrelay channel create' for a new channel"
        )


class TokenRevoked(Unauthorized):
    """The relay closed the connection because the channel's token no longer opens it: rotated, or the channel deleted."""

    def __str__(self) -> str:
        return (
            f"relay {self.relay} disconnected this listener because the token of channel {self.channel} is no longer"
            " valid (rotated, or the channel was deleted); after a rotation start it again with the new token:"
            " 'hookrelay channel rotate-token' printed it and saved it on the machine where it ran, or pass it with --token"
        )


class AdminUnauthorized(RelayRejected):
    """The relay guards channel creation with an admin token and did not accept the one sent."""

    def __init__(self, relay: str, token_given: bool) -> None:
        super().__init__(relay, 401, "missing or invalid admin token")
        self.token_given = token_given

    def __str__(self) -> str:
        fix = "pass the relay's admin token with --admin-token or set HOOKRELAY_ADMIN_TOKEN"
        if self.token_given:
            return f"relay {self.relay} rejected the admin token (HTTP 401); {fix}"
        return f"relay {self.relay} needs its admin token to create channels (HTTP 401); {fix}"


class TargetError(ClientError):
    """One delivery attempt failed; ``status`` is None when no HTTP answer came."""

    def __init__(self, event_id: str, reason: str, status: int | None = None) -> None:
        super().__init__(event_id, reason, status)
        self.event_id = event_id
        self.reason = reason
        self.status = status

    def __str__(self) -> str:
        return f"target rejected event {self.event_id}: {self.reason}"


class UsageError(ClientError):
    """An invalid or missing value; ``source`` names the config file or environment variable it came from, if any."""

    def __init__(self, option: str, value: object, hint: str, source: str | None = None) -> None:
        super().__init__(option, value, hint, source)
        self.option = option
        self.value = value
        self.hint = hint
        self.source = source

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        if self.value is None:
            return f"missing {self.option}{where}: {self.hint}"
        return f"invalid {self.option} {self.value!r}{where}: {self.hint}"
