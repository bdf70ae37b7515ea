"""Signed webhook requests the way each provider sends them, with test secrets only.

`signed_headers` returns the provider's signature headers for a body and a
timestamp; the `channel verify` options that make a relay check them come
from `verify_options`.
"""

import base64
import hashlib
import hmac

from .signatures import sign_github, sign_shopify, sign_slack, sign_standard_webhooks, sign_stripe

SECRET = "test-secret-not-real"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

ALL_PROVIDERS = ("github", "stripe", "slack", "shopify", "standard-webhooks", "hmac")
# Schemes whose signature covers a timestamp, so a replay shows as stale.
TIMESTAMPED = ("stripe", "slack", "standard-webhooks")


def signed_headers(provider: str, body: bytes, timestamp: int, message_id: str = "msg_1") -> list[tuple[str, str]]:
    """Return the provider's signature headers for `body`, signed with the test secret at `timestamp`."""
    if provider == "github":
        return [("X-Hub-Signature-256", sign_github(SECRET, body))]
    if provider == "stripe":
        return [("Stripe-Signature", sign_stripe(SECRET, body, timestamp))]
    if provider == "slack":
        return [("X-Slack-Request-Timestamp", str(timestamp)), ("X-Slack-Signature", sign_slack(SECRET, body, str(timestamp)))]
    if provider == "shopify":
        return [("X-Shopify-Hmac-Sha256", sign_shopify(SECRET, body))]
    if provider == "standard-webhooks":
        signature = sign_standard_webhooks(STANDARD_SECRET, body, message_id, str(timestamp))
        return [("webhook-id", message_id), ("webhook-timestamp", str(timestamp)), ("webhook-signature", signature)]
    if provider == "hmac":
        digest = hmac.new(SECRET.encode(), body, hashlib.sha512).digest()
        return [("X-Signature", "sha512=" + base64.b64encode(digest).decode())]
    raise ValueError(f"unknown provider {provider}")


def secret_for(provider: str) -> str:
    return STANDARD_SECRET if provider == "standard-webhooks" else SECRET


def verify_options(provider: str) -> list[str]:
    """Return the `hookrelay channel verify` options for `provider` with its test secret."""
    options = ["--provider", provider, "--secret", secret_for(provider)]
    if provider == "hmac":
        options += ["--header", "X-Signature", "--algorithm", "sha512", "--encoding", "base64", "--prefix", "sha512="]
    return options


def scheme_of(provider: str) -> str:
    return "hmac-sha512" if provider == "hmac" else provider
