"""Signature verification per provider: correct, tampered, stale and missing signatures, and the settings."""

import base64
import hashlib
import hmac
import time

import pytest

from relay_server import verify as verify_module
from relay_server.errors import ConfigError
from relay_server.verify import VerifyConfig, verify
from tests.support.providers import SECRET, STANDARD_SECRET
from tests.support.providers import signed_headers as provider_headers
from tests.support.signatures import sign_stripe

NOW = 1_700_000_000.0
BODY = b'{"id":"evt_1","type":"invoice.paid","data":{"amount":100}}'
TAMPERED = BODY.replace(b"100", b"900")
STALE = int(NOW) - 301


def signed_headers(provider: str, body: bytes, timestamp: int = int(NOW)) -> tuple[tuple[bytes, bytes], ...]:
    """Return the provider's signature headers for `body` as bytes, signed with the test secret at `timestamp`."""
    return tuple((name.encode(), value.encode()) for name, value in provider_headers(provider, body, timestamp))


def config_for(provider: str, mode: str = "mark") -> VerifyConfig:
    if provider == "standard-webhooks":
        return VerifyConfig(provider, STANDARD_SECRET, mode)
    if provider == "hmac":
        return VerifyConfig("hmac", SECRET, mode, header="X-Signature", algorithm="sha512", encoding="base64", prefix="sha512=")
    return VerifyConfig(provider, SECRET, mode)


ALL = ["github", "stripe", "slack", "shopify", "standard-webhooks", "hmac"]
TIMESTAMPED = ["stripe", "slack", "standard-webhooks"]
UNTIMED = ["github", "shopify", "hmac"]


@pytest.mark.parametrize("provider", ALL)
def test_correct_signature_valid(provider):
    """A signature made with the channel's secret over the exact body is valid."""
    verdict = verify(config_for(provider), signed_headers(provider, BODY), BODY, NOW)

    assert verdict.result == "valid"
    assert verdict.scheme == ("hmac-sha512" if provider == "hmac" else provider)


@pytest.mark.parametrize("provider", ALL)
def test_tampered_body_invalid(provider):
    """One changed byte in the body makes the signature invalid."""
    verdict = verify(config_for(provider), signed_headers(provider, BODY), TAMPERED, NOW)

    assert verdict.result == "invalid"


@pytest.mark.parametrize("provider", ALL)
def test_wrong_secret_invalid(provider):
    """A signature made with another secret is invalid."""
    other = config_for(provider)
    secret = "whsec_" + base64.b64encode(b"another-key-another-key-").decode() if provider == "standard-webhooks" else "other"
    config = VerifyConfig(other.provider, secret, header=other.header, algorithm=other.algorithm, encoding=other.encoding, prefix=other.prefix)

    assert verify(config, signed_headers(provider, BODY), BODY, NOW).result == "invalid"


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_stale_timestamp_stale(provider):
    """A correct signature whose timestamp is 301 s old is stale, a replay."""
    verdict = verify(config_for(provider), signed_headers(provider, BODY, STALE), BODY, NOW)

    assert verdict.result == "stale"


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_future_timestamp_stale(provider):
    """A timestamp more than 5 minutes ahead of the relay's clock is stale too."""
    verdict = verify(config_for(provider), signed_headers(provider, BODY, int(NOW) + 301), BODY, NOW)

    assert verdict.result == "stale"


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_timestamp_within_tolerance_valid(provider):
    """A timestamp 299 s old is still within the five-minute tolerance."""
    verdict = verify(config_for(provider), signed_headers(provider, BODY, int(NOW) - 299), BODY, NOW)

    assert verdict.result == "valid"


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_stale_and_tampered_invalid(provider):
    """A tampered body with an old timestamp is invalid, not stale: stale means authentic but old."""
    verdict = verify(config_for(provider), signed_headers(provider, BODY, STALE), TAMPERED, NOW)

    assert verdict.result == "invalid"


@pytest.mark.parametrize("provider", UNTIMED)
def test_untimed_scheme_never_stale(provider):
    """GitHub, Shopify and generic HMAC signatures carry no timestamp, so an old delivery stays valid."""
    verdict = verify(config_for(provider), signed_headers(provider, BODY), BODY, NOW + 30 * 86400)

    assert verdict.result == "valid"


@pytest.mark.parametrize("provider", ALL)
def test_missing_signature_missing(provider):
    """A request without the provider's signature headers is missing."""
    headers = ((b"Content-Type", b"application/json"),)

    assert verify(config_for(provider), headers, BODY, NOW).result == "missing"


@pytest.mark.parametrize(
    "provider, name",
    [("slack", b"x-slack-request-timestamp"), ("standard-webhooks", b"webhook-id"), ("standard-webhooks", b"webhook-timestamp")],
)
def test_missing_companion_header_missing(provider, name):
    """A signature without the timestamp or id it was computed over is missing."""
    headers = tuple(pair for pair in signed_headers(provider, BODY) if pair[0].lower() != name)

    assert verify(config_for(provider), headers, BODY, NOW).result == "missing"


@pytest.mark.parametrize(
    "provider, name, value",
    [
        ("github", b"X-Hub-Signature-256", b"sha1=0123"),
        ("github", b"X-Hub-Signature-256", b"sha256=zz"),
        ("stripe", b"Stripe-Signature", b"v1=abcd"),
        ("stripe", b"Stripe-Signature", b"t=12,t=13,v1=abcd"),
        ("stripe", b"Stripe-Signature", b"t=now,v1=abcd"),
        ("slack", b"X-Slack-Signature", b"v1=abcd"),
        ("shopify", b"X-Shopify-Hmac-Sha256", b"not base64!"),
        ("standard-webhooks", b"webhook-signature", b"v1a,abcd"),
        ("hmac", b"X-Signature", b"sha256=abcd"),
    ],
)
def test_malformed_signature_invalid(provider, name, value):
    """A signature header that cannot be parsed is invalid, never an error."""
    headers = tuple((key, value if key == name else original) for key, original in signed_headers(provider, BODY))

    assert verify(config_for(provider), headers, BODY, NOW).result == "invalid"


def test_stripe_several_v1_signatures():
    """Stripe lists one v1 signature per active secret; any one matching is enough."""
    correct = sign_stripe(SECRET, BODY, int(NOW))
    header = correct.replace("v1=", "v1=" + "0" * 64 + ",v1=", 1) + ",v0=deadbeef"

    verdict = verify(config_for("stripe"), ((b"Stripe-Signature", header.encode()),), BODY, NOW)

    assert verdict.result == "valid"


def test_standard_webhooks_several_signatures():
    """During a key rotation webhook-signature lists several space-separated signatures."""
    headers = dict(signed_headers("standard-webhooks", BODY))
    rotated = b"v1a,ignored v1," + base64.b64encode(b"x" * 32) + b" " + headers[b"webhook-signature"]
    headers[b"webhook-signature"] = rotated

    verdict = verify(config_for("standard-webhooks"), tuple(headers.items()), BODY, NOW)

    assert verdict.result == "valid"


def test_header_names_any_case():
    """Header names match in any case, as HTTP defines them."""
    headers = tuple((name.lower(), value) for name, value in signed_headers("github", BODY))

    assert verify(config_for("github"), headers, BODY, NOW).result == "valid"


@pytest.mark.parametrize("encoding, algorithm", [("hex", "sha1"), ("hex", "sha256"), ("base64", "sha256"), ("hex", "sha512")])
def test_generic_hmac_encodings(encoding, algorithm):
    """The generic scheme covers every algorithm and encoding it offers, with or without a prefix."""
    digest = hmac.new(SECRET.encode(), BODY, getattr(hashlib, algorithm)).digest()
    text = digest.hex().upper() if encoding == "hex" else base64.b64encode(digest).decode()
    config = VerifyConfig("hmac", SECRET, header="X-Sig", algorithm=algorithm, encoding=encoding)

    assert verify(config, ((b"X-Sig", text.encode()),), BODY, NOW).result == "valid"
    assert verify(config, ((b"X-Sig", text.encode()),), TAMPERED, NOW).result == "invalid"


def test_digests_compared_in_constant_time(monkeypatch):
    """Every scheme compares digests with hmac.compare_digest, whose time does not depend on the first differing byte."""
    calls = []
    real = hmac.compare_digest

    def spy(first, second):
        calls.append((len(first), len(second)))
        return real(first, second)

    monkeypatch.setattr(verify_module.hmac, "compare_digest", spy)
    for provider in ALL:
        calls.clear()
        verify(config_for(provider), signed_headers(provider, BODY), TAMPERED, NOW)
        assert calls, f"{provider} compared without hmac.compare_digest"


def test_header_value_format():
    """The verdict renders as the X-Hookrelay-Verified value."""
    verdict = verify(config_for("github"), (), BODY, NOW)

    assert verdict.header_value() == "github; result=missing"


def test_secret_hidden_from_repr_and_public():
    """The secret appears in the stored setting only: not in repr, not in the public view."""
    config = VerifyConfig("github", SECRET, "reject")

    assert SECRET not in repr(config)
    assert SECRET not in str(config.public())
    assert config.to_settings()["secret"] == SECRET
    assert VerifyConfig.from_settings(config.to_settings()) == config


@pytest.mark.parametrize(
    "raw, option",
    [
        ({"provider": "gitlab", "secret": "s"}, "provider"),
        ({"provider": "github", "secret": ""}, "secret"),
        ({"provider": "github"}, "secret"),
        ({"secret": "s"}, "provider"),
        ({"provider": "github", "secret": "s", "mode": "block"}, "mode"),
        ({"provider": "github", "secret": "s", "tolerance": 0}, "tolerance"),
        ({"provider": "github", "secret": 5}, "secret"),
        ({"provider": "standard-webhooks", "secret": "whsec_***"}, "secret"),
        ({"provider": "hmac", "secret": "s"}, "header"),
        ({"provider": "hmac", "secret": "s", "header": "X-Sig", "algorithm": "md5"}, "algorithm"),
        ({"provider": "hmac", "secret": "s", "header": "X-Sig", "encoding": "base32"}, "encoding"),
        ({"provider": "github", "secret": "s", "colour": "red"}, "verify"),
    ],
)
def test_invalid_settings_rejected(raw, option):
    """Invalid settings raise ConfigError naming the field, and never quote a secret."""
    with pytest.raises(ConfigError) as info:
        VerifyConfig.from_settings(raw)

    assert info.value.option == option
    assert "whsec_***" not in str(info.value)


def test_real_clock_smoke():
    """A signature made now verifies against the wall clock."""
    now = time.time()
    headers = signed_headers("stripe", BODY, int(now))

    assert verify(config_for("stripe"), headers, BODY, now).valid
