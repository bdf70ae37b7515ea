"""Ingest: accept any request on a channel URL and store it unchanged.

The request is kept exactly as it arrived: the method, the raw request target
below the channel (path tail and query, never decoded), the header list as
bytes with order, spelling and repeats, and the body bytes. Gzip bodies stay
compressed because the app runs with ``auto_decompress=False``.

The sender gets ``202`` with the event id only after the store committed
the event, so a crash right after the response loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Handler

from relay_server.errors import ChannelFull, DuplicateEvent, StoreError
from relay_server.ids import new_event_id
from relay_server.protocol import dump_json
from relay_server.responses import ResponseSettings, answer_sender
from relay_server.screening import admit_channel, duplicate_answer, screen
from relay_server.state import STATE, RelayState
from relay_server.store.base import NewEvent

logger = logging.getLogger("hookrelay.server.ingest")

INGEST_PREFIX = "/h/"


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """Build an error response as JSON; the ingest URL never returns HTML."""
    return web.json_response({"error": code, "message": message}, status=status, headers=headers or None)


def split_target(raw_path: str) -> tuple[str, bytes]:
    """Split ``/h/<channel><tail>`` into the channel id and the raw tail bytes.

    The tail keeps the sender's bytes: ``/a%2Fb?x=1`` stays as written. aiohttp
    decodes the request target as UTF-8 with surrogate escapes, which the
    encode below reverses. A target in absolute form (``http://host/h/...``,
    which servers must accept, RFC 9112 section 3.2.2) counts from its path.
    """
    if not raw_path.startswith("/"):
        authority = raw_path.find("://")
        path = raw_path.find("/", authority + 3) if authority != -1 else -1
        raw_path = raw_path[path:] if path != -1 else "/"
    rest = raw_path[len(INGEST_PREFIX) :]
    cut = len(rest)
    for stop in ("/", "?"):
        index = rest.find(stop)
        if index != -1:
            cut = min(cut, index)
    return unquote(rest[:cut]), rest[cut:].encode("utf-8", "surrogateescape")


async def read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes | None:
    """Read the body, or return None as soon as it exceeds ``limit`` bytes.

    A sender that sent ``Expect: 100-continue`` gets ``100 Continue`` here,
    after the checks that reject a request without its body (the channel,
    the rate limits, a declared length over ``limit``), so that a rejected
    sender does not upload the body first.

    Raises TimeoutError when the whole body has not arrived within ``timeout`` seconds.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    await _continue_if_expected(request)
    if request.content.is_eof():
        # The whole body came with the head, as small bodies do: take it as is.
        body = request.content.read_nowait()
        return body if len(body) <= limit else None
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout):
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


async def continue_later(request: web.Request) -> None:
    """Leave ``100 Continue`` to ingest, in place of aiohttp's expect handler, which sends it before the handler runs."""


async def _continue_if_expected(request: web.BaseRequest) -> None:
    if request.version != HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # The interim response is not part of the response's size, which aiohttp uses to tell whether a response began.
    request.writer.output_size = 0
    await request.writer.drain()


@web.middleware
async def ingest_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Respond in JSON, like the rest of ingest, to URLs under the ingest prefix that match no route, such as ``/h/``."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if request.path == INGEST_PREFIX.rstrip("/") or request.path.startswith(INGEST_PREFIX):
            # The routes match every URL with a channel segment, so this one has none.
            return _channel_not_found("")
        raise


def _channel_not_found(channel_id: str) -> web.Response:
    if not channel_id:
        return json_error(404, "channel_not_found", f"the URL names no channel; post to {INGEST_PREFIX}<channel id>")
    return json_error(404, "channel_not_found", "no channel at this URL; create one with 'hookrelay channel create'")


async def handle_ingest(request: web.Request) -> web.StreamResponse:
    return await ingest(request, request.app[STATE])


async def ingest(request: web.BaseRequest, state: RelayState) -> web.StreamResponse:
    """Store the request as an event of the channel its URL names, and return the response for the sender."""
    channel_id, tail = split_target(request.raw_path)
    channel = await state.store.get_channel(channel_id)
    if channel is None:
        return _channel_not_found(channel_id)
    rejection = admit_channel(state, channel_id)
    if rejection is not None:
        return rejection

    try:
        body = await read_body(request, state.config.max_body, state.config.limits.body_timeout)
    except TimeoutError:
        state.guard.counters.count("body_timeout", channel_id)
        return _body_timed_out(channel_id, request.remote, state.config.limits.body_timeout)
    except ConnectionResetError:
        # The sender is gone, so this response is never read, and nothing was stored.
        logger.info("ingest abandoned channel=%s remote=%s: the sender closed the connection before the whole body", channel_id, request.remote)
        response = json_error(400, "body_incomplete", "the connection closed before the whole body arrived")
        response.force_close()
        return response
    if body is None:
        state.guard.counters.count("body_too_large", channel_id)
        return _too_large(state.config.max_body)

    received_at = time.time()
    headers = tuple(request.raw_headers)
    screened = screen(state, channel, headers, body, received_at)
    if screened.rejection is not None:
        return screened.rejection

    settings = ResponseSettings.of(channel.settings)
    # A sync sender waits only when a listener is there to produce the response.
    waits = settings.mode == "sync" and await state.hub.count_listeners(channel_id) > 0
    event = NewEvent(
        id=new_event_id(),
        channel=channel_id,
        method=request.method,
        target=tail,
        headers=headers,
        body=body,
        received_at=received_at,
        remote=request.remote or "",
        scheme=request.scheme,
        respond_until=received_at + settings.timeout if waits else None,
        **screened.fields,
    )
    waiting = state.hub.expect_response(event.id) if waits else None
    try:
        await state.store.append(event)
    except StoreError as exc:
        state.hub.forget_response(event.id)
        state.guard.counters.count("channel_full" if isinstance(exc, ChannelFull) else "store_failed", channel_id)
        return _store_failed(channel_id, event.id, exc)
    except DuplicateEvent as exc:
        state.hub.forget_response(event.id)
        return await duplicate_answer(state, exc, event.headers)

    state.hub.notify(channel_id)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("event stored channel=%s event_id=%s method=%s bytes=%d", channel_id, event.id, event.method, len(body))
    if settings.mode == "sync":
        return await answer_sender(state, channel_id, event.id, waiting, settings)
    return web.Response(status=202, body=dump_json({"id": event.id}), content_type="application/json", charset="utf-8")


def _store_failed(channel_id: str, event_id: str, exc: StoreError) -> web.Response:
    if isinstance(exc, ChannelFull):
        logger.warning("ingest rejected channel=%s event_id=%s: %s", channel_id, event_id, exc)
        return json_error(429, "channel_full", f"{exc}; start a listener to drain it", **{"Retry-After": "60"})
    logger.error("ingest failed channel=%s event_id=%s: %s", channel_id, event_id, exc)
    return json_error(503, "store_unavailable", "the relay could not store the event; retry later", **{"Retry-After": "5"})


def _body_timed_out(channel_id: str, remote: str | None, timeout: float) -> web.Response:
    logger.info("ingest rejected channel=%s remote=%s: body not complete within %g s", channel_id, remote, timeout)
    response = json_error(408, "body_timeout", f"the body did not arrive within {timeout:g} s; send it at once")
    response.force_close()
    return response


def _too_large(limit: int) -> web.Response:
    response = json_error(413, "body_too_large", f"the body exceeds the relay's limit of {limit} bytes")
    # Close instead of reading the rest of an oversized body.
    response.force_close()
    return response
