"""What a person sees while ``hookrelay listen`` runs.

Human output goes to a Rich console on stderr: a start-up panel with the
public URL, one line per delivery, retries and reconnects. ``--json`` writes
one JSON object per finished delivery to stdout for scripts. Text that comes
from a webhook (path, event type, errors quoting it) is printed through
:func:`printable`, never as Rich markup, so a sender cannot inject control
sequences or markup into the terminal.
"""

from __future__ import annotations

import json
import time
import unicodedata
from datetime import datetime, timezone
from typing import TextIO

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from relay_client.config import Target
from relay_client.forwarder import Attempt
from relay_client.routing import Router
from relay_server.protocol import DeliveryResult, Event, Welcome


def printable(text: str) -> str:
    """Escape control and format characters so a terminal shows them as text."""
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
        inspector_url: str = "",
    ) -> None:
        self.console = console
        self.target = target
        self.router = router or Router(default=target)
        self.json_out = json_out
        self.public_url = public_url
        self.inspector_url = inspector_url
        self.group = ""
        self._connections = 0
        self._draining = 0
        self._drained = 0

    def connected(self, welcome: Welcome) -> None:
        self._connections += 1
        self.group = welcome.group
        url = str(welcome.extra.get("url") or self.public_url)
        if self._connections == 1:
            self._print_banner(welcome, url)
        else:
            self.console.print(Text(f"reconnected to the relay (channel {welcome.channel})", style="green"))
        if welcome.backlog:
            self._draining, self._drained = welcome.backlog, 0
            self.console.print(Text(f"draining {welcome.backlog} held events", style="yellow"))

    def _print_banner(self, welcome: Welcome, url: str) -> None:
        body = Text()
        body.append("Public URL  ", style="bold")
        body.append(url + "\n", style="bold cyan")
        for index, line in enumerate(self.router.describe() or ["nothing: no --forward target"]):
            body.append(f"{'Forwarding' if index == 0 else '':<12}{line}\n")
        body.append(f"Channel     {welcome.channel}   group {welcome.group}")
        self.console.print(Panel(body, title="hookrelay listening", expand=False))
        if self.inspector_url:
            # Outside the panel, so that the long link is never wrapped.
            self.console.print(Text(f"Inspector   {self.inspector_url}"))

    def disconnected(self, reason: str, retry_in: float) -> None:
        self.console.print(Text(f"connection lost: {printable(reason)}; reconnecting in {retry_in:.1f} s", style="yellow"))

    def attempt(self, attempt: Attempt) -> None:
        if attempt.final:
            return
        line = Text(f"{_clock()} ", style="dim")
        line.append(f"{attempt.event.method} {display_target(attempt.event)} ")
        line.append(f"attempt {attempt.attempt} failed: {printable(attempt.error or '')}; ", style="red")
        line.append(f"retry in {attempt.retry_in:.1f} s", style="dim")
        self.console.print(line)

    def finished(self, event: Event, result: DeliveryResult) -> None:
        self._print_line(self._delivery_line(event, result))
        if self._draining:
            self._drained += 1
            if self._drained >= self._draining or self._drained % 100 == 0:
                self.console.print(Text(f"drained {self._drained} of {self._draining} held events", style="yellow"))
            if self._drained >= self._draining:
                self._draining = 0
        if self.json_out is not None:
            route = self.router.resolve(event)
            record = delivery_record(event, result, route.target if route else None, self.group)
            self.json_out.write(json.dumps(record) + "\n")
            self.json_out.flush()

    def _print_line(self, line: Text) -> None:
        """Print one line: through Rich on a terminal, as plain text elsewhere.

        Rendering with Rich cost about a third of the listener's CPU per
        event when measured with scripts/bench.
        """
        if self.console.is_terminal:
            self.console.print(line)
        else:
            self.console.file.write(line.plain + "\n")
            self.console.file.flush()

    def _delivery_line(self, event: Event, result: DeliveryResult) -> Text:
        line = Text(f"{_clock()} ", style="dim")
        line.append(f"{event.method:<6} ", style="bold")
        line.append(display_target(event))
        if event.event_type:
            line.append(f" {printable(event.event_type)}", style="magenta")
        verdict = parse_verification(event.verification)
        if verdict is not None:
            line.append(f"  [{printable(verdict[0])} {printable(verdict[1])}]", style="green" if verdict[1] == "valid" else "bold red")
        if result.outcome == "skipped":
            # Filtered events stay visible, dimmed, with the reason.
            line.append(f"  skipped: {printable(result.error or '')}")
            line.stylize("dim")
            return line
        status = str(result.status) if result.status is not None else "---"
        line.append(f"  {status}", style=_status_style(result))
        line.append(f"  {result.duration_ms:.0f} ms", style="dim")
        if result.attempts > 1:
            line.append(f"  attempt {result.attempts}", style="yellow")
        if result.outcome == "failed":
            line.append(f"  failed: {printable(result.error or '')}", style="red")
        return line


def parse_verification(value: str | None) -> tuple[str, str] | None:
    """Split an ``X-Hookrelay-Verified`` value (``github; result=valid``) into scheme and result."""
    if not value:
        return None
    scheme, _, parameter = value.partition(";")
    name, _, result = parameter.strip().partition("=")
    return (scheme.strip(), result.strip()) if name == "result" and result else None


def delivery_record(event: Event, result: DeliveryResult, target: Target | None, group: str) -> dict[str, object]:
    """Build the ``--json`` object for one finished delivery; ``target`` is None for a skipped event without a route."""
    verdict = parse_verification(event.verification)
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
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
