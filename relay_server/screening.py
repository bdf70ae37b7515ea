"""What ingest checks before it stores a request: rate, signature, redelivery, event type.

Ingest calls these in order:

1. :func:`admit_channel` once the channel is found: the channel's token
   bucket, 429 when it is empty;
2. :func:`screen` once the body is read: the channel's signature check,
   which in ``reject`` mode responds 401 to anything not ``valid`` and stores
   nothing; the de-duplication key; the event type;
3. :func:`duplicate_answer` when the store reports a redelivery.

A request whose signature check failed gets no de-duplication key. Without
that rule, a forged request carrying a genuine delivery id it had guessed
would make the relay drop the genuine delivery as a duplicate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay_server import dedupe
from relay_server.protocol import TargetResponse
from relay_server.responses import target_response
from relay_server.channel_security import verify_config
from relay_server.errors import ConfigError, DuplicateEvent
from relay_server.event_types import detect_event_type, lazy_payload, lowered_headers
from relay_server.limits import json_rejection
from relay_server.state import RelayState
from relay_server.store.base import ChannelRecord
from relay_server.verify import Verdict, verify

logger = logging.getLogger("hookrelay.server.ingest")

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Screened:
    """The outcome of :func:`screen`: a rejection, or the fields to store with the event."""

    rejection: web.Response | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def admit_channel(state: RelayState, channel: str) -> web.Response | None:
    return state.guard.admit_channel(channel)


def screen(state: RelayState, channel: ChannelRecord, headers: Headers, body: bytes, now: float) -> Screened:
    """Check the request against the channel's settings; returns a rejection or the event's extra fields."""
    verdict = _verdict(channel, headers, body, now)
    if verdict is not None and not verdict.valid:
        state.guard.counters.count(f"signature_{verdict.result}", channel.id)
        if _rejects(channel):
            logger.info("ingest rejected channel=%s signature=%s", channel.id, verdict.header_value())
            message = f"signature verification failed: {verdict.scheme} signature is {verdict.result}"
            return Screened(rejection=json_rejection(401, "signature_invalid", message))

    window = dedupe.window_of(channel.settings)
    trusted = verdict is None or verdict.valid
    # De-duplication and detection share one lower-cased header map and one parse of the body.
    lowered = lowered_headers(headers)
    payload = lazy_payload(headers, body, lowered=lowered)
    key = dedupe.dedupe_key(headers, body, payload=payload, lowered=lowered) if window > 0 and trusted else None
    source = channel.settings.get("event_type")
    fields = {
        "event_type": detect_event_type(headers, body, source, payload=payload, lowered=lowered),
        "verification": verdict.header_value() if verdict is not None else None,
        "dedupe_key": key,
        "dedupe_window": window if key else 0.0,
    }
    return Screened(fields=fields)


async def duplicate_answer(state: RelayState, duplicate: DuplicateEvent, headers: Headers) -> web.Response:
    """Respond to a provider's redelivery without storing or delivering it again.

    When the first request of a sync channel got the target's response, the
    redelivery gets the same response, so a provider that retried because
    the first answer was slow (Slack) sees its request succeed.
    """
    state.guard.counters.count("duplicates", duplicate.channel)
    note = dedupe.retry_note(headers)
    logger.info(
        "ingest deduplicated channel=%s key=%s event_id=%s retry=%s", duplicate.channel, duplicate.key, duplicate.event_id, note
    )
    detail = await state.store.get_event(duplicate.channel, duplicate.event_id)
    if detail is not None and detail.answer is not None and detail.answer.source == "target":
        answer = detail.answer
        response = target_response(TargetResponse(duplicate.event_id, answer.status, answer.headers, answer.body))
        response.headers["X-Hookrelay-Duplicate"] = note or "true"
        return response
    body: dict[str, object] = {"id": duplicate.event_id, "duplicate": True}
    if note is not None:
        body["retry"] = note
    return web.json_response(body, status=200, headers={"X-Hookrelay-Event-Id": duplicate.event_id})


def _verdict(channel: ChannelRecord, headers: Headers, body: bytes, now: float) -> Verdict | None:
    try:
        config = verify_config(channel.settings)
    except ConfigError as exc:
        # Settings are validated when set, so this is a damaged database row.
        logger.error("signature check skipped channel=%s: stored setting is invalid: %s", channel.id, exc)
        return None
    return None if config is None else verify(config, headers, body, now)


def _rejects(channel: ChannelRecord) -> bool:
    return (channel.settings.get("verify") or {}).get("mode") == "reject"
