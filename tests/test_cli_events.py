"""`hookrelay events`, `replay --to` and `send`, run as real commands against a real relay."""

import asyncio
import json
import re
import socket
import subprocess

import websockets

from relay_server.protocol import decode_events, decode_text
from tests.support.api import ChannelApi, decode_raw
from tests.support.cases import WebhookRequest
from tests.support.checks import check_headers_in_order, check_no_invented_headers, post_webhook
from tests.support.http import send_request
from tests.support.processes import COMMAND_TIMEOUT, Channel, find_hookrelay
from tests.support.signatures import verify_github
from tests.support.timing import MS

DELIVERY_TIMEOUT = 15_000 * MS
# The listener moves to the next --relay after a backoff of about half a second.
RECONNECT_ALLOWANCE = 5_000 * MS

# ExitStatus values of the CLI.
EXIT_ERROR = 1
EXIT_UNAUTHORIZED = 3


def channel_options(relay_url: str, channel: Channel) -> list[str]:
    return ["--relay", relay_url, "--channel", channel.id, "--token", channel.token]


async def run_json(runner, arguments: list[str]):
    """Run a command that must succeed and return its stdout parsed as JSON."""
    exit_code, stdout, stderr = await runner.run(arguments)
    assert exit_code == 0, f"hookrelay {' '.join(arguments)} exited with {exit_code}:\n{stderr}"
    return json.loads(stdout)


async def run_with_stdin(runner, arguments: list[str], stdin: bytes) -> tuple[int, str, str]:
    """Run a hookrelay command with `stdin` as its standard input."""
    process = await asyncio.create_subprocess_exec(
        find_hookrelay(), *arguments,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=runner.environment,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), COMMAND_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"hookrelay {' '.join(arguments)} did not finish within {COMMAND_TIMEOUT:.0f} s")
    return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


async def test_events_list_json_and_filters(runner, shared_relay):
    """`events list --json` prints the summaries newest first, and its options filter them."""
    channel = await runner.create_channel(shared_relay.url)
    first = await post_webhook(channel.url, b'{"n": 1}', tail="/github", headers=[("Content-Type", "application/json"), ("X-GitHub-Event", "push")])
    second = await post_webhook(channel.url, b'{"n": 2}', tail="/other")
    response = await send_request(channel.url, "PUT", [("Content-Type", "text/plain")], b"third", tail="/other")
    third = response.json()["id"]
    options = ["events", "list", *channel_options(shared_relay.url, channel), "--json"]

    rows = await run_json(runner, options)
    assert [row["id"] for row in rows] == [third, second, first]
    assert rows[2]["path"] == "/github"
    assert rows[2]["event_type"] == "push"
    assert rows[0]["method"] == "PUT"

    assert [row["id"] for row in await run_json(runner, [*options, "--method", "put"])] == [third]
    assert [row["id"] for row in await run_json(runner, [*options, "--search", "other"])] == [third, second]
    assert [row["id"] for row in await run_json(runner, [*options, "--type", "push"])] == [first]
    assert [row["id"] for row in await run_json(runner, [*options, "--state", "pending", "--limit", "2"])] == [third, second]
    assert await run_json(runner, [*options, "--state", "delivered"]) == []


async def test_events_list_search_with_query_characters(runner, shared_relay):
    """`events list --search` passes & = % and spaces to the relay as text, not as more parameters."""
    channel = await runner.create_channel(shared_relay.url)
    wanted = await post_webhook(channel.url, b"{}", tail="/q", query="a=1&b=%20")
    await post_webhook(channel.url, b"{}", tail="/q", query="a=1")
    options = ["events", "list", *channel_options(shared_relay.url, channel), "--json"]

    assert [row["id"] for row in await run_json(runner, [*options, "--search", "a=1&b"])] == [wanted]
    assert [row["id"] for row in await run_json(runner, [*options, "--search", "%20"])] == [wanted]


async def test_events_list_table(runner, shared_relay):
    """Without --json, `events list` prints a table with a header row and the event's method."""
    channel = await runner.create_channel(shared_relay.url)
    await post_webhook(channel.url, b"{}", tail="/table")

    exit_code, stdout, stderr = await runner.run(["events", "list", *channel_options(shared_relay.url, channel)])

    assert exit_code == 0, stderr
    assert "received" in stdout
    assert "POST" in stdout


async def test_events_show_json_matches_api(runner, shared_relay):
    """`events show --json` prints the API's detail of the event, raw bytes included."""
    channel = await runner.create_channel(shared_relay.url)
    event_id = await post_webhook(channel.url, b'{"show": "me"}', tail="/s", query="a=1")

    printed = await run_json(runner, ["events", "show", event_id, *channel_options(shared_relay.url, channel), "--json"])

    assert printed == await ChannelApi(shared_relay.url, channel).show(event_id)
    assert decode_raw(printed)[0] == b"/s?a=1"
    assert decode_raw(printed)[2] == b'{"show": "me"}'


async def test_events_show_text_escapes_control_characters(runner, shared_relay):
    """The human view prints the request line, headers and body, with control characters escaped."""
    channel = await runner.create_channel(shared_relay.url)
    headers = [("Content-Type", "application/json"), ("X-Note", "plain")]
    event_id = await post_webhook(channel.url, b'{"text": "bell\x07 and escape\x1b[31m"}', tail="/human", headers=headers)

    exit_code, stdout, stderr = await runner.run(["events", "show", event_id, *channel_options(shared_relay.url, channel)])

    assert exit_code == 0, stderr
    assert "POST /human" in stdout
    assert "X-Note: plain" in stdout
    assert "bell\\x07 and escape\\x1b[31m" in stdout
    assert "\x1b" not in stdout
    assert "\x07" not in stdout


async def test_events_replay_json(runner, shared_relay, target):
    """`events replay --json` queues events again; the listener forwards each once more with its id."""
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, target.authority)
    api = ChannelApi(shared_relay.url, channel)
    first = await post_webhook(channel.url, b'{"n": 1}')
    second = await post_webhook(channel.url, b'{"n": 2}')
    await target.wait_for_events([first, second], DELIVERY_TIMEOUT)
    await api.wait_for_state(second, "delivered", DELIVERY_TIMEOUT)

    result = await run_json(runner, ["events", "replay", first, second, *channel_options(shared_relay.url, channel), "--json"])

    assert result == [
        {"id": first, "group": "default", "state": "pending", "new_group": False},
        {"id": second, "group": "default", "state": "pending", "new_group": False},
    ]
    await target.wait_for_requests(4, DELIVERY_TIMEOUT)
    assert target.event_ids == [first, second, first, second]


async def test_events_show_marks_replay(runner, shared_relay, target):
    """`events show` prints a line where a replay's attempts, numbered from 1 again, begin."""
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, target.authority)
    api = ChannelApi(shared_relay.url, channel)
    event_id = await post_webhook(channel.url, b'{"n": 1}')
    await api.wait_for_state(event_id, "delivered", DELIVERY_TIMEOUT)
    await run_json(runner, ["events", "replay", event_id, *channel_options(shared_relay.url, channel), "--json"])
    await target.wait_for_requests(2, DELIVERY_TIMEOUT)
    await wait_until_attempts(api, event_id, 2)

    exit_code, stdout, stderr = await runner.run(["events", "show", event_id, *channel_options(shared_relay.url, channel)])

    assert exit_code == 0, stderr
    lines = [line for line in stdout.splitlines() if line.startswith(("attempt ", "replayed "))]
    assert [line.split(" at ")[0] for line in lines] == ["attempt 1 (default)", "replayed (default):", "attempt 1 (default)"], stdout
    assert all(": 200  " in line for line in lines if line.startswith("attempt ")), stdout


async def wait_until_attempts(api: ChannelApi, event_id: str, count: int) -> None:
    """Poll the event's detail until it lists ``count`` attempts."""
    deadline = asyncio.get_running_loop().time() + DELIVERY_TIMEOUT
    while len((await api.show(event_id))["attempts"]) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{event_id} did not reach {count} attempts"
        await asyncio.sleep(50 * MS)


async def test_events_replay_other_group(runner, shared_relay, start_target):
    """`events replay --group` sends the event to that group's listener."""
    channel = await runner.create_channel(shared_relay.url)
    other = await start_target()
    event_id = await post_webhook(channel.url, b'{"group": "audit"}')
    runner.start_listener(shared_relay.url, channel, other.authority, "--group", "audit")

    result = await run_json(runner, ["events", "replay", event_id, "--group", "audit", *channel_options(shared_relay.url, channel), "--json"])

    # Whether the listener had created the group by then depends on timing.
    assert [{key: row[key] for key in ("id", "group", "state")} for row in result] == [
        {"id": event_id, "group": "audit", "state": "pending"}
    ]
    received = await other.wait_for_event(event_id, DELIVERY_TIMEOUT)
    assert received.body == b'{"group": "audit"}'


async def test_events_replay_new_group_noted(runner, shared_relay):
    """`events replay` to a group no listener has used notes that the group is new."""
    channel = await runner.create_channel(shared_relay.url)
    event_id = await post_webhook(channel.url, b'{"typo": true}')

    exit_code, stdout, stderr = await runner.run(["events", "replay", event_id, "--group", "neverseen", *channel_options(shared_relay.url, channel)])

    assert exit_code == 0, stderr
    assert stdout.strip() == f"{event_id} queued for group neverseen (a new group: no listener has used it yet)"


async def test_events_replay_skips_event_in_flight(runner, shared_relay):
    """`events replay` reports an event that a listener has in flight, replays the others, and exits 1."""
    channel = await runner.create_channel(shared_relay.url)
    url = shared_relay.url.replace("http://", "ws://") + f"/api/channels/{channel.id}/listen?window=1"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {channel.token}"}, proxy=None) as ws:
        assert decode_text(await asyncio.wait_for(ws.recv(), DELIVERY_TIMEOUT))["type"] == "welcome"
        in_flight = await post_webhook(channel.url, b'{"in_flight": true}')
        assert [event.id for event in decode_events(await asyncio.wait_for(ws.recv(), DELIVERY_TIMEOUT))] == [in_flight]
        # The window of one keeps the second event unread, and a replay of an unread event queues nothing new.
        waiting = await post_webhook(channel.url, b'{"waiting": true}')

        exit_code, stdout, stderr = await runner.run(["events", "replay", in_flight, waiting, *channel_options(shared_relay.url, channel)])

    assert exit_code == EXIT_ERROR, stderr
    assert stdout == f"{waiting} queued for group default\n"
    assert f"{in_flight} not replayed: event {in_flight} is being delivered to group default now" in stderr


async def test_events_delete(runner, shared_relay):
    """`events delete` removes the events; deleting one again fails with the relay's 404 message."""
    channel = await runner.create_channel(shared_relay.url)
    kept = await post_webhook(channel.url, b"{}")
    doomed = await post_webhook(channel.url, b"{}")
    options = channel_options(shared_relay.url, channel)

    exit_code, stdout, stderr = await runner.run(["events", "delete", doomed, *options])
    assert exit_code == 0, stderr
    assert stdout == f"{doomed} deleted\n"
    assert await ChannelApi(shared_relay.url, channel).event_ids() == [kept]

    exit_code, stdout, stderr = await runner.run(["events", "delete", doomed, *options])
    assert exit_code == EXIT_ERROR
    assert stderr.strip() == (
        f"hookrelay: error: relay {shared_relay.url} rejected the request: HTTP 404: no event {doomed} in channel {channel.id}"
    )


async def test_events_wrong_token(runner, shared_relay):
    """A wrong token exits with the unauthorized status and a hint."""
    channel = await runner.create_channel(shared_relay.url)

    exit_code, stdout, stderr = await runner.run(
        ["events", "list", "--relay", shared_relay.url, "--channel", channel.id, "--token", "hrt_wrong", "--json"]
    )

    assert exit_code == EXIT_UNAUTHORIZED
    assert stdout == ""
    assert stderr.strip() == (
        f"hookrelay: error: relay {shared_relay.url} rejected the token for channel {channel.id} (HTTP 401); "
        "check --token, or run 'hookrelay channel create' for a new channel"
    )


async def test_replay_to_url_byte_for_byte(runner, shared_relay, target):
    """`replay --to` sends the stored method, raw path and query, headers in order and body bytes."""
    channel = await runner.create_channel(shared_relay.url)
    body = b"\x00\x01 signed \xff body\r\n"
    request = WebhookRequest(
        method="PATCH",
        path="/hooks/a%2Fb",
        query="x=1&y=%20&z&x=2",
        headers=(
            ("content-type", "application/octet-stream"),
            ("X-Signature", "sha256=abc"),
            ("X-Repeat", "one"),
            ("x-repeat", "two"),
            ("X-Latin", b"caf\xe9"),
            ("User-Agent", "Sender/1.0"),
        ),
        body=body,
    )
    response = await send_request(channel.url, request.method, list(request.headers), body, tail=request.path, query=request.query)
    assert response.status == 202, response.describe()
    event_id = response.json()["id"]

    result = await run_json(
        runner, ["replay", event_id, "--to", f"http://{target.authority}/base", *channel_options(shared_relay.url, channel), "--json"]
    )

    assert result["status"] == 200
    [received] = await target.wait_for_requests(1, DELIVERY_TIMEOUT)
    assert received.method == "PATCH"
    assert received.raw_target == "/base/hooks/a%2Fb?x=1&y=%20&z&x=2"
    assert received.body == body
    assert received.event_id == event_id
    check_headers_in_order(request, received)
    check_no_invented_headers(request, received)


async def test_replay_to_url_error_status(runner, shared_relay, target):
    """`replay --to` exits 1 when the URL answers with an error status, after one attempt."""
    channel = await runner.create_channel(shared_relay.url)
    event_id = await post_webhook(channel.url, b"{}")
    target.fail_always(502)

    exit_code, stdout, stderr = await runner.run(
        ["replay", event_id, "--to", target.authority, *channel_options(shared_relay.url, channel)]
    )

    assert exit_code == EXIT_ERROR, stderr
    assert stdout == f"{event_id} -> http://{target.authority}: 502\n"
    assert len(target.requests) == 1


async def test_send_file(runner, shared_relay, tmp_path):
    """`send FILE` posts the file's bytes as JSON to the path below the channel URL."""
    channel = await runner.create_channel(shared_relay.url)
    payload = tmp_path / "payload.json"
    payload.write_bytes(b'{"from": "file", "n": [1, 2, 3]}\n')

    result = await run_json(runner, ["send", str(payload), "--url", channel.url, "--path", "/from-file?x=1", "-H", "X-Extra: yes", "--json"])

    assert result["status"] == 202
    event_id = result["answer"]["id"]
    detail = await ChannelApi(shared_relay.url, channel).show(event_id)
    target, headers, body = decode_raw(detail)
    assert body == payload.read_bytes()
    assert target == b"/from-file?x=1"
    assert detail["method"] == "POST"
    assert (b"Content-Type", b"application/json") in headers
    assert (b"X-Extra", b"yes") in headers


async def test_send_stdin_binary(runner, shared_relay):
    """`send -` reads the body from stdin; a binary body goes as application/octet-stream."""
    channel = await runner.create_channel(shared_relay.url)
    body = bytes(range(256))

    exit_code, stdout, stderr = await run_with_stdin(runner, ["send", "-", "--url", channel.url, "--method", "PUT", "--json"], body)

    assert exit_code == 0, stderr
    event_id = json.loads(stdout)["answer"]["id"]
    detail = await ChannelApi(shared_relay.url, channel).show(event_id)
    _, headers, stored = decode_raw(detail)
    assert stored == body
    assert detail["method"] == "PUT"
    assert (b"Content-Type", b"application/octet-stream") in headers


async def test_send_github_secret_signs_body(runner, shared_relay, tmp_path):
    """`send --github-secret` adds X-Hub-Signature-256 over the exact body, and a delivery id."""
    channel = await runner.create_channel(shared_relay.url)
    payload = tmp_path / "push.json"
    payload.write_bytes(b'{"ref": "refs/heads/main", "zen": "caf\xc3\xa9"}')

    result = await run_json(runner, ["send", str(payload), "--url", channel.url, "--github-secret", "s3cret", "--json"])

    event_id = result["answer"]["id"]
    _, headers, body = decode_raw(await ChannelApi(shared_relay.url, channel).show(event_id))
    values = {name.decode().lower(): value.decode() for name, value in headers}
    assert body == payload.read_bytes()
    assert verify_github("s3cret", body, values["x-hub-signature-256"])
    assert not verify_github("other", body, values["x-hub-signature-256"])
    assert len(values["x-github-delivery"]) == 36


async def test_send_to_unknown_channel_fails(runner, shared_relay, tmp_path):
    """`send` exits 1 and prints the relay's answer when the channel does not exist."""
    payload = tmp_path / "p.json"
    payload.write_bytes(b"{}")

    exit_code, stdout, stderr = await runner.run(["send", str(payload), "--url", f"{shared_relay.url}/h/ch_missing", "--json"])

    assert exit_code == EXIT_ERROR
    assert json.loads(stdout)["status"] == 404


async def test_channel_create_prints_inspector_link(runner, shared_relay):
    """`channel create` gives the inspector link with the token in the URL fragment."""
    exit_code, stdout, stderr = await runner.run(["channel", "create", "--relay", shared_relay.url, "--json"])
    assert exit_code == 0, stderr
    created = json.loads(stdout)
    assert created["inspector"] == f"{shared_relay.url}/inspect/{created['channel']}#token={created['token']}"

    exit_code, stdout, stderr = await runner.run(["channel", "create", "--relay", shared_relay.url, "--no-save"])
    assert exit_code == 0, stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("Inspector ")]
    assert line.startswith(f"Inspector {shared_relay.url}/inspect/ch_")
    assert "#token=hrt_" in line


async def test_listen_banner_shows_inspector_link(runner, shared_relay, target):
    """The listen banner names the inspector page; off a terminal it leaves the token out."""
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(shared_relay.url, channel, target.authority)

    match = await listener.wait_for_stderr(re.compile(r"Inspector +(\S+)"), DELIVERY_TIMEOUT)

    assert match.group(1) == f"{shared_relay.url}/inspect/{channel.id}"
    assert channel.token not in listener.stderr_text()


async def test_inspector_link_names_connected_relay(runner, shared_relay, target):
    """With several --relay URLs, the inspector link points at the relay the listener connected to."""
    channel = await runner.create_channel(shared_relay.url)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_relay = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        listener = runner.start_listener(f"{dead_relay},{shared_relay.url}", channel, target.authority)
        match = await listener.wait_for_stderr(re.compile(r"Inspector +(\S+)"), DELIVERY_TIMEOUT + RECONNECT_ALLOWANCE)
    finally:
        closed.close()

    assert match.group(1) == f"{shared_relay.url}/inspect/{channel.id}"


async def test_remembered_channel_named_when_several(runner, shared_relay):
    """Without --channel, a command names the remembered channel it used once there are several to pick from."""
    first = await runner.create_channel(shared_relay.url)
    alone_code, _, alone = await runner.run(["events", "list", "--relay", shared_relay.url])
    await runner.create_channel(shared_relay.url)
    several_code, _, several = await runner.run(["events", "list", "--relay", shared_relay.url])

    assert alone_code == 0, alone
    assert several_code == 0, several
    assert "using channel" not in alone
    assert f"hookrelay: using channel {first.id}, the first remembered for relay {shared_relay.url};" in several
