"""Two relay nodes on one Redis: cross-node delivery, node and Redis failures, retention and sync answers.

Each test starts its own redis-server (append-only file, fsync on every
write) and two `hookrelay serve --store redis://…` processes on loopback.
They skip without `redis-server`, except in CI, where they fail.
"""

import asyncio

import pytest

from relay_server.session import TOKEN_CHECK_INTERVAL
from tests.support.api import api_request, poll
from tests.support.checks import accepted_event_id, post_webhook
from tests.support.http import send_request
from tests.support.processes import Channel, ProcessRunner, Relay
from tests.support.redis_server import RedisServer
from tests.support.timing import MS

DELIVERY_TIMEOUT = 15_000 * MS
CONNECT_TIMEOUT = 15_000 * MS
# Nodes take a silent node for dead after this; the default is 15 s.
NODE_TIMEOUT = "2s"
FAILOVER_TIMEOUT = 30_000 * MS
RECOVERY_TIMEOUT = 30_000 * MS
EVENTS = 20
# Shorter than the 2 s for which a node may use its copy of a channel's
# record, so only the invalidation from node A can end the old token on node B.
ROTATION_TIMEOUT = 1_000 * MS
# ExitStatus.UNAUTHORIZED of the CLI.
EXIT_UNAUTHORIZED = 3


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def start_node(runner: ProcessRunner, redis: RedisServer, name: str, *arguments: str) -> Relay:
    data_dir = runner.log_dir / f"data-{name}"
    return await runner.start_relay(data_dir, "--store", redis.url, "--node-timeout", NODE_TIMEOUT, *arguments)


@pytest.fixture
async def nodes(runner, redis) -> tuple[Relay, Relay]:
    return await start_node(runner, redis, "a"), await start_node(runner, redis, "b")


def ingest_url(node: Relay, channel: Channel) -> str:
    """Return the channel's ingest URL on `node`, whichever node created the channel."""
    return f"{node.url}/h/{channel.id}"


async def readiness(node: Relay) -> int:
    response = await send_request(f"{node.url}/readyz", "GET")
    return response.status


async def test_event_crosses_nodes(runner, nodes, target):
    """An event posted to node A reaches a listener connected to node B."""
    node_a, node_b = nodes
    channel = await runner.create_channel(node_a.url)
    listener = runner.start_listener(node_b.url, channel, target.authority)
    await listener.wait_for_connection(node_b.port, CONNECT_TIMEOUT)

    event_ids = [await post_webhook(ingest_url(node_a, channel), b'{"n":%d}' % n) for n in range(EVENTS)]
    await target.wait_for_events(event_ids, DELIVERY_TIMEOUT)

    assert target.event_ids == event_ids


async def test_listener_fails_over_after_node_sigkill(runner, nodes, target):
    """A listener whose node is killed reconnects to the other node and gets every event, none lost."""
    node_a, node_b = nodes
    channel = await runner.create_channel(node_a.url)
    target.response_delay = 50 * MS
    listener = runner.start_listener(f"{node_b.url},{node_a.url}", channel, target.authority)
    await listener.wait_for_connection(node_b.port, CONNECT_TIMEOUT)
    event_ids = [await post_webhook(ingest_url(node_a, channel), b'{"n":%d}' % n) for n in range(EVENTS)]
    await target.wait_for_requests(2, DELIVERY_TIMEOUT)

    node_b.process.kill()
    after_kill = [await post_webhook(ingest_url(node_a, channel), b'{"late":%d}' % n) for n in range(3)]
    await listener.wait_for_connection(node_a.port, CONNECT_TIMEOUT)
    await target.wait_for_events(event_ids + after_kill, FAILOVER_TIMEOUT)

    assert set(target.event_ids) == set(event_ids + after_kill)
    assert listener.returncode is None


async def test_redis_restart_keeps_accepted_events(runner, redis, nodes, target):
    """Events answered 202 survive a SIGKILL of Redis and a restart from its append-only file."""
    node_a, node_b = nodes
    channel = await runner.create_channel(node_a.url)
    responses = await asyncio.gather(
        *(send_request(ingest_url(node, channel), "POST", [("Content-Type", "application/json")], b'{"n":%d}' % n)
          for n in range(EVENTS) for node in nodes)
    )  # fmt: skip
    accepted = [accepted_event_id(response) for response in responses]

    redis.kill()
    redis.start()
    runner.start_listener(node_b.url, channel, target.authority)
    await target.wait_for_events(accepted, RECOVERY_TIMEOUT)

    assert sorted(set(target.event_ids)) == sorted(accepted)


async def test_redis_down_gives_503_then_recovers(runner, redis, nodes, target):
    """Without Redis a node answers senders 503 and /readyz 503; both recover when Redis returns."""
    node_a, node_b = nodes
    channel = await runner.create_channel(node_a.url)
    listener = runner.start_listener(node_b.url, channel, target.authority)
    await listener.wait_for_connection(node_b.port, CONNECT_TIMEOUT)
    assert await readiness(node_a) == 200

    redis.kill()
    during = await send_request(ingest_url(node_a, channel), "POST", [("Content-Type", "application/json")], b"{}")
    ready_during = await readiness(node_a)
    redis.start()
    await _wait_ready(nodes)
    after = await post_webhook(ingest_url(node_a, channel), b'{"after":true}')
    await target.wait_for_event(after, RECOVERY_TIMEOUT)

    assert during.status == 503, during.describe()
    assert during.json()["error"] == "store_unavailable"
    assert during.header("Retry-After") == "5"
    assert ready_during == 503


async def _wait_ready(nodes: tuple[Relay, ...]) -> None:
    async def all_ready() -> bool:
        return all([await readiness(node) == 200 for node in nodes])

    deadline = asyncio.get_running_loop().time() + RECOVERY_TIMEOUT
    while not await all_ready():
        assert asyncio.get_running_loop().time() < deadline, "the nodes did not report ready after Redis returned"
        await asyncio.sleep(200 * MS)


async def test_unacknowledged_event_redelivered_on_other_node(runner, nodes, start_target):
    """An event a killed listener on node A never acknowledged reaches a listener on node B with the same id."""
    node_a, node_b = nodes
    channel = await runner.create_channel(node_a.url)
    stalled, fresh = await start_target(), await start_target()
    stalled.stall()
    killed = runner.start_listener(node_a.url, channel, stalled.authority)
    event_id = await post_webhook(ingest_url(node_b, channel), b'{"n":1}')
    await stalled.wait_for_requests(1, DELIVERY_TIMEOUT)

    killed.kill()
    stalled.release()
    runner.start_listener(node_b.url, channel, fresh.authority)
    received = await fresh.wait_for_event(event_id, DELIVERY_TIMEOUT)

    assert received.header("X-Hookrelay-Attempt") is not None
    assert fresh.event_ids == [event_id]


async def test_count_retention_shared_by_nodes(runner, redis):
    """The per-channel event limit counts events stored through every node: the next one gets 429."""
    node_a = await start_node(runner, redis, "a", "--retention-events", "3")
    node_b = await start_node(runner, redis, "b", "--retention-events", "3")
    channel = await runner.create_channel(node_a.url)
    for n, node in enumerate((node_a, node_b, node_a)):
        await post_webhook(ingest_url(node, channel), b'{"n":%d}' % n)

    rejected = await send_request(ingest_url(node_b, channel), "POST", [("Content-Type", "application/json")], b"{}")

    assert rejected.status == 429, rejected.describe()
    assert rejected.json()["error"] == "channel_full"


async def test_sync_answer_crosses_nodes(runner, nodes, target):
    """A sync-mode sender on node A gets the answer of the target behind a listener on node B."""
    node_a, node_b = nodes
    channel = await runner.create_channel(node_a.url)
    listener = runner.start_listener(node_b.url, channel, target.authority, "--respond")
    await listener.wait_for_connection(node_b.port, CONNECT_TIMEOUT)

    response = await _post_until_answered(ingest_url(node_a, channel))

    assert response.status == 200, response.describe()
    assert response.body == b"target response\n"


async def _post_until_answered(url: str):
    """POST until the sender gets the target's 200: the listener's presence may take a moment to reach node A."""
    response = None
    for _ in range(20):
        response = await send_request(url, "POST", [("Content-Type", "application/json")], b'{"sync":true}')
        if response.status == 200:
            return response
        await asyncio.sleep(250 * MS)
    return response


async def test_rotated_token_refused_on_other_node(runner, nodes):
    """A token rotated through node A's API is refused on node B within a second, and the new token works there."""
    node_a, node_b = nodes
    channel = await runner.create_channel(node_a.url)
    path = f"/api/channels/{channel.id}"
    # Node B reads the channel and keeps a copy of it.
    before = await api_request(node_b.url, "GET", path, token=channel.token)

    rotated = await api_request(node_a.url, "POST", f"{path}/rotate-token", token=channel.token)
    old_token_on_b = await poll(
        lambda: api_request(node_b.url, "GET", path, token=channel.token),
        lambda answer: answer.status != 200,
        ROTATION_TIMEOUT,
        "node B to refuse the old token",
    )
    new_token_on_b = await api_request(node_b.url, "GET", path, token=rotated.body["token"])

    assert before.status == 200, before.describe()
    assert rotated.status == 200, rotated.describe()
    assert old_token_on_b.status == 401, old_token_on_b.describe()
    assert new_token_on_b.status == 200, new_token_on_b.describe()


async def test_rotated_token_disconnects_listener_on_other_node(runner, nodes, target):
    """A listener on node B connected with a token rotated through node A is cut off and exits 3."""
    node_a, node_b = nodes
    channel = await runner.create_channel(node_a.url)
    listener = runner.start_listener(node_b.url, channel, target.authority)
    await listener.wait_for_connection(node_b.port, CONNECT_TIMEOUT)

    rotated = await api_request(node_a.url, "POST", f"/api/channels/{channel.id}/rotate-token", token=channel.token)
    exit_code = await listener.wait_for_exit(TOKEN_CHECK_INTERVAL + ROTATION_TIMEOUT + CONNECT_TIMEOUT)

    assert rotated.status == 200, rotated.describe()
    assert exit_code == EXIT_UNAUTHORIZED, listener.stderr_tail()


async def test_readiness_reports_ready(nodes):
    """Both nodes report ready while Redis is up."""
    assert [await readiness(node) for node in nodes] == [200, 200]
