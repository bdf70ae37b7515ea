"""``hookrelay events``, ``replay`` and ``send``: a channel's history from the command line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import aiohttp
import typer
from rich.table import Table
from rich.text import Text

from relay_client import api_client
from relay_client.cli_common import (
    DEFAULT_RELAY,
    ChannelOption,
    ExitStatus,
    JsonOption,
    RelayOption,
    TokenOption,
    data_console,
    known_channel,
    stderr,
)
from relay_client.config import ListenerConfig, check_http_url, parse_target
from relay_client.console import printable
from relay_client.errors import RelayRejected, RelayUnreachable, Unauthorized, UsageError
from relay_client.forwarder import Forwarder
from relay_client.retry import RetryPolicy
from relay_client.settings import ChannelBook
from relay_server.protocol import Event

events_app = typer.Typer(help="List, show, replay and delete a channel's events.", no_args_is_help=True)

SAMPLES: dict[str, tuple[list[tuple[str, str]], bytes]] = {
    "github-ping": (
        [("Content-Type", "application/json"), ("X-GitHub-Event", "ping")],
        b'{"zen":"Keep it logically awesome.","hook_id":1,"hook":{"type":"Repository","events":["push"]}}',
    ),
    "stripe": (
        [("Content-Type", "application/json; charset=utf-8")],
        b'{"id":"evt_sample","object":"event","type":"invoice.paid","data":{"object":{"id":"in_sample"}}}',
    ),
    "slack-challenge": (
        [("Content-Type", "application/json")],
        b'{"token":"sample","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}',
    ),
}


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
    app.command("replay")(replay_to_url)
    app.command("send")(send)


@events_app.command("list")
def list_events(
    relay: RelayOption = DEFAULT_RELAY,
    channel: ChannelOption = None,
    token: TokenOption = None,
    state: Annotated[Optional[str], typer.Option(help="pending, delivered, failed or skipped.", show_default=False)] = None,
    method: Annotated[Optional[str], typer.Option(help="Only this HTTP method.", show_default=False)] = None,
    event_type: Annotated[Optional[str], typer.Option("--type", help="Event type, or its prefix before a dot.", show_default=False)] = None,
    search: Annotated[Optional[str], typer.Option("--search", help="Text the path or query contains.", show_default=False)] = None,
    group: Annotated[str, typer.Option(help="Consumer group whose state is shown.")] = "default",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Maximum number of events to list.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List a channel's events, newest first."""
    saved = known_channel(relay, channel, token)
    filters = {"state": state, "method": method, "type": event_type, "q": search, "group": group, "limit": str(limit)}
    rows = asyncio.run(api_client.list_events(relay, saved.channel, saved.token, filters))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("received", "id", "method", "path", "type", "state", "status", "attempts")
    for row in rows:
        table.add_row(
            _time(row["received_at"]),
            row["id"],
            row["method"],
            Text(printable(row["path"])),
            Text(printable(row["event_type"] or "")),
            row["state"],
            str(row["status"] or ""),
            str(row["attempts"]),
        )
    data_console().print(table)


@events_app.command("show")
def show_event(
    event_id: Annotated[str, typer.Argument(help="Event id, evt_….")],
    relay: RelayOption = DEFAULT_RELAY,
    channel: ChannelOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one event in full: headers, body and every delivery attempt."""
    detail = _fetch_event(relay, channel, token, event_id)
    if as_json:
        print(json.dumps(detail))
        return
    out = data_console()
    out.print(Text(f"{detail['method']} {printable(detail['path'])}", style="bold"))
    out.print(f"id {detail['id']}  received {_time(detail['received_at'])}  from {detail['remote']}  {detail['size']} bytes  {detail['state']}")
    for name, value in detail["headers"]:
        out.print(Text(f"{printable(name)}: {printable(value)}"))
    out.print()
    out.print(Text(_readable_body(detail)))
    out.print()
    for line in _attempt_lines(detail["attempts"]):
        out.print(Text(line))
    answer = detail.get("answer")
    if answer is not None:
        out.print(Text(f"answer to the sender: {answer['status']} ({answer['source']})"))


def _attempt_lines(attempts: list[dict[str, Any]]) -> list[str]:
    """Return a line per delivery attempt, and a line before the attempts of each replay.

    A replay numbers its attempts from 1 again, so a group's attempt number
    that does not grow shows where a replay began.
    """
    lines = []
    last: dict[str, int] = {}
    for attempt in attempts:
        group = attempt["group"]
        if attempt["attempt"] <= last.get(group, 0):
            lines.append(f"replayed ({group}):")
        last[group] = attempt["attempt"]
        status = attempt["status"] if attempt["status"] is not None else "no answer"
        error = printable(attempt["error"] or "")
        lines.append(f"attempt {attempt['attempt']} ({group}) at {_time(attempt['at'])}: {status}  {attempt['duration_ms']:.0f} ms  {error}".rstrip())
    return lines


def _readable_body(detail: dict[str, Any]) -> str:
    """Return the body for a terminal: JSON indented, text with its line breaks, binary as a size."""
    text = detail["body_text"]
    if text is None:
        return f"<{detail['size']} bytes of binary data; --json has it in base64>"
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    # Line breaks and tabs are layout; every other control character is escaped.
    return "\n".join(printable(line).replace("\\x09", "\t") for line in text.split("\n"))


@events_app.command("replay")
def replay_event(
    event_ids: Annotated[list[str], typer.Argument(help="One or more event ids.")],
    relay: RelayOption = DEFAULT_RELAY,
    channel: ChannelOption = None,
    token: TokenOption = None,
    group: Annotated[str, typer.Option(help="Consumer group that receives the event again.")] = "default",
    as_json: JsonOption = False,
) -> None:
    """Deliver events again to the listeners of a group, with the same ids.

    An event the relay rejects (unknown, or in flight to the group) is
    reported on stderr and the others are still replayed. The exit status is
    then 1.
    """
    saved = known_channel(relay, channel, token)
    results = []
    rejected = 0
    for event_id in event_ids:
        try:
            result = asyncio.run(api_client.replay_event(relay, saved.channel, saved.token, event_id, group))
        except Unauthorized:
            # No other event can fare better with the same token.
            raise
        except RelayRejected as exc:
            stderr.print(f"hookrelay: error: {event_id} not replayed: {exc.message}", markup=False)
            rejected += 1
            continue
        results.append(result)
        if not as_json:
            note = " (a new group: no listener has used it yet)" if result.get("new_group") else ""
            print(f"{result['id']} queued for group {result['group']}{note}", flush=True)
    if as_json:
        print(json.dumps(results))
    if rejected:
        raise typer.Exit(ExitStatus.ERROR)


@events_app.command("delete")
def delete_event(
    event_ids: Annotated[list[str], typer.Argument(help="One or more event ids.")],
    relay: RelayOption = DEFAULT_RELAY,
    channel: ChannelOption = None,
    token: TokenOption = None,
) -> None:
    """Delete events and their history from the relay."""
    saved = known_channel(relay, channel, token)
    for event_id in event_ids:
        asyncio.run(api_client.delete_event(relay, saved.channel, saved.token, event_id))
        print(f"{event_id} deleted")


def replay_to_url(
    event_id: Annotated[str, typer.Argument(help="Event id, evt_….")],
    to: Annotated[str, typer.Option("--to", help="URL (or port, host:port) that receives the event.")],
    relay: RelayOption = DEFAULT_RELAY,
    channel: ChannelOption = None,
    token: TokenOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds the URL has to respond.")] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Send a stored event straight to a URL, byte for byte, once."""
    detail = _fetch_event(relay, channel, token, event_id)
    event = event_from_detail(detail)
    config = ListenerConfig(relay=relay, channel=event.channel, token="", target=parse_target(to), timeout=timeout, retry=RetryPolicy(max_attempts=1))

    async def run() -> Any:
        async with Forwarder(config) as forwarder:
            return await forwarder.deliver(event)

    result = asyncio.run(run())
    if as_json:
        print(json.dumps(result.to_wire()))
    else:
        print(f"{event.id} -> {config.target.redacted()}: {result.status if result.status is not None else result.error}")
    if result.status is None or result.status >= 400:
        raise typer.Exit(1)


def event_from_detail(detail: dict[str, Any]) -> Event:
    """Rebuild the exact event from the API's base64 fields."""
    raw = detail["raw"]
    return Event(
        id=detail["id"],
        channel=detail["channel"],
        seq=detail["seq"],
        method=detail["method"],
        target=base64.b64decode(raw["target_b64"]),
        headers=tuple((base64.b64decode(k), base64.b64decode(v)) for k, v in raw["headers_b64"]),
        body=base64.b64decode(raw["body_b64"]),
        received_at=detail["received_at"],
        remote=detail["remote"],
        event_type=detail["event_type"],
    )


def send(
    payload: Annotated[Optional[Path], typer.Argument(help="File with the body; - reads stdin.", show_default=False)] = None,
    sample: Annotated[Optional[str], typer.Option(help=f"Built-in payload: {', '.join(SAMPLES)}.", show_default=False)] = None,
    url: Annotated[Optional[str], typer.Option(help="Channel URL; default: the URL of --channel on --relay.", show_default=False)] = None,
    relay: RelayOption = DEFAULT_RELAY,
    channel: ChannelOption = None,
    method: Annotated[str, typer.Option(help="HTTP method.")] = "POST",
    path: Annotated[str, typer.Option(help="Path and query below the channel URL, e.g. /github?x=1.")] = "",
    header: Annotated[Optional[list[str]], typer.Option("--header", "-H", help="Extra header 'Name: value'; repeatable.", show_default=False)] = None,
    github_secret: Annotated[Optional[str], typer.Option(help="Sign the body as GitHub does (X-Hub-Signature-256, X-GitHub-Delivery); name the event with -H 'X-GitHub-Event: push'.", show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Post a test webhook to a channel."""
    headers, body = _payload(payload, sample)
    headers += [_parse_header(item) for item in header or []]
    if github_secret:
        digest = hmac.new(github_secret.encode(), body, hashlib.sha256).hexdigest()
        headers += [("X-GitHub-Delivery", str(uuid.uuid4())), ("X-Hub-Signature-256", f"sha256={digest}")]
    if url is not None:
        check_http_url("--url", url, "http://127.0.0.1:8787/h/ch_…")
    channel_url = url or _remembered_url(relay, channel)
    status, answer = asyncio.run(_post(method, channel_url + path, headers, body))
    if as_json:
        print(json.dumps({"status": status, "answer": _json_or_text(answer)}))
    else:
        stderr.print(Text(f"{method} {channel_url + path}: HTTP {status} {printable(answer)}"))
    if status >= 400:
        raise typer.Exit(1)


def _payload(payload: Path | None, sample: str | None) -> tuple[list[tuple[str, str]], bytes]:
    if sample is not None:
        if sample not in SAMPLES:
            raise UsageError("--sample", sample, f"use one of {', '.join(SAMPLES)}")
        headers, body = SAMPLES[sample]
        return list(headers), body
    if payload is None:
        raise UsageError("PAYLOAD", None, "give a file, - for stdin, or --sample NAME")
    body = sys.stdin.buffer.read() if str(payload) == "-" else _read_payload(payload)
    content_type = "application/json" if body.lstrip()[:1] in (b"{", b"[") else "application/octet-stream"
    return [("Content-Type", content_type)], body


def _read_payload(payload: Path) -> bytes:
    try:
        return payload.read_bytes()
    except FileNotFoundError:
        raise UsageError("PAYLOAD", str(payload), "no such file; give a file, - for stdin, or --sample NAME") from None
    except OSError as exc:
        raise UsageError("PAYLOAD", str(payload), f"cannot read it: {exc.strerror or exc}") from None


def _parse_header(item: str) -> tuple[str, str]:
    name, sep, value = item.partition(":")
    if not sep or not name.strip():
        raise UsageError("--header", item, "use 'Name: value'")
    return name.strip(), value.strip()


def _remembered_url(relay: str, channel: str | None) -> str:
    saved = ChannelBook().find(relay, channel) if channel else known_channel(relay, None, None)
    if saved is None or not saved.url:
        described = f"channel {channel}" if channel else "the remembered channel"
        raise UsageError("--url", None, f"no URL is remembered for {described} on relay {relay}; pass --url")
    return saved.url


def _json_or_text(answer: str) -> Any:
    try:
        return json.loads(answer)
    except ValueError:
        return answer


async def _post(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session:
            async with session.request(method, url, headers=headers, data=body or None) as response:
                return response.status, (await response.text(errors="replace"))[:500]
    except aiohttp.ClientConnectorError as exc:
        raise RelayUnreachable(url, f"cannot connect: {exc.os_error.strerror or exc.os_error}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RelayUnreachable(url, str(exc) or type(exc).__name__) from exc


def _fetch_event(relay: str, channel: str | None, token: str | None, event_id: str) -> dict[str, Any]:
    saved = known_channel(relay, channel, token)
    return asyncio.run(api_client.show_event(relay, saved.channel, saved.token, event_id))


def _time(stamp: float) -> str:
    try:
        return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        # A time the platform cannot convert is shown as the relay sent it.
        return str(stamp)

