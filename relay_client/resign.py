"""Re-sign forwarded events with Standard Webhooks headers: ``listen --sign-secret``.

Local code can then verify every event with one secret, whatever provider
sent it. Each attempt gets fresh headers, replacing any the sender sent
under the same names:

* ``webhook-id``: the hookrelay event id, the same on every attempt;
* ``webhook-timestamp``: the time of the attempt, in Unix seconds;
* ``webhook-signature``: ``v1,`` and the Base64 HMAC-SHA256, keyed with
  the secret's Base64-decoded bytes, of ``id.timestamp.body``.

Signing per attempt keeps a retry within a receiver's timestamp tolerance
(Standard Webhooks libraries allow five minutes), however long the retries
took.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable

from relay_client.errors import UsageError
from relay_server.protocol import Event

SECRET_PREFIX = "whsec_"
_NAMES = frozenset({b"webhook-id", b"webhook-timestamp", b"webhook-signature"})

Headers = list[tuple[bytes, bytes]]


class StandardWebhooksSigner:
    """Signs outgoing requests with one ``whsec_`` secret."""

    def __init__(self, secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._key = decode_secret(secret)
        self._clock = clock

    def __repr__(self) -> str:
        return "StandardWebhooksSigner(secret=<hidden>)"

    def sign(self, event: Event, headers: Headers) -> Headers:
        """Return ``headers`` without the sender's Standard Webhooks headers, plus fresh ones."""
        timestamp = str(int(self._clock()))
        signed = f"{event.id}.{timestamp}.".encode() + event.body
        signature = base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest())
        remaining = [(name, value) for name, value in headers if name.lower() not in _NAMES]
        return remaining + [
            (b"webhook-id", event.id.encode()),
            (b"webhook-timestamp", timestamp.encode()),
            (b"webhook-signature", b"v1," + signature),
        ]


def decode_secret(secret: str) -> bytes:
    """Decode ``whsec_<Base64>`` into the HMAC key; raises :class:`UsageError`."""
    if not secret.startswith(SECRET_PREFIX):
        raise UsageError("--sign-secret", "…", "use a Standard Webhooks secret: whsec_ followed by Base64")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("--sign-secret", "whsec_…", "the part after whsec_ is not valid Base64") from None
    if len(key) < 16:
        raise UsageError("--sign-secret", "whsec_…", "the key must decode to at least 16 bytes")
    return key
