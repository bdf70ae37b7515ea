"""Delivery through the listener: held events, order, consumer groups, retries, --json lines and signals."""

import asyncio
import signal

import pytest

from tests.support.checks import post_webhook
from tests.support.processes import Channel, HookrelayProcess
from tests.support.target import CapturingTarget
from tests.support.timing import MS, wait_until

DELIVERY_TIMEOUT = 15_000 * MS
CONNECT_TIMEOUT = 15_000 * MS
EXIT_TIMEOUT = 15_000 * MS
# The first retry comes 0.5 s after a failure. The timeout leaves room for jitter and slow starts.
RETRY_TIMEOUT = 15_000 * MS
# Time for a request that must not come to show up if it were sent anyway.
QUIET_PERIOD = 500 * MS
PROBE_INTERVAL = 500 * MS
# One event every 50 ms to targets that take 100 ms each is more than one
# listener can keep up with, so an idle second listener must take some.
STREAM_EVENTS = 20
STREAM_INTERVAL = 50 * MS


async def wait_for_json_line(listener: HookrelayProcess, event_id: str) -> dict:
    """Wait for the listener's --json line about `event_id` and return it."""

    def lines_for_event() -> list[dict]:
        return [record for record in listener.json_lines() if record.get("event_id") == event_id]

    await wait_until(lambda: lines_for_event(), DELIVERY_TIMEOUT, f"a --json line for {event_id}")
    return lines_for_event()[-1]


async def subscribe_with_probes(channel: Channel, targets: list[CapturingTarget]) -> None:
    """Post probe webhooks until each target got one, which proves that its listener's group is subscribed."""

    async def probe_until_all_arrived() -> None:
        while not all(target.requests for target in targets):
            await post_webhook(channel.url, b'{"probe":true}', tail="/probe")
            await asyncio.sleep(PROBE_INTERVAL)

    await asyncio.wait_for(probe_until_all_arrived(), CONNECT_TIMEOUT)


def real_events(target: CapturingTarget, event_ids: list[str]) -> list[str]:
    return [event_id for event_id in target.event_ids if event_id in event_ids]


async def test_held_events_arrive_in_order(runner, shared_relay, target):
    """Events sent while no listener runs arrive in order once one starts."""
    channel = await runner.create_channel(shared_relay.url)
    bodies = [b'{"n":%d}' % n for n in range(10)]
    event_ids = [await post_webhook(channel.url, body) for body in bodies]

    runner.start_listener(shared_relay.url, channel, target.authority)
    await target.wait_for_requests(len(event_ids), DELIVERY_TIMEOUT)

    assert target.event_ids == event_ids
    assert [request.body for request in target.requests] == bodies


async def test_two_groups_get_every_event(runner, shared_relay, start_target):
    """Two consumer groups each receive every event, in order."""
    channel = await runner.create_channel(shared_relay.url)
    alpha, beta = await start_target(), await start_target()
    runner.start_listener(shared_relay.url, channel, alpha.authority, "--group", "alpha")
    runner.start_listener(shared_relay.url, channel, beta.authority, "--group", "beta")
    await subscribe_with_probes(channel, [alpha, beta])

    event_ids = [await post_webhook(channel.url, b'{"n":%d}' % n) for n in range(10)]
    await alpha.wait_for_events(event_ids, DELIVERY_TIMEOUT)
    await beta.wait_for_events(event_ids, DELIVERY_TIMEOUT)

    assert real_events(alpha, event_ids) == event_ids
    assert real_events(beta, event_ids) == event_ids


async def test_one_group_shares_events(runner, shared_relay, start_target):
    """Two listeners in one group share a stream: each event reaches exactly one of them, and both get some."""
    channel = await runner.create_channel(shared_relay.url)
    first, second = await start_target(), await start_target()
    first.response_delay = second.response_delay = 100 * MS
    listeners = [
        runner.start_listener(shared_relay.url, channel, first.authority, "--group", "workers"),
        runner.start_listener(shared_relay.url, channel, second.authority, "--group", "workers"),
    ]
    for listener in listeners:
        await listener.wait_for_connection(shared_relay.port, CONNECT_TIMEOUT)
    probe = await post_webhook(channel.url, b'{"probe":true}', tail="/probe")
    await wait_until(lambda: probe in first.event_ids + second.event_ids, DELIVERY_TIMEOUT, "the probe event")

    event_ids = []
    for number in range(STREAM_EVENTS):
        event_ids.append(await post_webhook(channel.url, b'{"n":%d}' % number))
        await asyncio.sleep(STREAM_INTERVAL)
    await wait_until(
        lambda: set(event_ids) <= set(first.event_ids + second.event_ids),
        DELIVERY_TIMEOUT,
        "every event at one of the two targets",
    )
    await asyncio.sleep(QUIET_PERIOD)

    shared = real_events(first, event_ids) + real_events(second, event_ids)
    assert sorted(shared) == sorted(event_ids)
    assert real_events(first, event_ids)
    assert real_events(second, event_ids)


async def test_json_line_per_delivery(runner, shared_relay, target):
    """`listen --json` prints one JSON object per delivery with the contract's fields."""
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(shared_relay.url, channel, target.authority)
    headers = [("Content-Type", "application/json"), ("X-GitHub-Event", "push")]

    event_id = await post_webhook(channel.url, b'{"ref":"main"}', tail="/hooks/github", headers=headers)
    await target.wait_for_event(event_id, DELIVERY_TIMEOUT)
    record = await wait_for_json_line(listener, event_id)

    assert record["channel"] == channel.id
    assert record["group"] == "default"
    assert record["method"] == "POST"
    assert record["path"] == "/hooks/github"
    assert "event_type" in record
    assert record["outcome"] == "delivered"
    assert record["status"] == 200
    assert record["attempt"] == 1
    assert isinstance(record["duration_ms"], (int, float))
    assert record["duration_ms"] >= 0
    assert record["error"] is None
    assert len([line for line in listener.json_lines() if line["event_id"] == event_id]) == 1


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503])
async def test_retryable_status_retried(status, runner, shared_relay, target):
    """A target that responds with a retryable status once gets the same event again and then succeeds."""
    channel = await runner.create_channel(shared_relay.url)
    target.fail_next(status, 1)
    listener = runner.start_listener(shared_relay.url, channel, target.authority)

    event_id = await post_webhook(channel.url)
    await target.wait_for_requests(2, RETRY_TIMEOUT)
    record = await wait_for_json_line(listener, event_id)

    assert target.event_ids == [event_id, event_id]
    assert record["outcome"] == "delivered"
    assert record["status"] == 200
    assert record["attempt"] == 2


@pytest.mark.parametrize("status", [400, 404])
async def test_client_error_not_retried(status, runner, shared_relay, target):
    """A target that responds with a 4xx other than 408, 425 and 429 gets the event once."""
    channel = await runner.create_channel(shared_relay.url)
    target.fail_next(status, 1)
    listener = runner.start_listener(shared_relay.url, channel, target.authority)

    rejected = await post_webhook(channel.url, b'{"n":1}')
    # Delivery keeps order, so a retry of the first event would arrive before the second one.
    following = await post_webhook(channel.url, b'{"n":2}')
    await target.wait_for_event(following, DELIVERY_TIMEOUT)
    record = await wait_for_json_line(listener, rejected)

    assert target.event_ids == [rejected, following]
    assert record["status"] == status
    assert record["attempt"] == 1


async def test_failed_after_max_attempts(runner, shared_relay, target):
    """After --max-attempts failures the event is reported failed and the listener moves on."""
    channel = await runner.create_channel(shared_relay.url)
    target.fail_always(500)
    listener = runner.start_listener(shared_relay.url, channel, target.authority, "--max-attempts", "2")

    failed = await post_webhook(channel.url, b'{"n":1}')
    record = await wait_for_json_line(listener, failed)
    target.fail_always(None)
    following = await post_webhook(channel.url, b'{"n":2}')
    await target.wait_for_event(following, DELIVERY_TIMEOUT)

    assert record["outcome"] == "failed"
    assert record["status"] == 500
    assert record["attempt"] == 2
    assert isinstance(record["error"], str)
    assert record["error"]
    assert target.event_ids == [failed, failed, following]


@pytest.mark.parametrize(
    ("form", "expected_path"),
    [("port", "/hooks/x"), ("host-port", "/hooks/x"), ("url-with-path", "/base/path/hooks/x")],
)
async def test_forward_target_forms(form, expected_path, runner, shared_relay, target):
    """--forward accepts PORT, HOST:PORT and a URL whose path prefixes the tail."""
    forward = {
        "port": str(target.port),
        "host-port": target.authority,
        "url-with-path": f"http://{target.authority}/base/path",
    }[form]
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, forward)

    event_id = await post_webhook(channel.url, tail="/hooks/x", query="a=1&b=%2F")
    received = await target.wait_for_event(event_id, DELIVERY_TIMEOUT)

    assert received.path == expected_path
    assert received.query == "a=1&b=%2F"


async def test_default_delivery_one_at_a_time(runner, shared_relay, target):
    """Without --concurrency the next event waits until the target responded to the previous one."""
    channel = await runner.create_channel(shared_relay.url)
    target.stall()
    runner.start_listener(shared_relay.url, channel, target.authority)

    event_ids = [await post_webhook(channel.url, b'{"n":%d}' % n) for n in range(3)]
    await target.wait_for_requests(1, DELIVERY_TIMEOUT)
    await asyncio.sleep(QUIET_PERIOD)
    requests_while_stalled = len(target.requests)
    target.release()
    await target.wait_for_requests(3, DELIVERY_TIMEOUT)

    assert requests_while_stalled == 1
    assert target.event_ids == event_ids


async def test_concurrency_option_parallel(runner, shared_relay, target):
    """With --concurrency 4, four deliveries are in flight at the same time."""
    channel = await runner.create_channel(shared_relay.url)
    target.stall()
    runner.start_listener(shared_relay.url, channel, target.authority, "--concurrency", "4")

    event_ids = [await post_webhook(channel.url, b'{"n":%d}' % n) for n in range(4)]
    await target.wait_for_requests(4, DELIVERY_TIMEOUT)
    in_flight = target.in_flight
    target.release()

    assert in_flight == 4
    assert sorted(target.event_ids) == sorted(event_ids)


@pytest.mark.parametrize(("signal_number", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
async def test_listener_signal_exit_code(signal_number, exit_code, runner, shared_relay, target):
    """A connected listener exits on SIGINT with 130 and on SIGTERM with 0, without a traceback."""
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(shared_relay.url, channel, target.authority)
    await listener.wait_for_connection(shared_relay.port, CONNECT_TIMEOUT)

    listener.send_signal(signal_number)
    returncode = await listener.wait_for_exit(EXIT_TIMEOUT)

    assert returncode == exit_code
    assert "Traceback" not in listener.stderr_text()
