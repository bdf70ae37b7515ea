"""Pieces every ``hookrelay`` command shares: exit statuses, options, consoles."""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from relay_client.config import DEFAULT_RELAY, check_http_url, split_relays
from relay_client.errors import UsageError
from relay_client.runner import resolve_channel
from relay_client.settings import ChannelBook, SavedChannel, config_path


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    UNAUTHORIZED = 3
    UNREACHABLE = 4
    NOT_A_RELAY = 5
    INTERRUPTED = 130


# Logs, progress and errors; stdout carries data only.
stderr = Console(stderr=True, soft_wrap=True, highlight=False)

# Width for tables when stdout is not a terminal: wide enough that event and
# channel ids are never cut, so they can be copied from a log or a pipe.
_PIPE_WIDTH = 250


def data_console() -> Console:
    """Return a console for tables and text on stdout."""
    console = Console(soft_wrap=True, highlight=False)
    if not console.is_terminal:
        console.width = _PIPE_WIDTH
    return console


def value_source(ctx: typer.Context, option: str) -> str | None:
    """Name where the value of ``option`` (such as ``--relay``) came from, unless it was typed on the command line.

    Returns the config file's path or the environment variable, or None.
    """
    param = next((param for param in ctx.command.params if option in getattr(param, "opts", ())), None)
    if param is None or param.name is None:
        return None
    source = ctx.get_parameter_source(param.name)
    if source is None:
        return None
    if source.name == "DEFAULT_MAP":
        return str(config_path())
    if source.name == "ENVIRONMENT" and getattr(param, "envvar", None):
        return str(param.envvar)
    return None


def _check_relay(ctx: typer.Context, value: str) -> str:
    if "," in value:
        raise UsageError("--relay", value, "only 'hookrelay listen' takes several relay URLs", source=value_source(ctx, "--relay"))
    return _check_relays(ctx, value)


def _check_relays(ctx: typer.Context, value: str) -> str:
    try:
        for relay in split_relays(value):
            check_http_url("--relay", relay, "https://relay.example.com")
    except UsageError as exc:
        exc.source = value_source(ctx, "--relay")
        raise
    return value


RelayOption = Annotated[
    str, typer.Option("--relay", envvar="HOOKRELAY_RELAY", callback=_check_relay, help="Base URL of the relay.")
]
RelayListOption = Annotated[
    str,
    typer.Option(
        "--relay", envvar="HOOKRELAY_RELAY", callback=_check_relays,
        help="Base URL of the relay; several relay nodes separated by commas, tried in turn on each reconnect.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print data as JSON on stdout.")]
AdminTokenOption = Annotated[
    Optional[str],
    typer.Option("--admin-token", envvar="HOOKRELAY_ADMIN_TOKEN", help="Admin token, for relays that guard channel creation.", show_default=False),
]
ChannelOption = Annotated[
    Optional[str],
    typer.Option("--channel", envvar="HOOKRELAY_CHANNEL", help="Channel id; default: the one remembered for the relay.", show_default=False),
]
ChannelIdOption = Annotated[str, typer.Option("--channel", envvar="HOOKRELAY_CHANNEL", help="Channel id.")]
TokenOption = Annotated[
    Optional[str],
    typer.Option("--token", envvar="HOOKRELAY_TOKEN", help="The channel's token; default: the remembered one.", show_default=False),
]

__all__ = ["DEFAULT_RELAY", "ExitStatus", "stderr", "data_console", "configure_logging", "inspector_url", "known_channel"]


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("hookrelay")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def known_channel(relay: str, channel: str | None, token: str | None) -> SavedChannel:
    """Return the channel a command works on: given, or remembered for ``relay``; never created."""
    book = ChannelBook()
    if channel is None and book.default_for(relay) is None:
        raise UsageError("--channel", None, f"no channel is remembered for relay {relay}; pass --channel and --token")
    saved, _ = asyncio.run(resolve_channel(relay, channel or book.default_for(relay).channel, token, None, book))
    if channel is None and book.count_for(relay) > 1:
        # Several remembered channels: a command about the wrong one would look like missing events.
        stderr.print(
            f"hookrelay: using channel {saved.channel}, the first remembered for relay {relay};"
            " pass --channel for another (hookrelay channel list)",
            markup=False,
            highlight=False,
        )
    return saved


def inspector_url(relay: str, ingest_url: str, channel: str, token: str | None) -> str:
    """Build the link to a channel's inspector page on the relay's public base URL.

    The token goes in the URL fragment, which browsers do not send, so it
    stays out of request lines and the relay's logs. Without a token the page
    asks for it.
    """
    suffix = f"/h/{channel}"
    base = ingest_url.removesuffix(suffix) if ingest_url.endswith(suffix) else relay.rstrip("/")
    page = f"{base}/inspect/{channel}"
    return f"{page}#token={token}" if token else page
