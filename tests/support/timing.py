"""Time unit for the tests and a bounded wait.

Every timeout in the tests is a multiple of `MS`. Set
HOOKRELAY_TESTS_TIMEOUT_FACTOR to a number above 1 on a slow machine to
stretch all of them at once.
"""

import asyncio
import os
import time
from collections.abc import Callable

MS = 0.001 * float(os.environ.get("HOOKRELAY_TESTS_TIMEOUT_FACTOR", "1"))

POLL_INTERVAL = 20 * MS


async def wait_until(condition: Callable[[], bool], timeout: float, description: str) -> float:
    """Poll `condition` until it is true and return the seconds waited.

    Raises AssertionError naming `description` when `timeout` seconds pass first.
    """
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {description}")
        await asyncio.sleep(POLL_INTERVAL)
    return time.monotonic() - started
