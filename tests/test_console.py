"""The listener's --json lines: one compact JSON object per line, in ASCII whatever the path holds."""

import json

from relay_client.console import json_line


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
