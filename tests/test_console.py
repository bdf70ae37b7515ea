"""The listener console: --json lines in compact ASCII JSON, and the drain progress after a reconnect."""

import dataclasses
import io
import json
from datetime import datetime, timezone

import pytest

from rich.console import Console

from relay_client.config import parse_target
from relay_client.console import ListenerConsole, json_line, utc_timestamp
from relay_server.protocol import DeliveryResult, Event, Welcome


def test_json_line_is_one_line_that_parses_back():
    """A plain record comes back unchanged from its line."""
    record = {"event_id": "evt_1", "path": "/a?b=1", "status": 200, "duration_ms": 1.25, "error": None}
    line = json_line(record)
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert json.loads(line) == record


def test_json_line_escapes_text_beyond_ascii():
    """Non-ASCII text and a line separator in a path are escaped, so the line stays ASCII and whole."""
    record = {"event_id": "evt_2", "path": "/caf\u00e9/\u2028/\U0001f600", "error": "HTTP 500"}
    line = json_line(record)
    assert line.isascii()
    assert line.count("\n") == 1
    assert json.loads(line) == record


@pytest.mark.parametrize("now", [0.0, 951782400.5, 1764921599.999, 1764921600.0, 1764921600.0625, 1764921600.9999996, 4102444800.25])
def test_utc_timestamp_matches_isoformat(now):
    """The --json time field, with its seconds part formatted once per second, reads as datetime formats it."""
    expected = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds")
    assert utc_timestamp(now) == expected


def test_utc_timestamp_follows_the_second():
    """Two times in different seconds never share the cached part."""
    assert [utc_timestamp(now) for now in (1764921600.5, 1764921601.5, 1764921600.75)] == [
        "2025-12-05T08:00:00.500+00:00",
        "2025-12-05T08:00:01.500+00:00",
        "2025-12-05T08:00:00.750+00:00",
    ]


def test_drain_counts_events_acknowledged_again():
    """A held event acknowledged from a remembered result counts towards the drain, so the drain line still comes."""
    output = io.StringIO()
    console = ListenerConsole(Console(file=output, width=200), parse_target("127.0.0.1:9"))
    welcome = Welcome(channel="ch_a", group="default", consumer="c", window=4, max_body=1024, backlog=2, heartbeat=10.0)
    event = Event(id="evt_1", channel="ch_a", seq=1, method="POST", target=b"", headers=(), body=b"{}", received_at=0.0)

    console.connected(welcome)
    console.finished(event, DeliveryResult("evt_1", "delivered", 200))
    console.acknowledged_again(dataclasses.replace(event, id="evt_2", seq=2, delivery_count=2))
    console.flush()

    assert "draining 2 held events" in output.getvalue()
    assert "drained 2 of 2 held events" in output.getvalue()
