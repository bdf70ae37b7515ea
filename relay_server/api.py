"""The relay's HTTP API: channels, the listener websocket and health.

Reading a channel needs its token, sent as ``Authorization: Bearer <token>``
(never in the URL, which ends up in logs). A wrong token and an unknown
channel get the same 401, so an answer tells nothing about which channels
exist. When the relay has an admin token, creating channels needs it.
"""

from __future__ import annotations

import functools
import hmac
import logging
import re
import time

from collections.abc import Awaitable, Callable

from aiohttp import web

from relay_server.channel_security import public_view
from relay_server.errors import StoreError
from relay_server.ids import hash_token, new_channel_id, new_token, token_matches
from relay_server.ingest import json_error
from relay_server.protocol import CLOSE_INTERNAL_ERROR, CLOSE_UNAUTHORIZED
from relay_server.responses import ResponseSettings
from relay_server.session import ListenerSession
from relay_server.state import STATE, RelayState
from relay_server.store.base import DEFAULT_GROUP, ChannelRecord

logger = logging.getLogger("hookrelay.server.api")

ChannelHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]

# A consumer group name, matched in full: "$" alone would also take a name with a trailing newline.
_GROUP_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
GROUP_RULE = "1-64 letters, digits and _ . : -"
# The relay's frames add a JSON header to each body; this leaves room for it.
_FRAME_OVERHEAD = 1024 * 1024


def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def unauthorized() -> web.Response:
    return json_error(401, "unauthorized", "missing or invalid channel token", **{"WWW-Authenticate": "Bearer"})


async def authorize_channel(request: web.Request) -> str | None:
    """Return the channel id when the request carries its token, else None."""
    state: RelayState = request.app[STATE]
    channel_id = request.match_info["channel"]
    channel = await state.store.get_channel(channel_id)
    if not token_matches(bearer_token(request), channel.token_hash if channel else None):
        logger.info("unauthorized request channel=%s remote=%s", channel_id, request.remote)
        return None
    return channel_id


def with_channel_token(handler: ChannelHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler so it runs only for requests that carry the channel's token.

    The wrapped handler receives the channel id; any other request gets the
    same 401, whether the token is wrong or the channel does not exist.
    """

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        channel_id = await authorize_channel(request)
        if channel_id is None:
            return unauthorized()
        return await handler(request, channel_id)

    return checked


async def create_channel(request: web.Request) -> web.Response:
    state: RelayState = request.app[STATE]
    admin = state.config.admin_token
    if admin is not None and not hmac.compare_digest((bearer_token(request) or "").encode(), admin.encode()):
        return json_error(401, "unauthorized", "this relay needs its admin token to create channels")

    token = new_token()
    channel = ChannelRecord(id=new_channel_id(), token_hash=hash_token(token), created_at=time.time())
    await state.store.create_channel(channel)
    logger.info("channel created channel=%s remote=%s", channel.id, request.remote)
    body = {"channel": channel.id, "url": state.ingest_url(channel.id), "token": token, "group": DEFAULT_GROUP}
    return web.json_response(body, status=201)


@with_channel_token
async def show_channel(request: web.Request, channel_id: str) -> web.Response:
    state: RelayState = request.app[STATE]
    channel = await state.store.get_channel(channel_id)
    assert channel is not None
    groups = {group: await state.store.backlog(channel_id, group) for group in await state.store.list_groups(channel_id)}
    body = {
        "channel": channel_id,
        "url": state.ingest_url(channel_id),
        "created_at": channel.created_at,
        "response": ResponseSettings.of(channel.settings).to_dict(),
        "backlog": groups[DEFAULT_GROUP] if DEFAULT_GROUP in groups else await state.store.backlog(channel_id, DEFAULT_GROUP),
        "groups": groups,
        "listeners": await state.hub.count_listeners(channel_id),
        **public_view(channel.settings),
        "counts": state.guard.counters.of_channel(channel_id),
    }
    return web.json_response(body)


@with_channel_token
async def rotate_token(request: web.Request, channel_id: str) -> web.Response:
    state: RelayState = request.app[STATE]
    token = new_token()
    await state.store.set_token_hash(channel_id, hash_token(token))
    closed = await close_listeners(state, channel_id)
    logger.info("channel token rotated channel=%s listeners_closed=%d", channel_id, closed)
    return web.json_response({"channel": channel_id, "token": token})


async def close_listeners(state: RelayState, channel_id: str) -> int:
    """Close this node's listener connections of a channel whose token changed; returns how many.

    Listeners on other relay nodes notice within TOKEN_CHECK_INTERVAL (see
    relay_server.session). A listener reconnecting with the old token gets 401.
    """
    connections = [ws for ws, channel in state.sessions.items() if channel == channel_id]
    for ws in connections:
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"channel token rotated; reconnect with the new token")
    return len(connections)


def valid_group(name: str) -> bool:
    """Tell whether ``name`` is a valid consumer group name (see GROUP_RULE)."""
    return _GROUP_NAME.fullmatch(name) is not None


def invalid_group(name: str) -> web.Response:
    return json_error(400, "invalid_group", f"group names use {GROUP_RULE}, not {name!r}")


@with_channel_token
async def listen(request: web.Request, channel_id: str) -> web.StreamResponse:
    group = request.query.get("group", DEFAULT_GROUP)
    if not valid_group(group):
        return invalid_group(group)

    state: RelayState = request.app[STATE]
    window = _window(request, state.config.window)
    ws = web.WebSocketResponse(
        heartbeat=state.config.heartbeat,
        max_msg_size=state.config.max_body + _FRAME_OVERHEAD,
        autoping=True,
        # Bodies are stored and sent as they came: compressing them again per
        # frame cost most of the relay's CPU on 100 KB events and ~90 KiB of
        # zlib state per idle listener (scripts/bench, 2 cores).
        compress=False,
    )
    await ws.prepare(request)
    state.sessions[ws] = channel_id
    try:
        batch = request.query.get("batch") == "1"
        token_hash = hash_token(bearer_token(request) or "")
        await ListenerSession(state, ws, channel_id, group, window, batch=batch, token_hash=token_hash).run()
    except StoreError as exc:
        # The upgrade is done, so no 503 can be sent: close and let the
        # listener reconnect, perhaps to a node that reaches the store.
        logger.error("listener session ended channel=%s: %s", channel_id, exc)
        await ws.close(code=CLOSE_INTERNAL_ERROR, message=b"relay store unavailable; reconnect")
    finally:
        state.sessions.pop(ws, None)
    return ws


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    """Answer 200 while the relay can store events and reach other nodes, else 503 with the reason."""
    state: RelayState = request.app[STATE]
    try:
        await state.store.ping()
    except StoreError as exc:
        return web.json_response({"status": "not ready", "reason": str(exc)}, status=503)
    if not state.hub.ready:
        return web.json_response({"status": "not ready", "reason": "not subscribed to wake-ups from other nodes"}, status=503)
    return web.json_response({"status": "ready"})


def _window(request: web.Request, ceiling: int) -> int:
    """Use the listener's requested window, capped by the relay's."""
    try:
        requested = int(request.query.get("window", ceiling))
    except ValueError:
        return ceiling
    return max(1, min(requested, ceiling))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/channels", create_channel)
    app.router.add_get("/api/channels/{channel}", show_channel)
    app.router.add_post("/api/channels/{channel}/rotate-token", rotate_token)
    app.router.add_get("/api/channels/{channel}/listen", listen)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", readiness)
