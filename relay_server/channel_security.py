"""A channel's security and noise settings: signature checks, de-duplication, event types.

They live in the channel's ``settings`` dict on the relay:

* ``verify``: a :class:`~relay_server.verify.VerifyConfig` as a dict, secret
  included. API responses show it through :func:`public_view`, which leaves
  the secret out;
* ``dedupe_window``: seconds during which a provider's redelivery is
  answered with the first event's id instead of being stored (default
  24 h, 0 turns it off);
* ``event_type``: ``{"header": name}`` or ``{"json": "dotted.path"}``, where
  the channel's event type comes from when its provider is not recognised.

:func:`apply_patch` takes the same keys from a ``PATCH /api/channels/<id>``
body; ``null`` removes a setting.
"""

from __future__ import annotations

from typing import Any

from relay_server import dedupe
from relay_server.errors import ConfigError
from relay_server.event_types import check_source
from relay_server.verify import VerifyConfig

KEYS = ("verify", "dedupe_window", "event_type")


def apply_patch(settings: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Return ``settings`` with the security keys of ``patch`` applied; raises :class:`ConfigError`."""
    updated = dict(settings)
    if "verify" in patch:
        _set(updated, "verify", _patched_verify(settings.get("verify"), patch["verify"]))
    if "dedupe_window" in patch:
        window = patch["dedupe_window"]
        _set(updated, "dedupe_window", None if window is None else dedupe.check_window(window))
    if "event_type" in patch:
        source = patch["event_type"]
        _set(updated, "event_type", None if source is None else check_source(source))
    return updated


def verify_config(settings: dict[str, Any]) -> VerifyConfig | None:
    """Return the channel's signature check, or None when it checks nothing."""
    raw = settings.get("verify")
    return None if raw is None else VerifyConfig.from_settings(raw)


def public_view(settings: dict[str, Any]) -> dict[str, Any]:
    """Return the security settings for an API response, without any secret."""
    try:
        config = verify_config(settings)
    except ConfigError as exc:
        # Only a damaged database row gets here; the error never quotes a secret.
        return {"verify": {"invalid": str(exc)}, "dedupe_window": dedupe.window_of(settings), "event_type": settings.get("event_type")}
    return {
        "verify": None if config is None else config.public(),
        "dedupe_window": dedupe.window_of(settings),
        "event_type": settings.get("event_type"),
    }


def _patched_verify(current: Any, change: Any) -> dict[str, Any] | None:
    """Merge a ``verify`` change into the stored one.

    A change of provider starts afresh, so a secret is never carried over
    to another provider. Mode ``off`` removes the setting with its secret.
    """
    if change is None:
        return None
    if not isinstance(change, dict):
        raise ConfigError("verify", change, "expected a JSON object or null")
    base = current if isinstance(current, dict) and change.get("provider") in (None, current.get("provider")) else {}
    merged = {**base, **change}
    if merged.get("mode") == "off":
        return None
    return VerifyConfig.from_settings(merged).to_settings()


def _set(settings: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        settings.pop(key, None)
    else:
        settings[key] = value
