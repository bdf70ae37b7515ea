"""Fixtures for the end-to-end tests: a relay shared by the session, process runners and capturing targets.

Every process and server binds to 127.0.0.1 and is stopped in teardown.
With HOOKRELAY_TESTS_BACKEND=redis every relay the tests start keeps its
events in one redis-server started for the session instead of SQLite.
"""

import os

import pytest

pytest.register_assert_rewrite("tests.support.checks")

import pytest_asyncio  # noqa: E402

from tests.support.processes import ProcessRunner, Relay  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.target import CapturingTarget  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """A redis-server on a free loopback port for the whole session; tests flush it or use their own keys."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def relay_backend(request, tmp_path_factory) -> str:
    """Choose the store of the relays the tests start, from HOOKRELAY_TESTS_BACKEND (sqlite or redis)."""
    backend = os.environ.get("HOOKRELAY_TESTS_BACKEND", "sqlite")
    if backend not in ("sqlite", "redis"):
        raise pytest.UsageError(f"HOOKRELAY_TESTS_BACKEND must be sqlite or redis, not {backend!r}")
    if backend == "sqlite":
        yield backend
        return
    # A server apart from `redis_server`, which store tests flush.
    server = RedisServer(tmp_path_factory.mktemp("relay-redis"))
    server.start()
    ProcessRunner.store_url = server.url
    try:
        yield backend
    finally:
        ProcessRunner.store_url = None
        server.stop()


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
