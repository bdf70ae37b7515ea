"""Calls to the relay's HTTP API, with errors converted at this boundary.

Every response is checked against the status and the JSON shape that a
hookrelay relay sends for that request. A server that is not a relay, or
runs another version, then ends in :class:`NotARelay` instead of a
``KeyError`` deep in a command. The shapes list only the fields the CLI
reads.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from relay_client.errors import AdminUnauthorized, NotARelay, RelayRejected, RelayUnreachable, Unauthorized

_TIMEOUT = aiohttp.ClientTimeout(total=30)


class Nullable:
    """A shape whose value may also be JSON ``null``."""

    def __init__(self, shape: Any) -> None:
        self.shape = shape


# A shape is a Python type (or a tuple of types), a dict of field shapes, a
# one-item list (a JSON array of that shape) or a Nullable.
_NUMBER = (int, float)
_PAIRS = [[str]]
ERROR_ANSWER = {"error": str, "message": str}
CREATED = {"channel": str, "url": str, "token": str}
RESPONSE_SETTINGS = {"mode": str, "timeout": _NUMBER, "fallback": int}
SECURITY_SETTINGS = {"verify": Nullable(dict), "dedupe_window": _NUMBER, "event_type": Nullable(dict)}
CHANNEL_INFO = {
    "channel": str, "url": str, "backlog": int, "listeners": int,
    "response": RESPONSE_SETTINGS, **SECURITY_SETTINGS, "counts": dict,
}
ROTATED = {"channel": str, "token": str}
UPDATED = {"channel": str, "response": RESPONSE_SETTINGS, **SECURITY_SETTINGS}
EVENT_SUMMARY = {
    "id": str, "received_at": _NUMBER, "method": str, "path": str, "event_type": Nullable(str),
    "state": str, "status": Nullable(int), "attempts": int,
}
EVENT_LIST = {"events": [EVENT_SUMMARY]}
ATTEMPT = {"attempt": int, "group": str, "status": Nullable(int), "duration_ms": _NUMBER, "error": Nullable(str)}
EVENT_DETAIL = {
    "id": str, "seq": int, "channel": str, "method": str, "path": str, "event_type": Nullable(str),
    "received_at": _NUMBER, "remote": str, "size": int, "state": str, "headers": _PAIRS, "body_text": Nullable(str),
    "raw": {"target_b64": str, "headers_b64": _PAIRS, "body_b64": str},
    "attempts": [ATTEMPT], "answer": Nullable({"status": int, "source": str}),
}
REPLAYED = {"id": str, "group": str}

_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array", dict: "an object", type(None): "null"}


async def request_json(
    method: str,
    relay: str,
    path: str,
    *,
    expect: tuple[int, Any],
    token: str | None = None,
    channel: str = "",
    body: dict[str, Any] | None = None,
) -> Any:
    """Send one API request and return its JSON response body; raises the listener's own errors.

    ``expect`` is the status and the shape of the relay's response. A 401 on
    a channel's path raises :class:`Unauthorized`, and any other error
    response :class:`RelayRejected`.
    """
    request = f"{method} {path.partition('?')[0]}"
    status, text = await _send(method, relay, path, token, body)
    answer = _parse(relay, request, status, text)
    if status >= 400:
        _raise_rejection(relay, request, status, answer, channel)
    expected_status, shape = expect
    if status != expected_status:
        raise NotARelay(relay, request, f"HTTP {status} where the relay sends {expected_status}")
    problem = shape_problem(answer, shape)
    if problem is not None:
        raise NotARelay(relay, request, problem)
    return answer


async def _send(method: str, relay: str, path: str, token: str | None, body: dict[str, Any] | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = relay.rstrip("/") + path
    try:
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            async with session.request(method, url, headers=headers, json=body) as response:
                return response.status, await response.text(errors="replace")
    except aiohttp.ClientConnectorError as exc:
        raise RelayUnreachable(relay, f"cannot connect: {exc.os_error.strerror or exc.os_error}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RelayUnreachable(relay, str(exc) or type(exc).__name__) from exc


def _parse(relay: str, request: str, status: int, text: str) -> Any:
    """Decode the answer's JSON; an empty body (such as a 204's) is None."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise NotARelay(relay, request, f"HTTP {status} with a body that is not JSON") from None


def _raise_rejection(relay: str, request: str, status: int, answer: Any, channel: str) -> None:
    if shape_problem(answer, ERROR_ANSWER) is not None:
        raise NotARelay(relay, request, f"HTTP {status} without the relay's JSON error fields")
    if status == 401 and channel:
        raise Unauthorized(relay, channel)
    raise RelayRejected(relay, status, answer["message"] or "no details")


def shape_problem(value: Any, shape: Any, path: str = "") -> str | None:
    """Return why ``value`` does not have ``shape``, or None when it has; ``path`` locates ``value`` in the response."""
    where = f'field "{path}"' if path else "the response"
    if isinstance(shape, Nullable):
        return None if value is None else shape_problem(value, shape.shape, path)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} is {_kind(value)}, not an object"
        for key, field_shape in shape.items():
            if key not in value:
                return f'{where} has no "{key}" field'
            problem = shape_problem(value[key], field_shape, f"{path}.{key}" if path else key)
            if problem is not None:
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} is {_kind(value)}, not an array"
        problems = (shape_problem(item, shape[0], f"{path}[{index}]") for index, item in enumerate(value))
        return next((problem for problem in problems if problem is not None), None)
    types = shape if isinstance(shape, tuple) else (shape,)
    # JSON true and false are Python bools, which are also ints.
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        return f"{where} is {_kind(value)}, not {_KINDS[types[0]]}"
    return None


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


async def create_channel(relay: str, admin_token: str | None) -> dict[str, Any]:
    """Create a channel; raises :class:`AdminUnauthorized` when the relay does not accept ``admin_token``."""
    try:
        return await request_json("POST", relay, "/api/channels", expect=(201, CREATED), token=admin_token)
    except RelayRejected as exc:
        if exc.status == 401:
            raise AdminUnauthorized(relay, token_given=bool(admin_token)) from exc
        raise


async def show_channel(relay: str, channel: str, token: str) -> dict[str, Any]:
    return await request_json("GET", relay, _channel_path(channel), expect=(200, CHANNEL_INFO), token=token, channel=channel)


async def rotate_token(relay: str, channel: str, token: str) -> dict[str, Any]:
    path = _channel_path(channel, "rotate-token")
    return await request_json("POST", relay, path, expect=(200, ROTATED), token=token, channel=channel)


async def update_channel(relay: str, channel: str, token: str, settings: dict[str, Any]) -> dict[str, Any]:
    path = _channel_path(channel)
    return await request_json("PATCH", relay, path, expect=(200, UPDATED), token=token, channel=channel, body=settings)


async def list_events(relay: str, channel: str, token: str, filters: dict[str, str | None]) -> list[dict[str, Any]]:
    """Return the channel's event summaries, newest first; ``filters`` with a None value are left out."""
    query = urlencode({key: value for key, value in filters.items() if value})
    path = _channel_path(channel, "events") + f"?{query}"
    answer = await request_json("GET", relay, path, expect=(200, EVENT_LIST), token=token, channel=channel)
    return answer["events"]


async def show_event(relay: str, channel: str, token: str, event_id: str) -> dict[str, Any]:
    """Return one event in full; its ``raw`` fields are checked to be Base64, so callers can decode them."""
    path = _channel_path(channel, "events", event_id)
    detail = await request_json("GET", relay, path, expect=(200, EVENT_DETAIL), token=token, channel=channel)
    raw = detail["raw"]
    encoded = [raw["target_b64"], raw["body_b64"], *(item for pair in raw["headers_b64"] for item in pair)]
    try:
        for text in encoded:
            base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NotARelay(relay, f"GET {path}", "the raw fields of the event are not Base64") from None
    return detail


async def replay_event(relay: str, channel: str, token: str, event_id: str, group: str) -> dict[str, Any]:
    path = _channel_path(channel, "events", event_id, "replay") + "?" + urlencode({"group": group})
    return await request_json("POST", relay, path, expect=(202, REPLAYED), token=token, channel=channel)


async def delete_event(relay: str, channel: str, token: str, event_id: str) -> None:
    path = _channel_path(channel, "events", event_id)
    await request_json("DELETE", relay, path, expect=(204, Nullable(dict)), token=token, channel=channel)


def _channel_path(channel: str, *segments: str) -> str:
    """Build ``/api/channels/<channel>/<segments>``, percent-encoding each part a user typed."""
    return "/".join(["/api/channels", *(quote(part, safe="") for part in (channel, *segments))])
