"""Verify webhook signatures the way each provider defines them.

Pure functions: headers and body in, a :class:`Verdict` out. Nothing here
reads a clock, a socket or the store; the caller passes ``now``. Every
scheme is an HMAC over the raw body bytes (some with a timestamp or a
message id in front), and every digest comparison goes through
:func:`hmac.compare_digest`, so the time a comparison takes does not tell
how many leading bytes of a forged signature were right.

Results:

* ``valid``: a signature matches and its timestamp, when the scheme has
  one, is within ``tolerance`` seconds of ``now``;
* ``stale``: a signature matches but the timestamp is further from ``now``
  than ``tolerance`` in either direction, which is what a replayed request
  looks like;
* ``invalid``: the headers are there but no signature matches, or they
  cannot be parsed;
* ``missing``: a header the scheme needs is absent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay_server.errors import ConfigError

PROVIDERS = ("github", "stripe", "slack", "shopify", "standard-webhooks", "hmac")
MODES = ("off", "mark", "reject")
ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
ENCODINGS = ("hex", "base64")

VALID = "valid"
INVALID = "invalid"
MISSING = "missing"
STALE = "stale"

# Stripe, Slack and Standard Webhooks all document a five-minute window.
DEFAULT_TOLERANCE = 300.0
_MAX_TOLERANCE = 86400.0
_STANDARD_SECRET_PREFIX = "whsec_"

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """A channel's signature check; ``secret`` never appears in ``repr``.

    ``header``, ``algorithm``, ``encoding`` and ``prefix`` apply to the
    generic ``hmac`` provider only: the signature is
    ``prefix + encoding(HMAC-algorithm(secret, body))`` in ``header``.
    """

    provider: str
    secret: str = field(repr=False)
    mode: str = "mark"
    tolerance: float = DEFAULT_TOLERANCE
    header: str | None = None
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""

    def __post_init__(self) -> None:
        _check_choice("provider", self.provider, PROVIDERS)
        _check_choice("mode", self.mode, MODES)
        if not self.secret:
            raise ConfigError("secret", None, _missing_secret(self.provider))
        if not 0 < self.tolerance <= _MAX_TOLERANCE:
            raise ConfigError("tolerance", self.tolerance, f"use a number of seconds between 1 and {_MAX_TOLERANCE:.0f}")
        if self.provider == "standard-webhooks":
            standard_webhooks_key(self.secret)
        if self.provider == "hmac":
            self._check_generic()

    def _check_generic(self) -> None:
        if not self.header:
            hint = "the hmac provider needs the name of the header that carries the signature; pass it with --header"
            raise ConfigError("header", None, f"{hint}, such as --header X-Signature")
        if not self.header.isascii() or any(char in self.header for char in ": \t\r\n"):
            raise ConfigError("header", self.header, "a header name is ASCII without spaces or colons, such as X-Signature")
        _check_choice("algorithm", self.algorithm, tuple(ALGORITHMS))
        _check_choice("encoding", self.encoding, ENCODINGS)

    @property
    def scheme(self) -> str:
        return f"hmac-{self.algorithm}" if self.provider == "hmac" else self.provider

    @classmethod
    def from_settings(cls, raw: Any) -> VerifyConfig:
        """Build the config from a channel's ``verify`` setting; raises :class:`ConfigError`."""
        if not isinstance(raw, dict):
            raise ConfigError("verify", raw, "expected a JSON object")
        known = {"provider", "secret", "mode", "tolerance", "header", "algorithm", "encoding", "prefix"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError("verify", unknown[0], f"unknown field; use {', '.join(sorted(known))}")
        values = {key: raw[key] for key in known if raw.get(key) is not None}
        for key in ("provider", "secret", "mode", "header", "algorithm", "encoding", "prefix"):
            if key in values and not isinstance(values[key], str):
                raise ConfigError(key, "…" if key == "secret" else values[key], "expected a string")
        if "tolerance" in values and (isinstance(values["tolerance"], bool) or not isinstance(values["tolerance"], (int, float))):
            raise ConfigError("tolerance", values["tolerance"], "expected a number of seconds")
        if "provider" not in values:
            raise ConfigError("provider", None, f"the channel checks no signatures yet; pass --provider with one of {', '.join(PROVIDERS)}")
        if "secret" not in values:
            raise ConfigError("secret", None, _missing_secret(values["provider"]))
        return cls(**values)

    def to_settings(self) -> dict[str, Any]:
        """Return the setting as stored on the relay, secret included."""
        return {**self.public(), "secret": self.secret}

    def public(self) -> dict[str, Any]:
        """Return the setting without the secret, for API responses and logs."""
        visible: dict[str, Any] = {"provider": self.provider, "mode": self.mode, "tolerance": self.tolerance}
        if self.provider == "hmac":
            visible |= {"header": self.header, "algorithm": self.algorithm, "encoding": self.encoding, "prefix": self.prefix}
        return visible


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one request: the scheme and one of the four results."""

    scheme: str
    result: str

    @property
    def valid(self) -> bool:
        return self.result == VALID

    def header_value(self) -> str:
        """Return the ``X-Hookrelay-Verified`` value, such as ``github; result=valid``."""
        return f"{self.scheme}; result={self.result}"


def verify(config: VerifyConfig, headers: Headers, body: bytes, now: float) -> Verdict:
    """Check the request's signature under ``config`` and return the verdict."""
    check = _CHECKS[config.provider]
    return Verdict(config.scheme, check(config, _HeaderLookup(headers), body, now))


def standard_webhooks_key(secret: str) -> bytes:
    """Decode a Standard Webhooks secret (``whsec_`` and Base64) into the HMAC key."""
    try:
        key = base64.b64decode(secret.removeprefix(_STANDARD_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("secret", "whsec_…", "a Standard Webhooks secret is 'whsec_' followed by Base64") from None
    if not key:
        raise ConfigError("secret", "whsec_…", "the Standard Webhooks secret decodes to an empty key")
    return key


class _HeaderLookup:
    """Case-insensitive access to the first value of each header, as text."""

    def __init__(self, headers: Headers) -> None:
        self._values: dict[bytes, bytes] = {}
        for name, value in headers:
            self._values.setdefault(name.lower(), value)

    def get(self, name: str) -> str | None:
        value = self._values.get(name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1").strip()


def _hmac(key: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, message, ALGORITHMS[algorithm]).digest()


def _matches_any(expected: bytes, candidates: list[bytes]) -> bool:
    # Compare against every candidate, so the time taken does not depend on
    # which one matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def _timed(matched: bool, timestamp: int, now: float, tolerance: float) -> str:
    if not matched:
        return INVALID
    return STALE if abs(now - timestamp) > tolerance else VALID


def _from_hex(text: str) -> bytes | None:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _from_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _integer(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None


def _check_github(config: VerifyConfig, headers: _HeaderLookup, body: bytes, now: float) -> str:
    value = headers.get("X-Hub-Signature-256")
    if value is None:
        return MISSING
    scheme, _, digest = value.partition("=")
    received = _from_hex(digest) if scheme == "sha256" else None
    if received is None:
        return INVALID
    return VALID if hmac.compare_digest(_hmac(config.secret.encode(), body), received) else INVALID


def _check_stripe(config: VerifyConfig, headers: _HeaderLookup, body: bytes, now: float) -> str:
    value = headers.get("Stripe-Signature")
    if value is None:
        return MISSING
    pairs = [item.strip().partition("=") for item in value.split(",")]
    timestamps = [_integer(text) for key, _, text in pairs if key == "t"]
    signatures = [_from_hex(text) for key, _, text in pairs if key == "v1"]
    if len(timestamps) != 1 or timestamps[0] is None or not signatures:
        return INVALID
    timestamp = timestamps[0]
    expected = _hmac(config.secret.encode(), b"%d." % timestamp + body)
    matched = _matches_any(expected, [signature for signature in signatures if signature is not None])
    return _timed(matched, timestamp, now, config.tolerance)


def _check_slack(config: VerifyConfig, headers: _HeaderLookup, body: bytes, now: float) -> str:
    value = headers.get("X-Slack-Signature")
    stamp = headers.get("X-Slack-Request-Timestamp")
    if value is None or stamp is None:
        return MISSING
    timestamp = _integer(stamp)
    version, _, digest = value.partition("=")
    received = _from_hex(digest) if version == "v0" else None
    if timestamp is None or received is None:
        return INVALID
    expected = _hmac(config.secret.encode(), b"v0:%d:" % timestamp + body)
    return _timed(hmac.compare_digest(expected, received), timestamp, now, config.tolerance)


def _check_shopify(config: VerifyConfig, headers: _HeaderLookup, body: bytes, now: float) -> str:
    value = headers.get("X-Shopify-Hmac-Sha256")
    if value is None:
        return MISSING
    received = _from_base64(value)
    if received is None:
        return INVALID
    return VALID if hmac.compare_digest(_hmac(config.secret.encode(), body), received) else INVALID


def _check_standard_webhooks(config: VerifyConfig, headers: _HeaderLookup, body: bytes, now: float) -> str:
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    value = headers.get("webhook-signature")
    if message_id is None or stamp is None or value is None:
        return MISSING
    timestamp = _integer(stamp)
    if timestamp is None:
        return INVALID

    # Several signatures may be listed, separated by spaces, during a key
    # rotation; only "v1," (HMAC-SHA256) ones apply to a symmetric secret.
    signatures = [_from_base64(item[3:]) for item in value.split() if item.startswith("v1,")]
    signed = message_id.encode("latin-1") + b".%d." % timestamp + body
    expected = _hmac(standard_webhooks_key(config.secret), signed)
    matched = _matches_any(expected, [signature for signature in signatures if signature is not None])
    return _timed(matched, timestamp, now, config.tolerance)


def _check_generic(config: VerifyConfig, headers: _HeaderLookup, body: bytes, now: float) -> str:
    assert config.header is not None
    value = headers.get(config.header)
    if value is None:
        return MISSING
    if value[: len(config.prefix)].lower() != config.prefix.lower():
        return INVALID
    encoded = value[len(config.prefix) :]
    received = _from_hex(encoded) if config.encoding == "hex" else _from_base64(encoded)
    if received is None:
        return INVALID
    return VALID if hmac.compare_digest(_hmac(config.secret.encode(), body, config.algorithm), received) else INVALID


_CHECKS: dict[str, Callable[[VerifyConfig, _HeaderLookup, bytes, float], str]] = {
    "github": _check_github,
    "stripe": _check_stripe,
    "slack": _check_slack,
    "shopify": _check_shopify,
    "standard-webhooks": _check_standard_webhooks,
    "hmac": _check_generic,
}


def _missing_secret(provider: str) -> str:
    return f"the {provider} provider needs its signing secret; pass it with --secret"


def _check_choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(option, value, f"use one of {', '.join(choices)}")
