"""Fixtures for the end-to-end tests: a relay shared by the session, process runners and capturing targets.

Every process and server binds to 127.0.0.1 and is stopped in teardown.
"""

import pytest

pytest.register_assert_rewrite("tests.support.checks")

import pytest_asyncio  # noqa: E402

from tests.support.processes import ProcessRunner, Relay  # noqa: E402
from tests.support.target import CapturingTarget  # noqa: E402


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_relay(tmp_path_factory) -> Relay:
    """A relay for the tests that each use their own channel and so cannot disturb one another."""
    runner = ProcessRunner(tmp_path_factory.mktemp("shared-relay"))
    try:
        yield await runner.start_relay(runner.log_dir / "data")
    finally:
        await runner.stop_all_async()


@pytest_asyncio.fixture
async def runner(tmp_path, start_target) -> ProcessRunner:
    """A process runner whose processes log into the test's temporary folder.

    It depends on `start_target` so that listeners stop before their targets
    and never spend their shutdown grace period retrying a closed target.
    """
    process_runner = ProcessRunner(tmp_path)
    try:
        yield process_runner
    finally:
        await process_runner.stop_all_async()


@pytest_asyncio.fixture
async def start_target():
    """A factory of started capturing targets, all stopped in teardown."""
    targets: list[CapturingTarget] = []

    async def start() -> CapturingTarget:
        target = CapturingTarget()
        await target.start()
        targets.append(target)
        return target

    try:
        yield start
    finally:
        for target in targets:
            await target.stop()


@pytest_asyncio.fixture
async def target(start_target) -> CapturingTarget:
    """A started capturing target."""
    return await start_target()
