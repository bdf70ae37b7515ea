"""Exceptions of the listener and the CLI.

Tree::

    ClientError
    ├── RelayUnreachable     the relay did not answer; the listener retries
    ├── RelayRejected        the relay answered with a refusal (bad token, bad request)
    │   └── Unauthorized     the channel token was not accepted
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
    def __init__(self, option: str, value: object, hint: str) -> None:
        super().__init__(option, value, hint)
        self.option = option
        self.value = value
        self.hint = hint

    def __str__(self) -> str:
        if self.value is None:
            return f"missing {self.option}: {self.hint}"
        return f"invalid {self.option} {self.value!r}: {self.hint}"
