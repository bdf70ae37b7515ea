"""What a person sees while ``hookrelay listen`` runs.

Human output goes to a Rich console on stderr: a start-up panel with the
public URL, one line per delivery, retries and reconnects. ``--json`` writes
one JSON object per finished delivery to stdout for scripts. Text that comes
from a webhook (path, event type, errors quoting it) is printed through
:func:`printable`, never as Rich markup, so a sender cannot inject control
sequences or markup into the terminal.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
import unicodedata
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TextIO

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from relay_client.config import Target
from relay_client.forwarder import Attempt
from relay_client.routing import Router
from relay_server.protocol import DeliveryResult, Event, Welcome, dump_json


def printable(text: str) -> str:
    """Escape control and format characters so a terminal shows them as text."""
    if text.isprintable():
        # str.isprintable() is False for every Cc and Cf character, so there is nothing to escape.
        return text
    return "".join(_escape(char) if unicodedata.category(char) in ("Cc", "Cf") else char for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def display_target(event: Event) -> str:
    return printable(event.target.decode("utf-8", "backslashreplace") or "/")


class ListenerConsole:
    """Renderer of listener events: Rich lines on stderr, JSON lines on stdout."""

    def __init__(
        self,
        console: Console,
        target: Target,
        *,
        json_out: TextIO | None = None,
        public_url: str = "",
        router: Router | None = None,
        inspector_link: Callable[[str], str] | None = None,
    ) -> None:
        self.console = console
        self.target = target
        self.router = router or Router(default=target)
        self.json_out = json_out
        self.public_url = public_url
        # Builds the inspector link from the ingest URL of the relay connected to.
        self.inspector_link = inspector_link
        self.group = ""
        self._connections = 0
        self._draining = 0
        self._drained = 0
        # Rich inspects the stream on every call, so the result is cached here.
        self._terminal = console.is_terminal
        self._lines = _LineBuffer(lambda: console.file)
        self._json_lines = _LineBuffer(lambda: json_out) if json_out is not None else None

    def connected(self, welcome: Welcome) -> None:
        self._connections += 1
        self.group = welcome.group
        url = str(welcome.extra.get("url") or self.public_url)
        if self._connections == 1:
            self._print_banner(welcome, url)
        else:
            self._print(Text(f"reconnected to the relay (channel {welcome.channel})", style="green"))
        if welcome.backlog:
            self._draining, self._drained = welcome.backlog, 0
            self._print(Text(f"draining {welcome.backlog} held events", style="yellow"))

    def _print_banner(self, welcome: Welcome, url: str) -> None:
        body = Text()
        body.append("Public URL  ", style="bold")
        body.append(url + "\n", style="bold cyan")
        for index, line in enumerate(self.router.describe() or ["nothing: no --forward target"]):
            body.append(f"{'Forwarding' if index == 0 else '':<12}{line}\n")
        body.append(f"Channel     {welcome.channel}   group {welcome.group}")
        self._print(Panel(body, title="hookrelay listening", expand=False))
        if self.inspector_link is not None:
            # Outside the panel, so that the long link is never wrapped.
            self._print(Text(f"Inspector   {self.inspector_link(url)}"))

    def disconnected(self, reason: str, retry_in: float) -> None:
        self._print(Text(f"connection lost: {printable(reason)}; reconnecting in {retry_in:.1f} s", style="yellow"))

    def attempt(self, attempt: Attempt) -> None:
        if attempt.final:
            return
        line = Text(f"{_clock()} ", style="dim")
        line.append(f"{attempt.event.method} {display_target(attempt.event)} ")
        line.append(f"attempt {attempt.attempt} failed: {printable(attempt.error or '')}; ", style="red")
        line.append(f"retry in {attempt.retry_in:.1f} s", style="dim")
        self._print(line)

    def finished(self, event: Event, result: DeliveryResult) -> None:
        parts = self._delivery_parts(event, result)
        if self._terminal:
            self.console.print(_styled(parts, dim=result.outcome == "skipped"))
        else:
            # Rendering with Rich cost about a third of the listener's CPU per
            # event when measured with scripts/bench, so other streams get plain text.
            self._lines.write("".join(text for text, _ in parts) + "\n")
        self._count_drained()
        if self._json_lines is not None:
            route = self.router.resolve(event)
            record = delivery_record(event, result, route.target if route else None, self.group)
            self._json_lines.write(json_line(record))

    def acknowledged_again(self, event: Event) -> None:
        """Count a redelivered event that was acknowledged from an earlier result; its line was printed then."""
        self._count_drained()

    def _count_drained(self) -> None:
        if not self._draining:
            return
        self._drained += 1
        if self._drained >= self._draining or self._drained % 100 == 0:
            self._print(Text(f"drained {self._drained} of {self._draining} held events", style="yellow"))
        if self._drained >= self._draining:
            self._draining = 0

    def flush(self) -> None:
        """Write the delivery lines and JSON records still buffered."""
        self._lines.flush()
        if self._json_lines is not None:
            self._json_lines.flush()

    def _print(self, renderable: Text | Panel) -> None:
        """Print through Rich after the delivery lines written before it."""
        self._lines.flush()
        self.console.print(renderable)

    def _delivery_parts(self, event: Event, result: DeliveryResult) -> list[tuple[str, str]]:
        """Build one delivery line as pieces of text, each with its Rich style ("" for none)."""
        parts = [(f"{_clock()} ", "dim"), (f"{event.method:<6} ", "bold"), (display_target(event), "")]
        if event.event_type:
            parts.append((f" {printable(event.event_type)}", "magenta"))
        verdict = parse_verification(event.verification)
        if verdict is not None:
            parts.append((f"  [{printable(verdict[0])} {printable(verdict[1])}]", "green" if verdict[1] == "valid" else "bold red"))
        if result.outcome == "skipped":
            # Filtered events stay visible, dimmed, with the reason.
            parts.append((f"  skipped: {printable(result.error or '')}", ""))
            return parts
        status = str(result.status) if result.status is not None else "---"
        parts.append((f"  {status}", _status_style(result)))
        parts.append((f"  {result.duration_ms:.0f} ms", "dim"))
        if result.attempts > 1:
            parts.append((f"  attempt {result.attempts}", "yellow"))
        if result.outcome == "failed":
            parts.append((f"  failed: {printable(result.error or '')}", "red"))
        return parts


class _LineBuffer:
    """Collects lines for a stream and writes them in one call at the end of the event loop's turn.

    Deliveries that finish together then cost one write and one flush instead
    of one each, and every line is still out before the loop waits for I/O.
    Without a running loop each line is written at once.
    """

    def __init__(self, stream: Callable[[], TextIO]) -> None:
        # A getter, because Rich's console.file follows sys.stderr when it is replaced.
        self.stream = stream
        self._pending: list[str] = []

    def write(self, text: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if not self._pending and loop is not None:
            loop.call_soon(self.flush)
        self._pending.append(text)
        if loop is None:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        stream = self.stream()
        stream.write(text)
        stream.flush()


def parse_verification(value: str | None) -> tuple[str, str] | None:
    """Split an ``X-Hookrelay-Verified`` value (``github; result=valid``) into scheme and result."""
    if not value:
        return None
    scheme, _, parameter = value.partition(";")
    name, _, result = parameter.strip().partition("=")
    return (scheme.strip(), result.strip()) if name == "result" and result else None


def json_line(record: dict[str, object]) -> str:
    """Encode one ``--json`` record as a compact line of ASCII, which any terminal encoding can print."""
    encoded = dump_json(record)
    if encoded.isascii():
        return encoded.decode() + "\n"
    return json.dumps(record, separators=(",", ":")) + "\n"


def delivery_record(event: Event, result: DeliveryResult, target: Target | None, group: str) -> dict[str, object]:
    """Build the ``--json`` object for one finished delivery; ``target`` is None for a skipped event without a route."""
    verdict = parse_verification(event.verification)
    return {
        "time": utc_timestamp(time.time()),
        "event_id": event.id,
        "channel": event.channel,
        "group": group,
        "method": event.method,
        "path": event.target.decode("utf-8", "backslashreplace") or "/",
        "event_type": event.event_type,
        "verified": {"scheme": verdict[0], "result": verdict[1]} if verdict else None,
        "outcome": result.outcome,
        "status": result.status,
        "attempt": result.attempts,
        "duration_ms": round(result.duration_ms, 3),
        "error": result.error,
        "target": target.redacted() if target is not None else None,
        "body_bytes": len(event.body),
    }


def utc_timestamp(now: float) -> str:
    """Format ``now`` as ISO 8601 in UTC with milliseconds, as ``datetime.isoformat(timespec="milliseconds")`` does.

    The part up to the second is formatted once per second: formatting the
    whole time for every record cost the listener about 1 us per event.
    """
    second = math.floor(now)
    # Rounded to microseconds first, as datetime does.
    micros = round((now - second) * 1_000_000)
    if micros == 1_000_000:
        second, micros = second + 1, 0
    return f"{_utc_second(second)}.{micros // 1000:03d}+00:00"


@functools.lru_cache(maxsize=2)
def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _styled(parts: list[tuple[str, str]], *, dim: bool) -> Text:
    line = Text()
    for text, style in parts:
        line.append(text, style=style or None)
    if dim:
        line.stylize("dim")
    return line


def _status_style(result: DeliveryResult) -> str:
    if result.status is None or result.status >= 500:
        return "bold red"
    if result.status >= 400:
        return "red"
    if result.status >= 300:
        return "yellow"
    return "green"


def _clock() -> str:
    return time.strftime("%H:%M:%S")
