"""Calls to the relay's HTTP API, with errors converted at this boundary."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from relay_client.errors import RelayRejected, RelayUnreachable, Unauthorized

_TIMEOUT = aiohttp.ClientTimeout(total=30)


async def request_json(
    method: str, relay: str, path: str, *, token: str | None = None, channel: str = "", body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Send one API request and return the JSON answer; raises the listener's own errors."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = relay.rstrip("/") + path
    try:
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            async with session.request(method, url, headers=headers, json=body) as response:
                text = await response.text()
                status = response.status
        answer = json.loads(text) if text else {}
    except aiohttp.ClientConnectorError as exc:
        raise RelayUnreachable(relay, f"cannot connect: {exc.os_error.strerror or exc.os_error}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RelayUnreachable(relay, str(exc) or type(exc).__name__) from exc
    except ValueError as exc:
        raise RelayUnreachable(relay, f"the answer to {method} {path} is not JSON; is this a hookrelay relay?") from exc
    if status == 401 and channel:
        raise Unauthorized(relay, channel)
    if status >= 400:
        message = answer.get("message") if isinstance(answer, dict) else None
        raise RelayRejected(relay, status, message or "no details")
    return answer


async def create_channel(relay: str, admin_token: str | None) -> dict[str, Any]:
    return await request_json("POST", relay, "/api/channels", token=admin_token)


async def show_channel(relay: str, channel: str, token: str) -> dict[str, Any]:
    return await request_json("GET", relay, f"/api/channels/{channel}", token=token, channel=channel)


async def rotate_token(relay: str, channel: str, token: str) -> dict[str, Any]:
    return await request_json("POST", relay, f"/api/channels/{channel}/rotate-token", token=token, channel=channel)


async def update_channel(relay: str, channel: str, token: str, settings: dict[str, Any]) -> dict[str, Any]:
    return await request_json("PATCH", relay, f"/api/channels/{channel}", token=token, channel=channel, body=settings)
