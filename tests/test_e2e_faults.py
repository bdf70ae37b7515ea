"""Faults that must lose no accepted event: killed relay, target down, killed listener, silently dead link.

These tests wait for backoffs and heartbeats, so they take tens of seconds
each and live apart from the faster modules.
"""

import asyncio

import pytest
from aiohttp import web

from tests.support.api import ChannelApi, poll
from tests.support.checks import accepted_event_id, post_webhook
from tests.support.http import send_request
from tests.support.processes import Channel
from tests.support.proxy import TcpProxy
from tests.support.timing import MS, wait_until

DELIVERY_TIMEOUT = 15_000 * MS
EVENTS_AFTER_CRASH = 200
CONCURRENT_SENDERS = 50
RECOVERY_TIMEOUT = 60_000 * MS
TARGET_DOWNTIME = 10_000 * MS
# A 10 s outage ends between two backoff attempts (0.5 s doubling, capped at 30 s, with jitter).
TARGET_RECOVERY_TIMEOUT = 45_000 * MS
# The listener must notice a silently dead connection within 30 s.
DEAD_LINK_DETECTION = 30_000 * MS
# Let the acknowledgement of a delivered event pass the proxy before it stops forwarding.
ACK_SETTLE = 500 * MS


def first_occurrences(event_ids: list[str]) -> list[str]:
    """Return `event_ids` without repeats, in order of first arrival."""
    return list(dict.fromkeys(event_ids))


@pytest.mark.parametrize("sync_mode", ["normal", "full"])
async def test_relay_sigkill_loses_nothing(sync_mode, runner, target, tmp_path):
    """A relay killed with SIGKILL right after 200 concurrent 202 responses delivers all of them after a restart."""
    data_dir = tmp_path / "relay-data"
    relay = await runner.start_relay(data_dir, "--sync", sync_mode)
    channel = await runner.create_channel(relay.url)
    senders = asyncio.Semaphore(CONCURRENT_SENDERS)

    async def post(number: int):
        body = b'{"n":%d}' % number
        async with senders:
            return body, await send_request(channel.url, "POST", [("Content-Type", "application/json")], body)

    responses = await asyncio.gather(*(post(number) for number in range(EVENTS_AFTER_CRASH)))
    relay.process.kill()

    bodies_by_event_id = {accepted_event_id(response): body for body, response in responses}
    restarted = await runner.start_relay(data_dir, "--sync", sync_mode)
    runner.start_listener(restarted.url, channel, target.authority)
    await target.wait_for_events(list(bodies_by_event_id), RECOVERY_TIMEOUT)

    assert {request.event_id: request.body for request in target.requests} == bodies_by_event_id


async def test_listener_reconnects_after_relay_restart(runner, target, tmp_path):
    """A listener reconnects to a relay restarted on the same port and data folder and receives new events."""
    data_dir = tmp_path / "relay-data"
    relay = await runner.start_relay(data_dir)
    channel = await runner.create_channel(relay.url)
    runner.start_listener(relay.url, channel, target.authority)
    before = await post_webhook(channel.url, b'{"n":1}')
    await target.wait_for_event(before, DELIVERY_TIMEOUT)

    await asyncio.to_thread(relay.process.stop)
    await runner.start_relay(data_dir, port=relay.port)
    after = await post_webhook(channel.url, b'{"n":2}')
    await target.wait_for_event(after, RECOVERY_TIMEOUT)

    assert first_occurrences(target.event_ids) == [before, after]


async def test_target_down_gets_every_event(runner, shared_relay, target):
    """A target that is down for 10 s when the listener starts gets every event, in order, once it is up."""
    await target.stop()
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(shared_relay.url, channel, target.authority)
    event_ids = [await post_webhook(channel.url, b'{"n":%d}' % n) for n in range(5)]

    await asyncio.sleep(TARGET_DOWNTIME)
    returncode_while_down = listener.returncode
    await target.start()
    await target.wait_for_events(event_ids, TARGET_RECOVERY_TIMEOUT)

    assert returncode_while_down is None
    assert target.event_ids == event_ids


async def test_listener_sigkill_redelivers(runner, shared_relay, target):
    """Events unacknowledged by a listener killed mid-delivery reach a new listener with the same ids."""
    channel = await runner.create_channel(shared_relay.url)
    target.stall()
    killed = runner.start_listener(shared_relay.url, channel, target.authority)
    event_ids = [await post_webhook(channel.url, b'{"n":%d}' % n) for n in range(3)]

    await target.wait_for_requests(1, DELIVERY_TIMEOUT)
    killed.kill()
    target.release()
    runner.start_listener(shared_relay.url, channel, target.authority)
    await wait_until(
        lambda: set(event_ids) <= set(target.event_ids[1:]),
        DELIVERY_TIMEOUT,
        "every event again after the stalled request",
    )

    assert target.event_ids[0] == event_ids[0]
    assert first_occurrences(target.event_ids[1:]) == event_ids


async def test_listener_restart_keeps_attempt_budget(runner, shared_relay, target):
    """A listener killed between retries hands on its attempt count: the next one makes only the attempts left."""
    channel = await runner.create_channel(shared_relay.url)
    history = ChannelApi(shared_relay.url, channel)
    target.fail_always(503)
    killed = runner.start_listener(shared_relay.url, channel, target.authority, "--max-attempts", "3")
    event_id = await post_webhook(channel.url, b'{"n":1}')

    # The third attempt waits at least 0.5 s of backoff after the second report.
    await poll(lambda: history.show(event_id), lambda detail: len(detail["attempts"]) == 2, DELIVERY_TIMEOUT, "two attempt reports")
    killed.kill()
    listener = runner.start_listener(shared_relay.url, channel, target.authority, "--max-attempts", "3")
    await wait_until(
        lambda: any(record.get("event_id") == event_id for record in listener.json_lines()), DELIVERY_TIMEOUT, "the final result"
    )

    [record] = [record for record in listener.json_lines() if record.get("event_id") == event_id]
    attempts = [request.header("X-Hookrelay-Attempt") for request in target.requests if request.event_id == event_id]
    assert (record["outcome"], record["status"], record["attempt"]) == ("failed", 503, 3)
    assert attempts == ["1", "2", "3"]
    detail = await history.wait_for_state(event_id, "failed", DELIVERY_TIMEOUT)
    assert [attempt["attempt"] for attempt in detail["attempts"]] == [1, 2, 3]


async def test_delivery_running_across_reconnect_is_not_repeated(runner, shared_relay, target):
    """An event whose delivery outlives its connection reaches the target once and is acknowledged after the reconnect."""
    proxy = TcpProxy(shared_relay.port)
    await proxy.start()
    try:
        channel = await runner.create_channel(shared_relay.url)
        runner.start_listener(proxy.url, channel, target.authority)
        await proxy.wait_for_connections(1, DELIVERY_TIMEOUT)
        target.stall()
        stalled = await post_webhook(channel.url, b'{"n":1}')
        await target.wait_for_event(stalled, DELIVERY_TIMEOUT)

        proxy.cut()
        await proxy.wait_for_connections(2, RECOVERY_TIMEOUT)
        # The relay sends the unacknowledged event again on the new connection.
        await asyncio.sleep(ACK_SETTLE)
        target.release()
        after = await post_webhook(channel.url, b'{"n":2}')
        await target.wait_for_event(after, DELIVERY_TIMEOUT)
        detail = await ChannelApi(shared_relay.url, channel).wait_for_state(stalled, "delivered", DELIVERY_TIMEOUT)
    finally:
        await proxy.close()

    assert target.event_ids.count(stalled) == 1, target.event_ids
    assert [attempt["status"] for attempt in detail["attempts"]] == [200], detail["attempts"]


async def test_silent_dead_link_reconnects(runner, shared_relay, target):
    """A connection that silently stops forwarding is detected within 30 s, and the listener reconnects."""
    proxy = TcpProxy(shared_relay.port)
    await proxy.start()
    try:
        channel = await runner.create_channel(shared_relay.url)
        runner.start_listener(proxy.url, channel, target.authority)
        delivered = await post_webhook(channel.url, b'{"n":1}')
        await target.wait_for_event(delivered, DELIVERY_TIMEOUT)
        await asyncio.sleep(ACK_SETTLE)

        connections_before = len(proxy.accepted_at)
        proxy.blackhole()
        during_outage = await post_webhook(channel.url, b'{"n":2}')
        reconnect_seconds = await proxy.wait_for_connections(connections_before + 1, DEAD_LINK_DETECTION + 15_000 * MS)
        after_reconnect = await post_webhook(channel.url, b'{"n":3}')
        await target.wait_for_events([during_outage, after_reconnect], RECOVERY_TIMEOUT)
    finally:
        await proxy.close()

    assert reconnect_seconds <= DEAD_LINK_DETECTION, f"reconnected {reconnect_seconds:.1f} s after the link went silent"
    assert first_occurrences(target.event_ids) == [delivered, during_outage, after_reconnect]


async def test_second_relay_on_same_data_folder_refused(runner, target, tmp_path):
    """A second relay on a data folder in use exits 1 with the holder's pid and leaves the first relay's pending event alone."""
    if runner.store_url is not None:
        pytest.skip("the data folder lock is the SQLite store's; this run uses --store")
    data_dir = tmp_path / "relay-data"
    relay = await runner.start_relay(data_dir)
    channel = await runner.create_channel(relay.url)
    listener = runner.start_listener(relay.url, channel, target.authority)
    target.stall()
    pending = await post_webhook(channel.url, b'{"n":1}')
    await target.wait_for_event(pending, DELIVERY_TIMEOUT)

    code, _, stderr = await runner.run(["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)])
    other = runner.start_listener(relay.url, channel, target.authority, "--group", "default")
    await asyncio.sleep(ACK_SETTLE)
    target.release()
    after = await post_webhook(channel.url, b'{"n":2}')
    await target.wait_for_event(after, DELIVERY_TIMEOUT)

    assert code == 1, stderr
    assert f"another relay (pid {relay.process.pid}) uses the data folder" in stderr
    assert "Traceback" not in stderr
    assert target.event_ids.count(pending) == 1, target.event_ids
    assert listener.returncode is None
    assert other.returncode is None


async def test_listener_against_non_relay_exits(runner, tmp_path):
    """A --relay that returns 200 to the websocket handshake is not a relay, so the listener reports it and exits 1."""
    async def web_page(request: web.Request) -> web.Response:
        return web.Response(text="<html>a web page</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", web_page)
    server = web.AppRunner(app)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = server.addresses[0][1]
    try:
        channel = Channel(id="ch_notarelay", token="hrt_not-a-real-token", url=f"http://127.0.0.1:{port}/h/ch_notarelay")
        listener = runner.start_listener(f"http://127.0.0.1:{port}", channel, "127.0.0.1:9")
        code = await listener.wait_for_exit(DELIVERY_TIMEOUT)
    finally:
        await server.cleanup()

    stderr = listener.stderr_text()
    assert code == 1, stderr
    assert "HTTP 200" in stderr
    assert "check that --relay is a hookrelay relay" in stderr
    assert "Traceback" not in stderr
