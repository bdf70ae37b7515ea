"""History API: list, show, replay and delete a channel's events; channel settings.

Every endpoint needs the channel's token. Webhook-derived values go out as
JSON strings; the exact bytes are also given in base64 (``raw``) so a client
can replay an event byte for byte.

Live views long-poll ``GET …/events?wait=S&version=V``: when the channel's
version is still ``V`` the answer waits up to ``S`` seconds for a change.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from aiohttp import web

from relay_server import channel_security, responses
from relay_server.api import GROUP_RULE, authorize_channel, invalid_group, unauthorized, valid_group, with_channel_token
from relay_server.errors import ConfigError, EventInFlight
from relay_server.ingest import json_error
from relay_server.state import STATE, RelayState
from relay_server.store.base import DEFAULT_GROUP, EVENT_STATES, EventDetail, EventQuery, EventSummary

logger = logging.getLogger("hookrelay.server.history")

MAX_WAIT = 30.0


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def summary_json(row: EventSummary) -> dict[str, Any]:
    return {
        "id": row.id,
        "seq": row.seq,
        "method": row.method,
        "path": _text(row.target) or "/",
        "event_type": row.event_type,
        "received_at": row.received_at,
        "size": row.size,
        "state": row.state,
        "status": row.status,
        "attempts": row.attempts,
    }


def detail_json(detail: EventDetail, group: str) -> dict[str, Any]:
    event = detail.event
    outcome = next((o for o in detail.outcomes if o.group == group), None)
    body_text = None
    try:
        body_text = event.body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return {
        "id": event.id,
        "seq": event.seq,
        "channel": event.channel,
        "method": event.method,
        "path": _text(event.target) or "/",
        "event_type": event.event_type,
        "received_at": event.received_at,
        "remote": event.remote,
        "size": len(event.body),
        "state": outcome.outcome if outcome else "pending",
        "headers": [[_text(k), _text(v)] for k, v in event.headers],
        "body_text": body_text,
        "raw": {
            "target_b64": _b64(event.target),
            "headers_b64": [[_b64(k), _b64(v)] for k, v in event.headers],
            "body_b64": _b64(event.body),
        },
        "outcomes": [_plain(o) for o in detail.outcomes],
        "attempts": [_plain(a) for a in detail.attempts],
        "answer": _answer_json(detail),
    }


def _plain(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def _answer_json(detail: EventDetail) -> dict[str, Any] | None:
    answer = detail.answer
    if answer is None:
        return None
    return {
        "status": answer.status,
        "source": answer.source,
        "at": answer.at,
        "headers": [[_text(k), _text(v)] for k, v in answer.headers],
        "body_b64": _b64(answer.body),
    }


def parse_query(request: web.Request) -> EventQuery:
    """Read history filters from the query string; raises ValueError on a bad value."""
    params = request.query
    state = params.get("state")
    if state is not None and state not in EVENT_STATES:
        raise ValueError(f"state must be one of {', '.join(EVENT_STATES)}, not {state!r}")
    group = params.get("group", DEFAULT_GROUP)
    if not valid_group(group):
        raise ValueError(f"group must use {GROUP_RULE}, not {group!r}")
    return EventQuery(
        group=group,
        state=state,
        method=params.get("method", "").upper() or None,
        event_type=params.get("type") or None,
        since=_number(params, "since", float),
        until=_number(params, "until", float),
        text=params.get("q") or None,
        before=_number(params, "before", int),
        after=_number(params, "after", int),
        limit=_number(params, "limit", int) or 50,
    )


def _wait_seconds(params: Any) -> float:
    """Return the long-poll wait, capped at MAX_WAIT, or raise ValueError for one that is not a number of seconds from 0."""
    wait = _number(params, "wait", float) or 0.0
    # NaN fails every comparison, so it is caught by the negated test.
    if not wait >= 0:
        raise ValueError(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}, not {params.get('wait')!r}")
    return min(wait, MAX_WAIT)


def _number(params: Any, key: str, kind: type) -> Any:
    value = params.get(key)
    if value in (None, ""):
        return None
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{key} must be a number, not {value!r}") from None


@with_channel_token
async def list_events(request: web.Request, channel: str) -> web.Response:
    state: RelayState = request.app[STATE]
    try:
        query = parse_query(request)
        wait = _wait_seconds(request.query)
        seen = _number(request.query, "version", int)
    except ValueError as exc:
        return json_error(400, "invalid_query", str(exc))
    if wait > 0 and seen == state.hub.version(channel):
        await _wait_for_change(state, channel, wait)
        # The token may have been rotated while the request waited.
        if await authorize_channel(request) != channel:
            return unauthorized()
    # The version is taken before the read: a change that lands during the
    # read then makes the client's next long-poll return at once, instead
    # of waiting with a version that its rows do not show.
    version = state.hub.version(channel)
    rows = await state.store.list_events(channel, query)
    next_before = rows[-1].seq if len(rows) == query.limit else None
    body = {"events": [summary_json(r) for r in rows], "next_before": next_before, "version": version}
    return web.json_response(body)


async def _wait_for_change(state: RelayState, channel: str, wait: float) -> None:
    flag = state.hub.subscribe(channel, watcher=True)
    try:
        await asyncio.wait_for(flag.wait(), timeout=wait)
    except asyncio.TimeoutError:
        pass
    finally:
        state.hub.unsubscribe(channel, flag)


@with_channel_token
async def show_event(request: web.Request, channel: str) -> web.Response:
    state: RelayState = request.app[STATE]
    group = request.query.get("group", DEFAULT_GROUP)
    if not valid_group(group):
        return invalid_group(group)
    detail = await state.store.get_event(channel, request.match_info["event"])
    if detail is None:
        return _event_not_found(request)
    return web.json_response(detail_json(detail, group))


@with_channel_token
async def replay_event(request: web.Request, channel: str) -> web.Response:
    state: RelayState = request.app[STATE]
    group = request.query.get("group", DEFAULT_GROUP)
    if not valid_group(group):
        return invalid_group(group)
    event_id = request.match_info["event"]
    # A replay to a group no listener has used yet creates it, even a group
    # named by a typo, so the response reports it.
    new_group = group not in await state.store.list_groups(channel)
    try:
        replayed = await state.store.replay(channel, event_id, group)
    except EventInFlight as exc:
        logger.info("replay rejected channel=%s event_id=%s group=%s: the event is in flight", channel, event_id, group)
        return json_error(409, "event_in_flight", str(exc))
    if not replayed:
        return _event_not_found(request)
    logger.info("event replayed channel=%s event_id=%s group=%s new_group=%s", channel, event_id, group, new_group)
    state.hub.notify(channel)
    return web.json_response({"id": event_id, "group": group, "state": "pending", "new_group": new_group}, status=202)


@with_channel_token
async def delete_event(request: web.Request, channel: str) -> web.StreamResponse:
    state: RelayState = request.app[STATE]
    event_id = request.match_info["event"]
    if not await state.store.delete_event(channel, event_id):
        return _event_not_found(request)
    logger.info("event deleted channel=%s event_id=%s", channel, event_id)
    state.hub.touch(channel)
    return web.Response(status=204)


@with_channel_token
async def update_channel(request: web.Request, channel_id: str) -> web.Response:
    """Change a channel's settings; only ``response`` is settable here."""
    state: RelayState = request.app[STATE]
    try:
        patch = await request.json()
        if not isinstance(patch, dict):
            raise ValueError("the body must be a JSON object")
        channel = await state.store.get_channel(channel_id)
        assert channel is not None
        settings = dict(channel.settings)
        if "response" in patch:
            current = responses.ResponseSettings.of(settings).to_dict()
            settings["response"] = responses.validate({**current, **patch["response"]}).to_dict()
        settings = channel_security.apply_patch(settings, patch)
    except (ValueError, ConfigError) as exc:
        return json_error(400, "invalid_settings", str(exc))
    updated = await state.store.update_settings(channel_id, settings)
    logger.info("channel updated channel=%s response_mode=%s", channel_id, settings.get("response", {}).get("mode", "async"))
    answer = {"channel": channel_id, "response": responses.ResponseSettings.of(updated.settings).to_dict()}
    return web.json_response(answer | channel_security.public_view(updated.settings))


def _event_not_found(request: web.Request) -> web.Response:
    return json_error(404, "event_not_found", f"no event {request.match_info['event']} in channel {request.match_info['channel']}")


def add_routes(app: web.Application) -> None:
    app.router.add_patch("/api/channels/{channel}", update_channel)
    app.router.add_get("/api/channels/{channel}/events", list_events)
    app.router.add_get("/api/channels/{channel}/events/{event}", show_event)
    app.router.add_post("/api/channels/{channel}/events/{event}/replay", replay_event)
    app.router.add_delete("/api/channels/{channel}/events/{event}", delete_event)
