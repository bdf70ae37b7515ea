"""De-duplication keys and the SQLite store's handling of redeliveries; channel settings patches."""

import asyncio
import json
import time

import pytest

from relay_server.channel_security import apply_patch, public_view
from relay_server import dedupe
from relay_server.dedupe import DEFAULT_WINDOW, dedupe_key, window_of
from relay_server.errors import ChannelFull, ConfigError, DuplicateEvent
from relay_server.event_types import lowered_headers
from relay_server.ids import hash_token
from relay_server.protocol import DeliveryResult
from relay_server.store import ChannelRecord, NewEvent, Retention, SQLiteStore

JSON = (b"Content-Type", b"application/json")


@pytest.mark.parametrize(
    "headers, body, key",
    [
        (((b"X-GitHub-Delivery", b"72d3162e-cc78-11e3-81ab-4c9367dc0958"),), b"{}", "github:72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        (((b"webhook-id", b"msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),), b"{}", "webhook:msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
        (((b"svix-id", b"msg_1"),), b"{}", "webhook:msg_1"),
        ((JSON, (b"Stripe-Signature", b"t=1,v1=a")), b'{"id":"evt_1N","type":"charge.succeeded"}', "stripe:evt_1N"),
        ((JSON,), b'{"id":"evt_2","object":"event"}', "stripe:evt_2"),
        ((JSON,), b'{"id":"order_7"}', None),
        (((b"Content-Type", b"text/plain"), (b"Stripe-Signature", b"t=1")), b'{"id":"evt_3"}', None),
        (((b"X-GitHub-Delivery", b""),), b"{}", None),
    ],
)
def test_dedupe_keys(headers, body, key):
    """A provider's delivery id is the key; requests without one have none."""
    assert dedupe_key(headers, body) == key


def test_window_default_and_off():
    assert window_of({}) == DEFAULT_WINDOW == 86400
    assert window_of({"dedupe_window": 0}) == 0


def new_event(channel, event_id, key, window=60.0, received_at=None):
    return NewEvent(
        id=event_id,
        channel=channel,
        method="POST",
        target=b"/",
        headers=((b"X-GitHub-Delivery", key.encode()),),
        body=b"{}",
        received_at=received_at or time.time(),
        dedupe_key=f"github:{key}",
        dedupe_window=window,
        verification="github; result=valid",
    )


@pytest.fixture
async def store(tmp_path):
    async with SQLiteStore(tmp_path, retention=Retention(max_events=3)) as opened:
        for channel in ("ch_a", "ch_b"):
            await opened.create_channel(ChannelRecord(channel, hash_token("t"), time.time()))
        yield opened


async def test_redelivery_stored_once(store):
    """A second event with the same key raises DuplicateEvent naming the first event, and is not stored."""
    await store.append(new_event("ch_a", "evt_1", "d1"))

    with pytest.raises(DuplicateEvent) as info:
        await store.append(new_event("ch_a", "evt_2", "d1"))

    assert info.value.event_id == "evt_1"
    assert [event.id for event in await store.claim("ch_a", "default", "c", 10)] == ["evt_1"]


async def test_concurrent_redeliveries_stored_once(store):
    """Copies that arrive together land in one group commit and still store one event."""
    outcomes = await asyncio.gather(
        *(store.append(new_event("ch_a", f"evt_{n}", "same")) for n in range(3)), return_exceptions=True
    )

    stored = [outcome for outcome in outcomes if isinstance(outcome, int)]
    duplicates = [outcome for outcome in outcomes if isinstance(outcome, DuplicateEvent)]
    assert len(stored) == 1
    assert len(duplicates) == 2
    assert {duplicate.event_id for duplicate in duplicates} == {"evt_0"}


async def test_expired_window_stores_again(store):
    """After the window the same delivery id is a new event."""
    old = time.time() - 120
    await store.append(new_event("ch_a", "evt_old", "d2", window=60, received_at=old))

    await store.append(new_event("ch_a", "evt_new", "d2", window=60))

    assert [event.id for event in await store.claim("ch_a", "default", "c", 10)] == ["evt_old", "evt_new"]


async def test_zero_window_keeps_every_copy(store):
    await store.append(new_event("ch_a", "evt_1", "d3", window=0))
    await store.append(new_event("ch_a", "evt_2", "d3", window=0))

    assert len(await store.claim("ch_a", "default", "c", 10)) == 2


async def test_channels_deduplicate_apart(store):
    """The same delivery id on two channels is two events."""
    await store.append(new_event("ch_a", "evt_a", "d4"))
    await store.append(new_event("ch_b", "evt_b", "d4"))

    assert len(await store.claim("ch_b", "default", "c", 10)) == 1


async def test_redelivery_answered_when_full(store):
    """A full channel still recognises a redelivery instead of answering 'full'."""
    for n in range(3):
        await store.append(new_event("ch_a", f"evt_{n}", f"k{n}"))

    with pytest.raises(ChannelFull):
        await store.append(new_event("ch_a", "evt_x", "fresh"))
    with pytest.raises(DuplicateEvent):
        await store.append(new_event("ch_a", "evt_y", "k0"))


async def test_rejected_append_forgets_key(store):
    """The key of an event that was not stored (channel full) does not block the provider's retry."""
    for n in range(3):
        await store.append(new_event("ch_a", f"evt_{n}", f"k{n}"))
    with pytest.raises(ChannelFull):
        await store.append(new_event("ch_a", "evt_x", "retry-me"))
    claimed = await store.claim("ch_a", "default", "c", 10)
    await store.ack("ch_a", "default", [DeliveryResult(event.id, "delivered", 200) for event in claimed])

    await store.append(new_event("ch_a", "evt_retry", "retry-me"))

    assert [event.id for event in await store.claim("ch_a", "default", "c", 10)] == ["evt_retry"]


async def test_verification_round_trip(store):
    """The relay's verdict is stored with the event and handed out with it."""
    await store.append(new_event("ch_a", "evt_v", "d5"))

    [event] = await store.claim("ch_a", "default", "c", 1)

    assert event.verification == "github; result=valid"


async def test_prune_forgets_expired_keys(store, tmp_path):
    old = time.time() - 120
    await store.append(new_event("ch_a", "evt_1", "d6", window=60, received_at=old))

    await store.prune(time.time())

    await store.append(new_event("ch_a", "evt_2", "d6", window=60))


async def test_update_settings_persists(tmp_path):
    """update_settings survives a reopen of the database."""
    async with SQLiteStore(tmp_path) as store:
        await store.create_channel(ChannelRecord("ch_s", hash_token("t"), time.time()))
        await store.update_settings("ch_s", {"dedupe_window": 60.0})
    async with SQLiteStore(tmp_path) as store:
        channel = await store.get_channel("ch_s")

    assert channel.settings == {"dedupe_window": 60.0}


def test_patch_verify_merges_and_hides_secret():
    """A mode change keeps the stored secret; the public view never shows it."""
    settings = apply_patch({}, {"verify": {"provider": "github", "secret": "s3cr3t-value", "mode": "mark"}})
    settings = apply_patch(settings, {"verify": {"mode": "reject"}})

    assert settings["verify"]["secret"] == "s3cr3t-value"
    assert settings["verify"]["mode"] == "reject"
    assert "s3cr3t-value" not in json.dumps(public_view(settings))


def test_patch_new_provider_needs_secret():
    """Switching provider never carries the old secret over."""
    settings = apply_patch({}, {"verify": {"provider": "github", "secret": "s3cr3t-value"}})

    with pytest.raises(ConfigError) as info:
        apply_patch(settings, {"verify": {"provider": "shopify"}})

    assert info.value.option == "secret"


def test_patch_off_removes_secret():
    settings = apply_patch({}, {"verify": {"provider": "github", "secret": "s3cr3t-value"}})

    assert "verify" not in apply_patch(settings, {"verify": {"mode": "off"}})
    assert "verify" not in apply_patch(settings, {"verify": None})


@pytest.mark.parametrize("patch", [{"dedupe_window": -1}, {"dedupe_window": "1d"}, {"dedupe_window": 10**9}, {"event_type": {"x": 1}}])
def test_patch_rejects_bad_values(patch):
    with pytest.raises(ConfigError):
        apply_patch({}, patch)


def test_patch_keeps_other_settings():
    """Security keys leave the rest of the settings, such as the response mode, alone."""
    settings = apply_patch({"response": {"mode": "sync"}}, {"dedupe_window": 0, "event_type": {"header": "X-Kind"}})

    assert settings == {"response": {"mode": "sync"}, "dedupe_window": 0.0, "event_type": {"header": "X-Kind"}}


def test_slack_request_key_ignores_retry_headers():
    """A Slack retry has the same key as its first request: timestamp and signature."""
    first = ((b"X-Slack-Request-Timestamp", b"1700000000"), (b"X-Slack-Signature", b"v0=abc"))
    retry = first + ((b"X-Slack-Retry-Num", b"1"), (b"X-Slack-Retry-Reason", b"http_timeout"))
    assert dedupe.dedupe_key(first, b"{}") == "slack:1700000000:v0=abc"
    assert dedupe.dedupe_key(retry, b"{}") == dedupe.dedupe_key(first, b"{}")


def test_retry_note_names_slack_retry():
    """The retry note carries Slack's retry number and reason."""
    assert dedupe.retry_note(((b"x-slack-retry-num", b"3"), (b"X-Slack-Retry-Reason", b"http_error"))) == "slack retry 3 (http_error)"
    assert dedupe.retry_note(((b"X-Other", b"1"),)) is None


@pytest.mark.parametrize("pass_lowered", [False, True])
def test_repeated_delivery_header_first_wins(pass_lowered):
    """The first of repeated delivery id headers is the key, with or without a pre-built lowered map."""
    sent = ((b"x-github-delivery", b"first"), (b"X-GitHub-Delivery", b"second"))
    lowered = lowered_headers(sent) if pass_lowered else None

    assert dedupe_key(sent, b"{}", lowered=lowered) == "github:first"


def test_delivery_header_skips_blank_to_next_provider():
    """A blank GitHub delivery id falls through to the Standard Webhooks id."""
    sent = ((b"X-GitHub-Delivery", b"  "), (b"webhook-id", b"msg_5"))

    assert dedupe_key(sent, b"{}") == "webhook:msg_5"


def test_stripe_key_uses_given_payload():
    """The Stripe key comes from the caller's lazy payload, so the body is not parsed again."""
    sent = (JSON, (b"Stripe-Signature", b"t=1,v1=a"))

    assert dedupe_key(sent, b"", payload=lambda: {"id": "evt_given"}) == "stripe:evt_given"
