"""Sign and verify webhook bodies the way GitHub, Stripe, Slack, Shopify and Standard Webhooks do.

Every scheme is an HMAC-SHA256 over the raw body bytes, sometimes with a
timestamp or id in front, so one changed byte makes verification fail.
"""

import base64
import hashlib
import hmac


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def sign_github(secret: str, body: bytes) -> str:
    """Return the X-Hub-Signature-256 value for `body`."""
    return "sha256=" + _hmac_sha256(secret.encode(), body).hex()


def verify_github(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign_github(secret, body), signature)


def sign_stripe(secret: str, body: bytes, timestamp: int) -> str:
    """Return the Stripe-Signature value for `body` sent at `timestamp`."""
    signed = f"{timestamp}.".encode() + body
    return f"t={timestamp},v1={_hmac_sha256(secret.encode(), signed).hex()}"


def verify_stripe(secret: str, body: bytes, signature: str) -> bool:
    """Check every v1 signature in a Stripe-Signature value, ignoring the timestamp's age."""
    fields = [field.partition("=") for field in signature.split(",")]
    timestamps = [value for key, _, value in fields if key == "t"]
    if len(timestamps) != 1:
        return False
    expected = _hmac_sha256(secret.encode(), f"{timestamps[0]}.".encode() + body).hex()
    return any(hmac.compare_digest(expected, value) for key, _, value in fields if key == "v1")


def sign_slack(secret: str, body: bytes, timestamp: str) -> str:
    """Return the X-Slack-Signature value for `body` with X-Slack-Request-Timestamp `timestamp`."""
    return "v0=" + _hmac_sha256(secret.encode(), b"v0:" + timestamp.encode() + b":" + body).hex()


def verify_slack(secret: str, body: bytes, signature: str, timestamp: str) -> bool:
    return hmac.compare_digest(sign_slack(secret, body, timestamp), signature)


def sign_shopify(secret: str, body: bytes) -> str:
    """Return the X-Shopify-Hmac-Sha256 value: the Base64 HMAC of `body`."""
    return base64.b64encode(_hmac_sha256(secret.encode(), body)).decode()


def verify_shopify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign_shopify(secret, body), signature)


def sign_standard_webhooks(secret: str, body: bytes, message_id: str, timestamp: str) -> str:
    """Return the webhook-signature value. `secret` is `whsec_` followed by the Base64 key."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(_hmac_sha256(key, signed)).decode()


def verify_standard_webhooks(secret: str, body: bytes, signature: str, message_id: str, timestamp: str) -> bool:
    expected = sign_standard_webhooks(secret, body, message_id, timestamp)
    return any(hmac.compare_digest(expected, candidate) for candidate in signature.split(" "))
