"""CLI pieces for security and noise control.

* ``listen`` options: several ``--forward`` rules, ``--events``, ``--filter``
  and ``--sign-secret``;
* ``serve`` options for the request limits;
* ``channel verify``, ``channel dedupe`` and ``channel event-type``, which
  change a channel's settings on the relay.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Optional

import typer

from relay_client import api_client
from relay_client.cli_common import ChannelOption, JsonOption, RelayOption, TokenOption, known_channel
from relay_client.config import DEFAULT_RELAY, Target
from relay_client.errors import UsageError
from relay_client.filters import EventFilter
from relay_client.resign import decode_secret
from relay_client.routing import Router
from relay_client.units import parse_duration, parse_size

# -- listen ----------------------------------------------------------------

ForwardOption = Annotated[
    list[str],
    typer.Option(
        "--forward",
        "-f",
        metavar="TARGET|RULE",
        envvar="HOOKRELAY_FORWARD",
        help=(
            "Target (a port, host:port or URL with a path), or a rule: /PREFIX=TARGET forwards paths under "
            "/PREFIX with the prefix stripped; type:PATTERN=TARGET forwards matching event types. Repeat it; "
            "the first matching rule wins, the plain target takes the rest."
        ),
    ),
]
EventsOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--events",
        metavar="TYPES",
        envvar="HOOKRELAY_EVENTS",
        help="Forward only these event types, comma-separated (push,issues.opened; issues covers issues.*; globs allowed).",
        show_default=False,
    ),
]
FilterOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--filter",
        metavar="SOURCE:NAME=VALUE",
        envvar="HOOKRELAY_FILTER",
        help="Forward only events where header:NAME=VALUE, query:NAME=VALUE or json:PATH=VALUE holds (!= negates; VALUE may be a glob). Repeat to AND them.",
        show_default=False,
    ),
]
SignSecretOption = Annotated[
    Optional[str],
    typer.Option(
        "--sign-secret",
        metavar="WHSEC",
        envvar="HOOKRELAY_SIGN_SECRET",
        help="Re-sign every forwarded event with Standard Webhooks headers using this whsec_ secret.",
        show_default=False,
    ),
]


def noise_control(forward: list[str], events: list[str] | None, filters: list[str] | None, sign_secret: str | None) -> tuple[Target, Router, EventFilter]:
    """Parse the listener's routing, filter and signing options; raises :class:`UsageError`.

    Returns the default target (the first rule's when there is no plain
    target), the router and the event filter.
    """
    router = Router.parse(forward)
    if router.default is None and not router.rules:
        raise UsageError("--forward", "", "give a target such as 8000 or localhost:8000")
    if sign_secret is not None:
        decode_secret(sign_secret)
    target = router.default or router.rules[0].target
    return target, router, EventFilter.parse(events, filters)


# -- serve -----------------------------------------------------------------

MaxHeadersOption = Annotated[int, typer.Option(envvar="HOOKRELAY_MAX_HEADERS", min=1, help="Maximum header fields per request; more get 431.")]
MaxHeaderBytesOption = Annotated[
    str, typer.Option(envvar="HOOKRELAY_MAX_HEADER_BYTES", help="Maximum bytes of header names and values per request (64KiB); more get 431.")
]
ChannelRateOption = Annotated[
    float, typer.Option(envvar="HOOKRELAY_CHANNEL_RATE", min=0, help="Requests per second one channel accepts on average; 0 turns the limit off.")
]
ChannelBurstOption = Annotated[int, typer.Option(envvar="HOOKRELAY_CHANNEL_BURST", min=1, help="Requests one channel accepts at once before --channel-rate applies.")]
AddressRateOption = Annotated[
    float, typer.Option(envvar="HOOKRELAY_ADDRESS_RATE", min=0, help="Requests per second one source address may send on average; 0 turns the limit off.")
]
AddressBurstOption = Annotated[int, typer.Option(envvar="HOOKRELAY_ADDRESS_BURST", min=1, help="Requests one address may send at once before --address-rate applies.")]
MaxConnectionsOption = Annotated[
    int,
    typer.Option(
        "--max-connections-per-address", envvar="HOOKRELAY_MAX_CONNECTIONS_PER_ADDRESS", min=0, help="Open connections one address may hold; 0 turns the cap off."
    ),
]
HeaderTimeoutOption = Annotated[
    str, typer.Option(envvar="HOOKRELAY_HEADER_TIMEOUT", help="Time a client has to send a complete request head (10s); also closes idle connections.")
]


BodyTimeoutOption = Annotated[
    str, typer.Option(envvar="HOOKRELAY_BODY_TIMEOUT", help="Time a sender has to send the whole body (120s); then 408.")
]


def ingress_limits(
    max_headers: int, max_header_bytes: str, channel_rate: float, channel_burst: int,
    address_rate: float, address_burst: int, max_connections: int, header_timeout: str, body_timeout: str = "120s",
) -> Any:
    """Build the relay's :class:`~relay_server.limits.IngressLimits` from ``serve`` options."""
    from relay_server.errors import ConfigError
    from relay_server.limits import IngressLimits

    try:
        return IngressLimits(
            max_headers=max_headers,
            max_header_bytes=parse_size(max_header_bytes, "--max-header-bytes"),
            channel_rate=channel_rate,
            channel_burst=channel_burst,
            address_rate=address_rate,
            address_burst=address_burst,
            max_connections_per_address=max_connections,
            header_timeout=parse_duration(header_timeout, "--header-timeout"),
            body_timeout=parse_duration(body_timeout, "--body-timeout"),
        )
    except ConfigError as exc:
        raise UsageError(f"--{exc.option}", exc.value, exc.hint) from None


# -- channel verify / dedupe / event-type -----------------------------------

PROVIDERS = ("github", "stripe", "slack", "shopify", "standard-webhooks", "hmac")


def register(channel_app: typer.Typer) -> None:
    """Add the security commands to ``hookrelay channel``."""
    channel_app.command("verify")(channel_verify)
    channel_app.command("dedupe")(channel_dedupe)
    channel_app.command("event-type")(channel_event_type)


def channel_verify(
    mode: Annotated[str, typer.Option(help="off: no check; mark: forward with X-Hookrelay-Verified; reject: respond 401 and store nothing.")],
    provider: Annotated[Optional[str], typer.Option(help=f"One of {', '.join(PROVIDERS)}.", show_default=False)] = None,
    secret: Annotated[
        Optional[str],
        typer.Option(envvar="HOOKRELAY_VERIFY_SECRET", help="The provider's signing secret; kept on the relay, never shown again.", show_default=False),
    ] = None,
    tolerance: Annotated[Optional[str], typer.Option(help="Accepted clock difference for timestamped signatures (5m).", show_default=False)] = None,
    header: Annotated[Optional[str], typer.Option(help="hmac provider: the header that carries the signature.", show_default=False)] = None,
    algorithm: Annotated[Optional[str], typer.Option(help="hmac provider: sha1, sha256 or sha512.", show_default=False)] = None,
    encoding: Annotated[Optional[str], typer.Option(help="hmac provider: hex or base64.", show_default=False)] = None,
    prefix: Annotated[Optional[str], typer.Option(help="hmac provider: text before the digest, such as sha256=.", show_default=False)] = None,
    channel: ChannelOption = None,
    relay: RelayOption = DEFAULT_RELAY,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check webhook signatures on the relay: mark each event with the result, or reject bad ones."""
    if mode not in ("off", "mark", "reject"):
        raise UsageError("--mode", mode, "use off, mark or reject")
    change: dict[str, Any] = {"mode": mode}
    options = {"provider": provider, "secret": secret, "header": header, "algorithm": algorithm, "encoding": encoding, "prefix": prefix}
    change |= {key: value for key, value in options.items() if value is not None}
    if tolerance is not None:
        change["tolerance"] = parse_duration(tolerance, "--tolerance")
    answer = _update(relay, channel, token, {"verify": change})
    _print_settings(answer, as_json, "verify")


def channel_dedupe(
    window: Annotated[str, typer.Option(help="Respond to a provider's redelivery within this time with the first event's id instead of storing it (24h); 0 turns it off.")],
    channel: ChannelOption = None,
    relay: RelayOption = DEFAULT_RELAY,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set how long the relay recognises redeliveries (X-GitHub-Delivery, webhook-id, Stripe event id)."""
    answer = _update(relay, channel, token, {"dedupe_window": parse_duration(window, "--window")})
    _print_settings(answer, as_json, "dedupe_window")


def channel_event_type(
    header: Annotated[Optional[str], typer.Option(help="Take the event type from this header.", show_default=False)] = None,
    json_field: Annotated[Optional[str], typer.Option("--json-field", help="Take the event type from this dotted JSON body field.", show_default=False)] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Go back to detecting the provider's event type.")] = False,
    channel: ChannelOption = None,
    relay: RelayOption = DEFAULT_RELAY,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set where a channel's event type comes from, for senders hookrelay does not recognise."""
    chosen = [name for name, value in (("--header", header), ("--json-field", json_field), ("--auto", auto or None)) if value]
    if len(chosen) != 1:
        raise UsageError("event-type", " ".join(chosen) or None, "give exactly one of --header, --json-field or --auto")
    source: dict[str, str] | None = None
    if header:
        source = {"header": header}
    elif json_field:
        source = {"json": json_field}
    answer = _update(relay, channel, token, {"event_type": source})
    _print_settings(answer, as_json, "event_type")


def describe_settings(info: dict[str, Any]) -> list[str]:
    """Return ``channel show`` lines for the signature check, redelivery window, event type and counts."""
    verify = info.get("verify")
    if not isinstance(verify, dict):
        check = "off"
    elif "invalid" in verify:
        # The relay could not read the stored setting and sent its error instead.
        check = f"invalid setting: {verify['invalid']}"
    else:
        check = f"{verify.get('provider', 'unknown provider')}, mode {verify.get('mode', 'unknown')}"
    source = info.get("event_type")
    kind = " ".join(f"{where} {name}" for where, name in source.items()) if isinstance(source, dict) else "detected"
    counts = info.get("counts") or {}
    lines = [f"{'verify':<10} {check}", f"{'dedupe':<10} {info.get('dedupe_window', 0):g} s", f"{'type from':<10} {kind}"]
    if counts:
        lines.append(f"{'counts':<10} " + ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())))
    return lines


def _update(relay: str, channel: str | None, token: str | None, change: dict[str, Any]) -> dict[str, Any]:
    saved = known_channel(relay, channel, token)
    return asyncio.run(api_client.update_channel(relay, saved.channel, saved.token, change))


def _print_settings(answer: dict[str, Any], as_json: bool, key: str) -> None:
    value = answer.get(key)
    if as_json:
        print(json.dumps({"channel": answer.get("channel"), key: value}))
        return
    unset = "auto" if key == "event_type" else "off"
    print(f"{answer.get('channel')}: {key.replace('_', ' ')} {json.dumps(value) if value is not None else unset}")
