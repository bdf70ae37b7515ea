"""A small client of the relay's history API for tests, and a check of responses against the OpenAPI schemas."""

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jsonschema

from .processes import Channel
from .timing import MS

REQUEST_TIMEOUT = 30_000 * MS
POLL_INTERVAL = 50 * MS


@dataclass(frozen=True)
class ApiAnswer:
    """Status, headers and JSON body (None when empty or not JSON) of one API response."""

    status: int
    headers: dict[str, str]
    body: Any

    def describe(self) -> str:
        return f"HTTP {self.status}: {self.body!r}"


async def api_request(
    relay_url: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    params: dict[str, str] | None = None,
    json_body: Any = None,
    timeout: float = REQUEST_TIMEOUT,
) -> ApiAnswer:
    """Send one request to the relay and read the response. `token` goes in the Authorization header."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        async with session.request(method, relay_url + path, headers=headers, params=params, json=json_body) as response:
            text = await response.text()
            body = None
            if text and response.content_type == "application/json":
                body = await response.json()
            return ApiAnswer(response.status, dict(response.headers), body)


class ChannelApi:
    """The history endpoints of one channel, called with its token unless another is given."""

    def __init__(self, relay_url: str, channel: Channel):
        self.relay_url = relay_url
        self.channel = channel
        self.base = f"/api/channels/{channel.id}"

    async def call(self, method: str, path: str = "", **options: Any) -> ApiAnswer:
        options.setdefault("token", self.channel.token)
        return await api_request(self.relay_url, method, self.base + path, **options)

    async def list_events(self, **params: Any) -> dict:
        answer = await self.call("GET", "/events", params={key: str(value) for key, value in params.items()})
        assert answer.status == 200, answer.describe()
        return answer.body

    async def event_ids(self, **params: Any) -> list[str]:
        return [row["id"] for row in (await self.list_events(**params))["events"]]

    async def show(self, event_id: str, **params: Any) -> dict:
        answer = await self.call("GET", f"/events/{event_id}", params={key: str(value) for key, value in params.items()})
        assert answer.status == 200, answer.describe()
        return answer.body

    async def wait_for_state(self, event_id: str, state: str, timeout: float, group: str = "default") -> dict:
        """Poll the event's detail until its state for `group` is `state`, and return the detail."""
        return await poll(
            lambda: self.show(event_id, group=group),
            lambda detail: detail["state"] == state,
            timeout,
            f"event {event_id} to be {state} for group {group}",
        )


async def poll(fetch: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float, description: str) -> Any:
    """Call `fetch` until `done` accepts its result, and return that result.

    Raises AssertionError naming `description` and the last result when
    `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = await fetch()
        if done(result):
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {description}; last: {result!r}")
        await asyncio.sleep(POLL_INTERVAL)


def decode_raw(detail: dict) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """Return the raw target, header pairs and body bytes of an event detail."""
    raw = detail["raw"]
    headers = [(base64.b64decode(name), base64.b64decode(value)) for name, value in raw["headers_b64"]]
    return base64.b64decode(raw["target_b64"]), headers, base64.b64decode(raw["body_b64"])


def check_schema(document: dict, name: str, instance: Any) -> None:
    """Validate `instance` against the component schema `name` of an OpenAPI 3.1 document."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(instance), key=str)
    assert not errors, f"answer does not match schema {name}: " + "; ".join(
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors[:5]
    )
