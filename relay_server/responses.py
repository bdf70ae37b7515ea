"""Responses to senders of sync channels: the target's real response, or a fallback.

A channel in ``sync`` mode holds the sender's request open while its event
travels to a connected listener, then responds with the local server's
status, headers (hop-by-hop removed) and body. Providers that verify an
endpoint with a challenge (Slack ``url_verification``, Meta
``hub.challenge``, Zoom, Microsoft Graph, Dropbox) need this. Without a
connected listener, or when ``timeout`` passes first, the sender gets the
``fallback`` status and the event is held and delivered as usual, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from relay_server.protocol import TargetResponse
from relay_server.state import RelayState
from relay_server.store.base import SenderAnswer

logger = logging.getLogger("hookrelay.server.responses")

MODES = ("async", "sync")
FALLBACK_STATUSES = (202, 503, 504)

# Not copied from the target's response: hop-by-hop headers (RFC 9110 §7.6.1)
# and the framing, which aiohttp writes for the body it sends.
_DROPPED = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)


@dataclass(frozen=True, slots=True)
class ResponseSettings:
    """A channel's response mode, stored under ``settings["response"]``."""

    mode: str = "async"
    timeout: float = 5.0
    fallback: int = 202

    @classmethod
    def of(cls, settings: dict[str, Any]) -> ResponseSettings:
        """Read the response mode from a channel's settings, or the defaults when it has none."""
        raw = settings.get("response")
        if not raw:
            # Most channels have no response setting, so they share one frozen instance.
            return _DEFAULT_SETTINGS
        return cls(
            mode=raw.get("mode", "async"),
            timeout=float(raw.get("timeout", 5.0)),
            fallback=int(raw.get("fallback", 202)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "timeout": self.timeout, "fallback": self.fallback}


_DEFAULT_SETTINGS = ResponseSettings()


def validate(raw: dict[str, Any]) -> ResponseSettings:
    """Check settings sent by a client; raises ValueError naming the bad field."""
    settings = ResponseSettings.of({"response": raw})
    if settings.mode not in MODES:
        raise ValueError(f"response mode must be one of {', '.join(MODES)}, not {settings.mode!r}")
    if not 0.1 <= settings.timeout <= 60:
        raise ValueError(f"response timeout must be between 0.1 and 60 seconds, not {settings.timeout}")
    if settings.fallback not in FALLBACK_STATUSES:
        raise ValueError(f"fallback status must be one of {FALLBACK_STATUSES}, not {settings.fallback}")
    return settings


async def answer_sender(
    state: RelayState,
    channel: str,
    event_id: str,
    waiting: asyncio.Future[TargetResponse] | None,
    settings: ResponseSettings,
) -> web.Response:
    """Wait for the target's answer to ``event_id`` and build the sender's response."""
    try:
        if waiting is None:
            return await _fall_back(state, channel, event_id, settings, "no listener connected")
        try:
            response = await asyncio.wait_for(waiting, timeout=settings.timeout)
        except asyncio.TimeoutError:
            return await _fall_back(state, channel, event_id, settings, f"no answer within {settings.timeout:g} s")
    finally:
        state.hub.forget_response(event_id)
    await _record(state, channel, event_id, SenderAnswer(response.status, response.headers, response.body, "target", time.time()))
    return target_response(response)


def target_response(response: TargetResponse) -> web.Response:
    """Build the sender's response from the target's: status, end-to-end headers and body."""
    answer = web.Response(status=response.status, body=response.body)
    # Drop the default Content-Type aiohttp would add: the target's own
    # headers, or none, are what the sender must see.
    answer.headers.popall("Content-Type", None)
    length = None
    for name, value in response.headers:
        text_name = name.decode("latin-1")
        lowered = text_name.lower()
        if lowered == "content-length":
            length = value
        if lowered in _DROPPED:
            continue
        # NOTE: aiohttp writes header values as UTF-8, so a value that is not
        # valid UTF-8 reaches the sender with U+FFFD in place of those bytes.
        answer.headers.add(text_name, value.decode("utf-8", "replace"))
    if not response.body and length is not None:
        # The response to a HEAD request (or a 304) states the length of a body it does not carry.
        answer.headers["Content-Length"] = length.decode("latin-1").strip()
    answer.headers["X-Hookrelay-Event-Id"] = response.event_id
    return answer


async def _fall_back(state: RelayState, channel: str, event_id: str, settings: ResponseSettings, reason: str) -> web.Response:
    logger.info("sync response fell back channel=%s event_id=%s status=%d: %s", channel, event_id, settings.fallback, reason)
    body = {"id": event_id, "held": True, "reason": reason}
    answer = web.json_response(body, status=settings.fallback, headers={"X-Hookrelay-Event-Id": event_id})
    if settings.fallback != 202:
        answer.headers["Retry-After"] = "5"
    await _record(state, channel, event_id, SenderAnswer(settings.fallback, (), answer.body, "fallback", time.time()))
    return answer


async def _record(state: RelayState, channel: str, event_id: str, answer: SenderAnswer) -> None:
    try:
        await state.store.record_answer(channel, event_id, answer)
    except Exception as exc:  # noqa: BLE001 - the sender's answer matters more than its history
        logger.error("response to the sender not stored channel=%s event_id=%s: %s", channel, event_id, exc)
