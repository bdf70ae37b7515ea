"""Target parsing, retry policy, units, the saved-channel book and the config file."""

import json
import os
import stat
from pathlib import Path

import pytest

from relay_client.config import ListenerConfig, Target, check_http_url, parse_target, split_relays
from relay_client.errors import UsageError
from relay_client.retry import Backoff, is_retryable_status, parse_retry_after
from relay_client.settings import ChannelBook, SavedChannel, default_map, load_config_file, unknown_keys
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
    """408, 425, 429 and 5xx but 501 and 505 are retried, and other statuses are final."""
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


@pytest.mark.parametrize("text", ["0", "0s", "0ms", "0.0"])
def test_positive_duration_rejects_zero(text):
    """A duration that must be above zero, such as the listener's --timeout, rejects zero with a hint."""
    with pytest.raises(UsageError) as info:
        parse_duration(text, "--timeout", positive=True)

    assert info.value.option == "--timeout"
    assert "above zero" in info.value.hint


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


@pytest.mark.parametrize("url", ["http://127.0.0.1:8787", "https://relay.example.com", "http://[::1]:8787/base", "HTTP://localhost"])
def test_check_http_url_accepts(url):
    """http and https URLs with a host and an optional port and path pass."""
    check_http_url("--relay", url, "https://relay.example.com")


@pytest.mark.parametrize(
    "url, message",
    [
        ("127.0.0.1:8787", "invalid --relay '127.0.0.1:8787': the URL needs http:// or https:// in front, such as http://127.0.0.1:8787"),
        ("", "invalid --relay '': give a URL such as https://relay.example.com"),
        ("ws://127.0.0.1:8787", "invalid --relay 'ws://127.0.0.1:8787': use an http:// or https:// URL, not ws://"),
        ("http://127.0.0.1:65536", "invalid --relay 'http://127.0.0.1:65536': port 65536 is out of range; use a port from 1 to 65535"),
        ("http://relay/?x=1", "invalid --relay 'http://relay/?x=1': the URL takes no query or fragment"),
    ],
)
def test_check_http_url_rejects(url, message):
    """Each invalid relay URL is named with what is wrong."""
    with pytest.raises(UsageError) as caught:
        check_http_url("--relay", url, "https://relay.example.com")
    assert str(caught.value) == message


def test_unknown_keys_named_with_guess():
    """Keys and tables no option reads are listed, with the closest known name."""
    known = {"": {"relay", "max_attempts", "as_json"}, "listen": {"relay", "max_attempts"}, "serve": {"port"}, "channel": set(), "events": set()}
    config = {"relay": "http://a", "json": True, "relya": "x", "listen": {"max-attemps": 3, "max-attempts": 3}, "lisen": {}, "serve": {"port": 1}}

    assert unknown_keys(config, known) == [
        "unknown key 'relya' is ignored; did you mean 'relay'?",
        "unknown key 'max-attemps' in [listen] is ignored; did you mean 'max-attempts'?",
        "unknown table [lisen] is ignored; did you mean 'listen'?",
    ]


def test_config_section_must_be_table(tmp_path):
    """A command's name given a plain value instead of a table is an error naming the file."""
    path = tmp_path / "config.toml"
    path.write_text("listen = 5\n")
    with pytest.raises(UsageError) as caught:
        load_config_file(path)
    assert str(caught.value) == f"invalid listen 5 in {path}: it must be a table, [listen]"


# -- the config file as the `hookrelay` command reads it ------------------------

EXIT_USAGE = 2


def write_config(runner, text: str) -> Path:
    path = runner.log_dir / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def test_unknown_config_key_warns(runner):
    """An unknown key is reported on stderr with the file and the key, and the command still runs."""
    path = write_config(runner, 'relay = "http://127.0.0.1:9"\nrelya = "x"\n\n[listen]\nmax-attemps = 3\n')

    exit_code, stdout, stderr = await runner.run(["channel", "list", "--json"])

    assert exit_code == 0, stderr
    assert json.loads(stdout) == []
    assert stderr.splitlines() == [
        f"hookrelay: warning: {path}: unknown key 'relya' is ignored; did you mean 'relay'?",
        f"hookrelay: warning: {path}: unknown key 'max-attemps' in [listen] is ignored; did you mean 'max-attempts'?",
    ]


async def test_known_config_keys_no_warning(runner):
    """Keys of options, at the top level and in every table, raise no warning."""
    write_config(
        runner,
        'relay = "http://127.0.0.1:9"\njson = true\n\n[listen]\nforward = "3000"\nmax-attempts = 20\nfilter = "json:a"\n\n'
        '[serve]\nport = 8787\n\n[channel]\nresponse = "sync"\n\n[events]\ntype = "push"\nlimit = 5\n',
    )

    exit_code, _, stderr = await runner.run(["channel", "list"])

    assert exit_code == 0, stderr
    assert stderr == ""


async def test_bad_config_value_names_file(runner):
    """A value of the wrong type in the file is a usage error naming the file and the key, not the variable."""
    path = write_config(runner, '[listen]\nmax-attempts = "lots"\n')

    exit_code, _, stderr = await runner.run(["listen", "--relay", "http://127.0.0.1:9", "--channel", "c", "--token", "t"])

    assert exit_code == EXIT_USAGE, stderr
    assert stderr.startswith(f"hookrelay: error: invalid max-attempts 'lots' in {path}: "), stderr
    assert "HOOKRELAY_MAX_ATTEMPTS" not in stderr
    assert stderr.count("\n") == 1


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param('relay = "127.0.0.1:8787"\n', "invalid --relay '127.0.0.1:8787' in {path}: the URL needs http://", id="relay"),
        pytest.param('[listen]\nforward = "ftp://x"\n', "invalid --forward 'ftp://x' in {path}: use a port (8000)", id="forward"),
    ],
)
async def test_invalid_config_value_names_file(text, message, runner):
    """A value that the command rejects names the config file it came from."""
    path = write_config(runner, text)

    exit_code, _, stderr = await runner.run(["listen", "--channel", "c", "--token", "t"])

    assert exit_code == EXIT_USAGE, stderr
    assert stderr.startswith("hookrelay: error: " + message.format(path=path)), stderr
