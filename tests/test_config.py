"""Target parsing, retry policy, units and the saved-channel book."""

import os
import stat

import pytest

from relay_client.config import ListenerConfig, Target, parse_target, split_relays
from relay_client.errors import UsageError
from relay_client.retry import Backoff, is_retryable_status, parse_retry_after
from relay_client.settings import ChannelBook, SavedChannel, default_map
from relay_client.units import parse_duration, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8000", Target("http", "localhost", 8000)),
        ("localhost:8000", Target("http", "localhost", 8000)),
        ("127.0.0.1:9000/hooks", Target("http", "127.0.0.1", 9000, "/hooks")),
        ("http://localhost:3000/api/webhooks", Target("http", "localhost", 3000, "/api/webhooks")),
        ("https://localhost", Target("https", "localhost", 443)),
        ("http://[::1]:8000", Target("http", "[::1]", 8000)),
    ],
)
def test_parse_target_forms(text, expected):
    """Every documented --forward form parses to the same Target."""
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["ftp://x", "http://u:p@localhost:1", "localhost:99999", "http://localhost:1/?q=1", ""])
def test_parse_target_rejects(text):
    """Unsupported targets raise UsageError naming --forward."""
    with pytest.raises(UsageError) as info:
        parse_target(text)
    assert info.value.option == "--forward"


@pytest.mark.parametrize(
    "base, tail, url",
    [
        ("", "/a/b?x=1", "http://h:1/a/b?x=1"),
        ("", "", "http://h:1/"),
        ("", "?x=1", "http://h:1/?x=1"),
        ("/gh", "", "http://h:1/gh"),
        ("/gh/", "/push", "http://h:1/gh/push"),
        ("/gh", "?x", "http://h:1/gh?x"),
    ],
)
def test_url_for_joins_base_and_tail(base, tail, url):
    """<target path>/<tail>?<query> as the design states."""
    assert Target("http", "h", 1, base).url_for(tail) == url


def test_listen_url_carries_group_and_window():
    """The websocket URL switches scheme and names the channel."""
    config = ListenerConfig(relay="https://relay.test/base/", channel="ch_a", token="t", group="ci", window=8)
    assert config.listen_url() == "wss://relay.test/base/api/channels/ch_a/listen?group=ci&window=8&batch=1"


@pytest.mark.parametrize(
    "status, retryable",
    [(408, True), (425, True), (429, True), (500, True), (503, True), (599, True), (501, False), (505, False),
     (400, False), (404, False), (302, False), (200, False)],
)
def test_retryable_statuses(status, retryable):
    """408, 425, 429 and 5xx but 501 and 505 are retried; other answers are final."""
    assert is_retryable_status(status) is retryable


def test_backoff_grows_with_jitter_and_cap():
    """Delays double from the base, stay within [ceiling/2, ceiling] and stop at the cap."""
    backoff = Backoff(base=0.5, cap=4)
    assert [backoff.delay(n, rng=lambda: 0.0) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert [backoff.delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_retry_after_replaces_backoff_and_is_capped():
    """Retry-After wins over the computed delay, up to max_retry_after."""
    backoff = Backoff(max_retry_after=60)
    assert backoff.delay(1, retry_after=7) == 7
    assert backoff.delay(1, retry_after=3600) == 60


def test_parse_retry_after_forms():
    """Seconds and HTTP dates are understood; garbage is ignored."""
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40) == 60
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("text, size", [("1048576", 1048576), ("25MiB", 25 * 1024 * 1024), ("10MB", 10_000_000), ("512kib", 524288)])
def test_parse_size(text, size):
    """Sizes accept bytes and binary or decimal units."""
    assert parse_size(text, "--max-body") == size


@pytest.mark.parametrize("text, seconds", [("45", 45), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("250ms", 0.25)])
def test_parse_duration(text, seconds):
    """Durations accept seconds and the units ms, s, m, h, d."""
    assert parse_duration(text, "--timeout") == seconds


def test_bad_units_name_the_option():
    """A bad size or duration raises UsageError with the option and a hint."""
    with pytest.raises(UsageError) as info:
        parse_size("lots", "--max-body")
    assert str(info.value) == "invalid --max-body 'lots': use bytes or a size such as 512KiB, 25MiB or 10MB"


def test_channel_book_remembers_first_channel_as_default(tmp_path):
    """The first saved channel of a relay is its default; updates keep the position."""
    book = ChannelBook(tmp_path / "channels.json")
    book.save(SavedChannel("http://r/", "ch_1", "t1", "u1"))
    book.save(SavedChannel("http://r", "ch_2", "t2", "u2"))
    book.save(SavedChannel("http://r", "ch_1", "t1b", "u1"))
    assert book.default_for("http://r") == SavedChannel("http://r", "ch_1", "t1b", "u1")
    assert book.find("http://r", "ch_2").token == "t2"


def test_channel_book_file_is_private(tmp_path):
    """The file holding tokens is readable by its owner only."""
    book = ChannelBook(tmp_path / "channels.json")
    book.save(SavedChannel("http://r", "ch_1", "t1", "u1"))
    assert stat.S_IMODE(os.stat(book.path).st_mode) == 0o600


def test_default_map_merges_shared_and_command_keys():
    """Top-level keys reach every command; a command's table overrides them."""
    mapping = default_map({"relay": "http://a", "listen": {"relay": "http://b", "max-attempts": 3}, "serve": {"port": 9}})
    assert mapping["listen"] == {"relay": "http://b", "max_attempts": 3}
    assert mapping["serve"] == {"relay": "http://a", "port": 9}
    assert mapping["channel"]["create"] == {"relay": "http://a"}


def test_relay_list_rotates_on_reconnect():
    """A comma-separated --relay gives one URL per connection attempt, in turn."""
    config = ListenerConfig(relay="http://a:1/, http://b:2", channel="ch_x", token="t")
    assert config.relays == ["http://a:1", "http://b:2"]
    assert [config.relay_at(attempt) for attempt in range(3)] == ["http://a:1", "http://b:2", "http://a:1"]
    assert config.listen_url(1).startswith("ws://b:2/api/channels/ch_x/listen?")


def test_empty_relay_list_rejected():
    """A --relay value with no URL raises UsageError."""
    with pytest.raises(UsageError) as info:
        split_relays(" , ")
    assert str(info.value) == "invalid --relay ' , ': give a relay URL such as https://relay.example.com"
