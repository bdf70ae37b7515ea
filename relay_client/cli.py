"""The ``hookrelay`` command: option definitions and the error-handling shell.

Data and ``--json`` output go to stdout; logs, progress and errors go to a
Rich console on stderr. Every option has a ``HOOKRELAY_*`` variable and may
be set in the config file (see :mod:`relay_client.settings`). Failures print
one line, ``hookrelay: error: <reason>``, and exit with an
:class:`ExitStatus`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import platformdirs
import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from relay_client import __version__, api_client, cli_events, cli_security
from relay_client.cli_common import (
    DEFAULT_RELAY,
    AdminTokenOption,
    ChannelIdOption,
    ExitStatus,
    JsonOption,
    RelayListOption,
    RelayOption,
    TokenOption,
    configure_logging,
    data_console,
    inspector_url,
    stderr,
    value_source,
)
from relay_client.config import MAX_BODY, MAX_MESSAGE, MIB, ListenerConfig, split_relays
from relay_client.console import ListenerConsole
from relay_client.errors import AdminUnauthorized, ClientError, NotARelay, RelayRejected, RelayUnreachable, Unauthorized, UsageError
from relay_client.retry import RetryPolicy
from relay_client.runner import listen as run_listener
from relay_client.runner import resolve_channel, run_until_stopped, run_with_fastest_loop
from relay_client.settings import SECTIONS, ChannelBook, SavedChannel, config_path, default_map, load_config_file, unknown_keys
from relay_client.units import parse_duration, parse_size
from relay_server.errors import RelayError


app = typer.Typer(
    name="hookrelay",
    help="Relay webhooks to a server on localhost, byte for byte, and lose none.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
channel_app = typer.Typer(help="Create and manage channels.", no_args_is_help=True)
app.add_typer(channel_app, name="channel")


def _print_version(requested: bool) -> None:
    if requested:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    pass
cli_events.register(app)
cli_security.register(channel_app)


@app.command()
def listen(
    forward: cli_security.ForwardOption = ["8000"],
    relay: RelayListOption = DEFAULT_RELAY,
    channel: Annotated[Optional[str], typer.Option(envvar="HOOKRELAY_CHANNEL", help="Channel id; default: the remembered one, or a new one.", show_default=False)] = None,
    token: Annotated[Optional[str], typer.Option(envvar="HOOKRELAY_TOKEN", help="The channel's token.", show_default=False)] = None,
    group: Annotated[str, typer.Option(envvar="HOOKRELAY_GROUP", help="Consumer group; listeners in one group share the events.")] = "default",
    concurrency: Annotated[int, typer.Option(envvar="HOOKRELAY_CONCURRENCY", min=1, max=256, help="Deliveries in flight; 1 keeps the channel's order.")] = 1,
    max_attempts: Annotated[int, typer.Option(envvar="HOOKRELAY_MAX_ATTEMPTS", min=1, help="Attempts per event before it is marked failed.")] = 10,
    timeout: Annotated[str, typer.Option(envvar="HOOKRELAY_TIMEOUT", help="Time the target has to respond to one attempt (30s, 2m).")] = "30s",
    host_header: Annotated[Optional[str], typer.Option(envvar="HOOKRELAY_HOST_HEADER", help="Host header to send instead of the target's host:port.", show_default=False)] = None,
    admin_token: AdminTokenOption = None,
    respond: Annotated[bool, typer.Option("--respond", envvar="HOOKRELAY_RESPOND", help="Put the channel in sync mode: senders get your server's response.")] = False,
    events: cli_security.EventsOption = None,
    filters: cli_security.FilterOption = None,
    sign_secret: cli_security.SignSecretOption = None,
    as_json: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log connection and retry details.")] = False,
) -> None:
    """Forward a channel's webhooks to a local server and acknowledge each one after it responded."""
    configure_logging("INFO" if verbose else "WARNING")
    target, router, event_filter = cli_security.noise_control(forward, events, filters, sign_secret)
    book = ChannelBook()
    # Channel management talks to the first relay node; the listener
    # connection rotates through all of them.
    relays = split_relays(relay)
    relay = relays[0]
    saved, created = asyncio.run(resolve_channel(relay, channel, token, admin_token, book))
    if created:
        stderr.print(Text(f"created channel {saved.channel}; it is remembered for next time", style="green"))
    if respond:
        asyncio.run(api_client.update_channel(relay, saved.channel, saved.token, {"response": {"mode": "sync"}}))
        stderr.print(Text("sync mode: senders get your server's answer", style="green"))
    config = ListenerConfig(
        relay=",".join(relays),
        channel=saved.channel,
        token=saved.token,
        group=group,
        target=target,
        host_header=host_header,
        timeout=parse_duration(timeout, "--timeout", positive=True),
        concurrency=concurrency,
        retry=RetryPolicy(max_attempts=max_attempts),
        event_filter=event_filter,
        router=router,
        sign_secret=sign_secret,
        # Enough prefetch that workers seldom wait for the next claim, but
        # little: events held by a busy listener are events its group peers
        # cannot take.
        window=4 * concurrency,
    )
    console = ListenerConsole(
        stderr, target, json_out=sys.stdout if as_json else None, public_url=saved.url, router=router,
        # The banner may go to a log file; the token is shown on a terminal only.
        inspector_link=lambda ingest_url: inspector_url(relay, ingest_url, saved.channel, saved.token if stderr.is_terminal else None),
    )
    try:
        stopped_by = run_until_stopped(lambda stop: run_listener(config, console, stop))
    finally:
        console.flush()
    if stopped_by == signal.SIGINT:
        raise typer.Exit(ExitStatus.INTERRUPTED)


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="HOOKRELAY_HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="HOOKRELAY_PORT", min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8787,
    data_dir: Annotated[Path, typer.Option(envvar="HOOKRELAY_DATA_DIR", help="Folder for the relay's data: the SQLite database and bodies/ for bodies over 32 KiB.")] = Path(platformdirs.user_data_dir("hookrelay")),
    store: Annotated[Optional[str], typer.Option(envvar="HOOKRELAY_STORE", help="Where events live: redis://host:port/db to share them between relay nodes, or sqlite:///dir; default: SQLite in --data-dir.", show_default=False)] = None,
    node_timeout: Annotated[str, typer.Option(envvar="HOOKRELAY_NODE_TIMEOUT", help="With --store redis://: time after which the events held by a silent relay node go to listeners on other nodes.")] = "15s",
    public_url: Annotated[Optional[str], typer.Option(envvar="HOOKRELAY_PUBLIC_URL", help="Base URL senders use, when the relay sits behind a proxy.", show_default=False)] = None,
    max_body: Annotated[str, typer.Option(envvar="HOOKRELAY_MAX_BODY", help="Largest accepted body (bytes, or 25MiB).")] = "25MiB",
    sync: Annotated[str, typer.Option(envvar="HOOKRELAY_SYNC", help="normal: survives a relay crash; full: also survives power loss, slower.")] = "normal",
    retention_age: Annotated[str, typer.Option(envvar="HOOKRELAY_RETENTION_AGE", help="Events older than this are deleted (7d, 12h).")] = "7d",
    retention_events: Annotated[int, typer.Option(envvar="HOOKRELAY_RETENTION_EVENTS", min=1, help="Events kept per channel; ingest returns 429 when all are unacknowledged.")] = 100_000,
    admin_token: AdminTokenOption = None,
    window: Annotated[int, typer.Option(envvar="HOOKRELAY_WINDOW", min=1, max=10_000, help="Maximum events in flight per listener; a listener requests 4 x its --concurrency.")] = 512,
    heartbeat: Annotated[str, typer.Option(envvar="HOOKRELAY_HEARTBEAT", help="Ping interval for listener connections.")] = "10s",
    log_level: Annotated[str, typer.Option(envvar="HOOKRELAY_LOG_LEVEL", help="debug, info, warning or error.")] = "info",
    max_headers: cli_security.MaxHeadersOption = 100,
    max_header_bytes: cli_security.MaxHeaderBytesOption = "64KiB",
    channel_rate: cli_security.ChannelRateOption = 100.0,
    channel_burst: cli_security.ChannelBurstOption = 1000,
    address_rate: cli_security.AddressRateOption = 100.0,
    address_burst: cli_security.AddressBurstOption = 1000,
    max_connections: cli_security.MaxConnectionsOption = 256,
    header_timeout: cli_security.HeaderTimeoutOption = "10s",
    body_timeout: cli_security.BodyTimeoutOption = "120s",
) -> None:
    """Run a relay: accept webhooks on channel URLs, store them, serve listeners."""
    from relay_server.app import serve as serve_relay
    from relay_server.config import ServerConfig
    from relay_server.store.base import Retention

    if sync.lower() not in ("normal", "full"):
        raise UsageError("--sync", sync, "use normal or full")
    if store is not None and not store.startswith(("sqlite://", "redis://", "rediss://", "unix://")):
        raise UsageError("--store", store, "use redis://host:port/db or sqlite:///path/to/dir")
    body_limit = parse_size(max_body, "--max-body")
    if body_limit > MAX_BODY:
        raise UsageError("--max-body", max_body, f"use at most {MAX_BODY // MIB}MiB, because listeners accept messages of up to {MAX_MESSAGE // MIB} MiB")
    configure_logging(log_level)
    config = ServerConfig(
        host=host,
        port=port,
        public_url=public_url,
        data_dir=data_dir,
        store_url=store,
        node_timeout=parse_duration(node_timeout, "--node-timeout"),
        synchronous=sync.upper(),
        retention=Retention(max_events=retention_events, max_age=parse_duration(retention_age, "--retention-age")),
        max_body=body_limit,
        window=window,
        heartbeat=parse_duration(heartbeat, "--heartbeat"),
        admin_token=admin_token,
        limits=cli_security.ingress_limits(
            max_headers, max_header_bytes, channel_rate, channel_burst, address_rate, address_burst, max_connections, header_timeout,
            body_timeout,
        ),
    )
    if host not in ("127.0.0.1", "::1", "localhost") and admin_token is None:
        logging.getLogger("hookrelay.server").warning(
            "listening on %s without --admin-token: anyone who reaches the relay can create channels", host
        )
    run_with_fastest_loop(serve_relay(config))


ResponseOption = Annotated[
    Optional[str],
    typer.Option("--response", help="async: respond 202 once stored; sync: respond with your server's response.", show_default=False),
]
ResponseTimeoutOption = Annotated[
    Optional[str], typer.Option("--response-timeout", help="How long a sync sender waits (5s).", show_default=False)
]
FallbackOption = Annotated[
    Optional[int], typer.Option("--fallback", help="Status a sync sender gets when your server does not respond: 202, 503 or 504.", show_default=False)
]


def _response_settings(response: str | None, timeout: str | None, fallback: int | None) -> dict[str, object]:
    settings: dict[str, object] = {}
    if response is not None:
        if response not in ("sync", "async"):
            raise UsageError("--response", response, "use sync or async")
        settings["mode"] = response
    if timeout is not None:
        settings["timeout"] = parse_duration(timeout, "--response-timeout")
    if fallback is not None:
        settings["fallback"] = fallback
    return settings


@channel_app.command("create")
def channel_create(
    relay: RelayOption = DEFAULT_RELAY,
    admin_token: AdminTokenOption = None,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Remember the channel for 'hookrelay listen'.")] = True,
    response: ResponseOption = None,
    response_timeout: ResponseTimeoutOption = None,
    fallback: FallbackOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a channel and print its public URL and token."""
    created = asyncio.run(api_client.create_channel(relay, admin_token))
    settings = _response_settings(response, response_timeout, fallback)
    if settings:
        asyncio.run(api_client.update_channel(relay, created["channel"], created["token"], {"response": settings}))
    if save:
        ChannelBook().save(SavedChannel(relay.rstrip("/"), created["channel"], created["token"], created["url"]))
    inspector = inspector_url(relay, created["url"], created["channel"], created["token"])
    if as_json:
        print(json.dumps({"channel": created["channel"], "url": created["url"], "token": created["token"], "inspector": inspector}))
        return
    body = Text()
    body.append("URL      ", style="bold")
    body.append(created["url"] + "\n", style="cyan")
    body.append(f"Channel  {created['channel']}\nToken    {created['token']}")
    stderr.print(Panel(body, title="channel created", expand=False))
    # Outside the panel, so that the long link is never wrapped.
    stderr.print(Text(f"Inspector {inspector}"))


@channel_app.command("list")
def channel_list(as_json: JsonOption = False) -> None:
    """List the channels remembered on this machine."""
    book = ChannelBook().load()
    rows = [(relay, item) for relay, items in book.items() for item in items]
    if as_json:
        print(json.dumps([{"relay": relay, "channel": s.channel, "url": s.url} for relay, s in rows]))
        return
    table = Table("relay", "channel", "url")
    for relay, saved in rows:
        table.add_row(relay, saved.channel, saved.url)
    data_console().print(table)


@channel_app.command("show")
def channel_show(
    channel: ChannelIdOption,
    relay: RelayOption = DEFAULT_RELAY,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a channel's URL, backlog per consumer group, response mode and connected listeners."""
    saved, _ = asyncio.run(resolve_channel(relay, channel, token, None, ChannelBook()))
    info = asyncio.run(api_client.show_channel(relay, saved.channel, saved.token))
    if as_json:
        print(json.dumps(info))
        return
    for key in ("channel", "url", "backlog", "listeners"):
        print(f"{key:<10} {info[key]}")
    groups = info.get("groups") or {}
    if groups:
        print(f"{'groups':<10} " + ", ".join(f"{name} {count}" for name, count in groups.items()))
    response = info["response"]
    print(f"{'response':<10} {response['mode']}, timeout {response['timeout']:g} s, fallback {response['fallback']}")
    for line in cli_security.describe_settings(info):
        print(line)


@channel_app.command("update")
def channel_update(
    channel: ChannelIdOption,
    relay: RelayOption = DEFAULT_RELAY,
    token: TokenOption = None,
    response: ResponseOption = None,
    response_timeout: ResponseTimeoutOption = None,
    fallback: FallbackOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change how a channel responds to its senders."""
    settings = _response_settings(response, response_timeout, fallback)
    if not settings:
        raise UsageError("--response", None, "give at least one of --response, --response-timeout, --fallback")
    saved, _ = asyncio.run(resolve_channel(relay, channel, token, None, ChannelBook()))
    updated = asyncio.run(api_client.update_channel(relay, saved.channel, saved.token, {"response": settings}))
    if as_json:
        print(json.dumps(updated))
    else:
        answer = updated["response"]
        print(f"{saved.channel}: response {answer['mode']}, timeout {answer['timeout']:g} s, fallback {answer['fallback']}")


@channel_app.command("rotate-token")
def channel_rotate_token(
    channel: ChannelIdOption,
    relay: RelayOption = DEFAULT_RELAY,
    token: Annotated[Optional[str], typer.Option(envvar="HOOKRELAY_TOKEN", help="The current token; default: the remembered one.", show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Replace a channel's token; the old token stops working at once."""
    book = ChannelBook()
    saved, _ = asyncio.run(resolve_channel(relay, channel, token, None, book))
    rotated = asyncio.run(api_client.rotate_token(relay, saved.channel, saved.token))
    book.save(SavedChannel(saved.relay.rstrip("/") or relay.rstrip("/"), saved.channel, rotated["token"], saved.url))
    if as_json:
        print(json.dumps({"channel": saved.channel, "token": rotated["token"]}))
    else:
        print(rotated["token"])


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def _exit_status(exc: ClientError) -> ExitStatus:
    if isinstance(exc, (Unauthorized, AdminUnauthorized)):
        return ExitStatus.UNAUTHORIZED
    if isinstance(exc, NotARelay):
        return ExitStatus.NOT_A_RELAY
    if isinstance(exc, UsageError):
        return ExitStatus.USAGE
    if isinstance(exc, RelayUnreachable):
        return ExitStatus.UNREACHABLE
    if isinstance(exc, RelayRejected) and exc.status == 400:
        # The relay found an option's value invalid.
        return ExitStatus.USAGE
    return ExitStatus.ERROR


def _leaf_commands(command: typer.main.TyperGroup) -> list[typer.main.TyperCommand]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [command]
    return [leaf for sub in subcommands.values() for leaf in _leaf_commands(sub)]


def _config_keys(command: typer.main.TyperGroup) -> dict[str, set[str]]:
    """Map "" (the top level) and each config file table to the parameter names of its commands' options."""
    known: dict[str, set[str]] = {"": set(), **{section: set() for section in SECTIONS}}
    for section, sub in command.commands.items():
        names = {param.name for leaf in _leaf_commands(sub) for param in leaf.params if param.param_type_name == "option"}
        known[""] |= names
        if section in known:
            known[section] |= names
    return known


def _warn_unknown_keys(config: dict[str, object], command: typer.main.TyperGroup) -> None:
    for problem in unknown_keys(config, _config_keys(command)):
        stderr.print(f"hookrelay: warning: {config_path()}: {problem}", markup=False, highlight=False)


def _name_value_sources(command: typer.main.TyperGroup) -> None:
    """Make a :class:`UsageError` raised by a command name the config file or variable the bad value came from."""
    for leaf in _leaf_commands(command):
        leaf.invoke = _naming_sources(leaf.invoke)


def _naming_sources(invoke):
    @functools.wraps(invoke)
    def run(ctx: typer.Context):
        try:
            return invoke(ctx)
        except UsageError as exc:
            if exc.source is None:
                exc.source = value_source(ctx, exc.option)
            raise

    return run


def _usage_message(exc: typer.TyperException) -> str | None:
    """Return the text of a usage error, naming the config file when the bad value came from it."""
    message = getattr(exc, "format_message", None)
    if message is None:
        return None
    context = getattr(exc, "ctx", None)
    param = getattr(exc, "param", None)
    command = context.command_path if context is not None else "hookrelay"
    if isinstance(exc, typer.BadParameter) and context is not None and param is not None and param.name:
        source = context.get_parameter_source(param.name)
        if source is not None and source.name == "DEFAULT_MAP":
            key = param.name.replace("_", "-")
            return f"invalid {key} {context.lookup_default(param.name)!r} in {config_path()}: {exc.message}"
    return f"{message()} (see '{command} --help')"


def main() -> None:
    """Entry point of the ``hookrelay`` console script."""
    command = typer.main.get_command(app)
    _name_value_sources(command)
    try:
        config = load_config_file()
        _warn_unknown_keys(config, command)
        status = command.main(prog_name="hookrelay", default_map=default_map(config), standalone_mode=False)
    except ClientError as exc:
        stderr.print(f"hookrelay: error: {exc}", markup=False, highlight=False)
        sys.exit(_exit_status(exc))
    except RelayError as exc:
        # The relay could not start: its store, its address or its settings.
        stderr.print(f"hookrelay: error: {exc}", markup=False, highlight=False)
        sys.exit(ExitStatus.ERROR)
    except KeyboardInterrupt:
        sys.exit(ExitStatus.INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(ExitStatus.INTERRUPTED)
    except typer.TyperException as exc:
        # Usage errors (unknown option, invalid value) carry their own text
        # and exit status.
        message = _usage_message(exc)
        if message is None:
            raise
        stderr.print(f"hookrelay: error: {message}", markup=False, highlight=False)
        sys.exit(getattr(exc, "exit_code", ExitStatus.USAGE))
    sys.exit(status if isinstance(status, int) else ExitStatus.OK)


if __name__ == "__main__":
    main()
