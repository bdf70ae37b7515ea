"""Event ids: format, time order, uniqueness, and no repeats across a fork."""

import os
import re

import pytest

from relay_server.ids import EVENT_PREFIX, new_event_id

EVENT_ID = re.compile(r"evt_[0-9a-f]{12}[0-9a-f]{20}")


def test_event_id_format():
    """An id is the prefix, 12 hex digits of milliseconds and 20 random hex digits."""
    event_id = new_event_id(now=1.5)

    assert EVENT_ID.fullmatch(event_id)
    assert event_id.startswith(EVENT_PREFIX + "0000000005dc")


def test_event_ids_sort_by_time():
    assert new_event_id(now=1000.0) < new_event_id(now=1000.001) < new_event_id(now=2000.0)


def test_event_ids_unique():
    """Ids drawn in one millisecond differ."""
    ids = [new_event_id(now=1000.0) for _ in range(5000)]

    assert len(set(ids)) == len(ids)
    assert all(EVENT_ID.fullmatch(event_id) for event_id in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_draws_fresh_ids():
    """A forked child never hands out an id its parent hands out next."""
    new_event_id(now=1000.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, new_event_id(now=1000.0).encode())
        os._exit(0)
    os.close(write_end)
    parent_id = new_event_id(now=1000.0)
    child_id = os.read(read_end, 100).decode()
    os.close(read_end)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert EVENT_ID.fullmatch(child_id)
    assert child_id != parent_id
