"""Command-line basics: every failure exits with its status and one line, and remembered channels are listed."""

import json
import re

import pytest
import pytest_asyncio
from aiohttp import web

from tests.support.api import api_request, poll
from tests.support.checks import post_webhook
from tests.support.timing import MS

# ExitStatus.USAGE of the CLI.
EXIT_USAGE = 2
CONNECT_TIMEOUT = 15_000 * MS


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(["serve", "--bogus"], id="unknown-option"),
        pytest.param(
            ["listen", "--relay", "http://127.0.0.1:9", "--channel", "c", "--token", "t", "--forward", "1",
             "--concurrency", "abc"],
            id="invalid-integer",
        ),
    ],
)
async def test_invalid_option_usage_error(arguments, runner):
    """An invalid command line exits with status 2 and names the problem without a traceback."""
    exit_code, stdout, stderr = await runner.run(arguments)

    assert exit_code == EXIT_USAGE, stderr
    assert "Traceback" not in stderr
    assert stderr.strip()
    assert stdout == ""


async def test_version_option_and_command_agree(runner):
    """`hookrelay --version` prints what `hookrelay version` prints, the package version."""
    from relay_client import __version__

    option = await runner.run(["--version"])
    command = await runner.run(["version"])

    assert option == (0, f"{__version__}\n", "")
    assert command == option


async def test_channel_list_shows_created_channels(runner, shared_relay):
    """`channel list` shows each remembered channel with its full id, in the table and as JSON."""
    channel = await runner.create_channel(shared_relay.url)

    table_code, table, table_errors = await runner.run(["channel", "list"])
    json_code, listed, json_errors = await runner.run(["channel", "list", "--json"])

    assert table_code == 0, table_errors
    assert channel.id in table
    assert json_code == 0, json_errors
    assert {"relay": shared_relay.url, "channel": channel.id, "url": channel.url} in json.loads(listed)


# -- every failure is one `hookrelay: error:` line -----------------------------

EXIT_UNAUTHORIZED = 3
EXIT_NOT_A_RELAY = 5
ADMIN_TOKEN = "admin-token-for-tests"


def check_one_error_line(stderr: str) -> None:
    """Check that the command printed exactly one line, an error, and no traceback."""
    assert "Traceback" not in stderr
    assert stderr.startswith("hookrelay: error: "), stderr
    assert stderr.count("\n") == 1, stderr


@pytest_asyncio.fixture
async def start_server():
    """Start aiohttp servers on 127.0.0.1 that handle every request with `handler`, and stop them in teardown."""
    runners: list[web.AppRunner] = []

    async def start(handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = web.AppRunner(app)
        await server.setup()
        runners.append(server)
        site = web.TCPSite(server, "127.0.0.1", 0)
        await site.start()
        port = server.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server in runners:
            await server.cleanup()


async def answer_ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def answer_html_404(request: web.Request) -> web.Response:
    return web.Response(status=404, text="<h1>Not Found</h1>", content_type="text/html")


async def answer_foreign_401(request: web.Request) -> web.Response:
    return web.json_response({"detail": "Not authenticated"}, status=401)


async def answer_event_list_of_strings(request: web.Request) -> web.Response:
    return web.json_response({"events": ["evt_1"], "next_before": None})


NOT_A_RELAY_COMMANDS = [
    pytest.param(["events", "list"], "GET /api/channels/ch_x/events", id="events-list"),
    pytest.param(["events", "show", "evt_1"], "GET /api/channels/ch_x/events/evt_1", id="events-show"),
    pytest.param(["events", "replay", "evt_1"], "POST /api/channels/ch_x/events/evt_1/replay", id="events-replay"),
    pytest.param(["events", "delete", "evt_1"], "DELETE /api/channels/ch_x/events/evt_1", id="events-delete"),
    pytest.param(["replay", "evt_1", "--to", "9"], "GET /api/channels/ch_x/events/evt_1", id="replay-to"),
    pytest.param(["channel", "show"], "GET /api/channels/ch_x", id="channel-show"),
    pytest.param(["channel", "update", "--response", "sync"], "PATCH /api/channels/ch_x", id="channel-update"),
    pytest.param(["channel", "rotate-token"], "POST /api/channels/ch_x/rotate-token", id="channel-rotate-token"),
    pytest.param(["channel", "verify", "--mode", "off"], "PATCH /api/channels/ch_x", id="channel-verify"),
    pytest.param(["channel", "dedupe", "--window", "1h"], "PATCH /api/channels/ch_x", id="channel-dedupe"),
]


@pytest.mark.parametrize(("arguments", "request_line"), NOT_A_RELAY_COMMANDS)
async def test_json_server_is_not_a_relay(arguments, request_line, runner, start_server):
    """Each command that reads the relay API names a JSON server that is not a relay and exits 5."""
    url = await start_server(answer_ok)

    exit_code, stdout, stderr = await runner.run([*arguments, "--relay", url, "--channel", "ch_x", "--token", "t"])

    assert exit_code == EXIT_NOT_A_RELAY, stderr
    check_one_error_line(stderr)
    assert stderr.startswith(f"hookrelay: error: {url} did not answer like a hookrelay relay ({request_line}: "), stderr
    assert stdout == ""


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        pytest.param(["channel", "create"], "HTTP 200 where the relay sends 201", id="channel-create"),
        pytest.param(["listen", "--forward", "9"], "HTTP 200 where the relay sends 201", id="listen-creates-channel"),
    ],
)
async def test_channel_creation_on_json_server(arguments, reason, runner, start_server):
    """Creating a channel on a JSON server that is not a relay fails with status 5 instead of a KeyError."""
    url = await start_server(answer_ok)

    exit_code, stdout, stderr = await runner.run([*arguments, "--relay", url])

    assert exit_code == EXIT_NOT_A_RELAY, stderr
    check_one_error_line(stderr)
    assert f"{url} did not answer like a hookrelay relay (POST /api/channels: {reason}); " in stderr


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        pytest.param(answer_html_404, "HTTP 404 with a body that is not JSON", id="html-404"),
        pytest.param(answer_foreign_401, "HTTP 401 without the relay's JSON error fields", id="foreign-401"),
        pytest.param(answer_event_list_of_strings, 'field "events[0]" is a string, not an object', id="wrong-item"),
    ],
)
async def test_wrong_answers_named(handler, reason, runner, start_server):
    """A response that is not JSON, an error without the relay's fields or a wrong item is named in the error."""
    url = await start_server(handler)

    exit_code, _, stderr = await runner.run(["events", "list", "--relay", url, "--channel", "ch_x", "--token", "t"])

    assert exit_code == EXIT_NOT_A_RELAY, stderr
    check_one_error_line(stderr)
    assert f"(GET /api/channels/ch_x/events: {reason}); " in stderr


async def test_send_missing_file(runner, tmp_path):
    """`send` with a file that does not exist is a usage error naming the file."""
    missing = tmp_path / "nonexistent.json"

    exit_code, stdout, stderr = await runner.run(["send", str(missing), "--url", "http://127.0.0.1:9/h/ch_x"])

    assert exit_code == EXIT_USAGE, stderr
    assert stderr == f"hookrelay: error: invalid PAYLOAD '{missing}': no such file; give a file, - for stdin, or --sample NAME\n"
    assert stdout == ""


async def test_damaged_channel_file(runner):
    """A channels.json of the wrong shape is a usage error naming the file, not a TypeError."""
    book = runner.log_dir / "config" / "channels.json"
    book.parent.mkdir(parents=True, exist_ok=True)
    book.write_text('{"http://127.0.0.1:8787": ["ch_x"]}')

    exit_code, _, stderr = await runner.run(["channel", "list"])

    assert exit_code == EXIT_USAGE, stderr
    check_one_error_line(stderr)
    assert stderr.startswith(f"hookrelay: error: invalid channel file '{book}': expected "), stderr


async def test_admin_token_missing_or_wrong(runner, tmp_path):
    """A missing or wrong admin token exits 3, and the error names the option that passes it."""
    relay = await runner.start_relay(tmp_path / "data", "--admin-token", ADMIN_TOKEN)
    fix = "pass the relay's admin token with --admin-token or set HOOKRELAY_ADMIN_TOKEN"

    missing_code, _, missing = await runner.run(["channel", "create", "--relay", relay.url])
    wrong_code, _, wrong = await runner.run(["channel", "create", "--relay", relay.url, "--admin-token", "wrong"])
    listen_code, _, listen = await runner.run(["listen", "--relay", relay.url, "--forward", "9"])
    right_code, created, right = await runner.run(["channel", "create", "--relay", relay.url, "--admin-token", ADMIN_TOKEN, "--json"])

    assert missing_code == EXIT_UNAUTHORIZED, missing
    assert missing == f"hookrelay: error: relay {relay.url} needs its admin token to create channels (HTTP 401); {fix}\n"
    assert wrong_code == EXIT_UNAUTHORIZED, wrong
    assert wrong == f"hookrelay: error: relay {relay.url} rejected the admin token (HTTP 401); {fix}\n"
    assert listen_code == EXIT_UNAUTHORIZED, listen
    assert listen == missing
    assert right_code == 0, right
    assert json.loads(created)["channel"].startswith("ch_")


RELAY_URL_ERRORS = [
    pytest.param("127.0.0.1:8787", "the URL needs http:// or https:// in front, such as http://127.0.0.1:8787", id="no-scheme"),
    pytest.param("ftp://127.0.0.1:8787", "use an http:// or https:// URL, not ftp://", id="ftp"),
    pytest.param("http://127.0.0.1:99999", "port 99999 is out of range; use a port from 1 to 65535", id="port-too-large"),
    pytest.param("http://127.0.0.1:0", "port 0 is out of range; use a port from 1 to 65535", id="port-zero"),
    pytest.param("http://127.0.0.1:http", "port http is not a number; use a port from 1 to 65535", id="port-not-a-number"),
    pytest.param("http://:8787", "the URL has no host; use a URL such as https://relay.example.com", id="no-host"),
]
RELAY_COMMANDS = [
    pytest.param(["channel", "create"], id="channel-create"),
    pytest.param(["channel", "show", "--channel", "ch_x", "--token", "t"], id="channel-show"),
    pytest.param(["channel", "verify", "--mode", "off", "--channel", "ch_x", "--token", "t"], id="channel-verify"),
    pytest.param(["events", "list", "--channel", "ch_x", "--token", "t"], id="events-list"),
    pytest.param(["replay", "evt_1", "--to", "9", "--channel", "ch_x", "--token", "t"], id="replay-to"),
    pytest.param(["listen", "--forward", "9", "--channel", "ch_x", "--token", "t"], id="listen"),
]


@pytest.mark.parametrize(("relay", "problem"), RELAY_URL_ERRORS)
@pytest.mark.parametrize("arguments", RELAY_COMMANDS)
async def test_invalid_relay_url_usage_error(arguments, relay, problem, runner):
    """An invalid --relay is a usage error that names the defect, not an unreachable relay."""
    exit_code, stdout, stderr = await runner.run([*arguments, "--relay", relay])

    assert exit_code == EXIT_USAGE, stderr
    assert stderr == f"hookrelay: error: invalid --relay '{relay}': {problem}\n"
    assert stdout == ""


async def test_invalid_relay_in_listen_list(runner):
    """`listen` checks every relay of a comma-separated list."""
    arguments = ["listen", "--forward", "9", "--channel", "ch_x", "--token", "t", "--relay", "http://127.0.0.1:9,127.0.0.1:8787"]

    exit_code, _, stderr = await runner.run(arguments)

    assert exit_code == EXIT_USAGE, stderr
    assert stderr == "hookrelay: error: invalid --relay '127.0.0.1:8787': the URL needs http:// or https:// in front, such as http://127.0.0.1:8787\n"


async def test_relay_list_only_for_listen(runner):
    """Commands other than `listen` take one relay URL."""
    exit_code, _, stderr = await runner.run(["channel", "create", "--relay", "http://127.0.0.1:9,http://127.0.0.1:10"])

    assert exit_code == EXIT_USAGE, stderr
    assert stderr == "hookrelay: error: invalid --relay 'http://127.0.0.1:9,http://127.0.0.1:10': only 'hookrelay listen' takes several relay URLs\n"


async def test_invalid_relay_from_environment(runner):
    """An invalid HOOKRELAY_RELAY is named as the variable the value came from."""
    runner.environment["HOOKRELAY_RELAY"] = "localhost:8787"

    exit_code, _, stderr = await runner.run(["events", "list", "--channel", "ch_x", "--token", "t"])

    assert exit_code == EXIT_USAGE, stderr
    assert stderr.startswith("hookrelay: error: invalid --relay 'localhost:8787' in HOOKRELAY_RELAY: "), stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(
            ["--provider", "hmac", "--secret", "x", "--mode", "reject"],
            "missing header: the hmac provider needs the name of the header that carries the signature; "
            "pass it with --header, such as --header X-Signature",
            id="hmac-without-header",
        ),
        pytest.param(
            ["--provider", "stripe", "--mode", "reject"],
            "missing secret: the stripe provider needs its signing secret; pass it with --secret",
            id="stripe-without-secret",
        ),
        pytest.param(
            ["--provider", "github", "--secret", "", "--mode", "mark"],
            "missing secret: the github provider needs its signing secret; pass it with --secret",
            id="empty-secret",
        ),
        pytest.param(
            ["--mode", "reject"],
            "missing provider: the channel checks no signatures yet; pass --provider with one of github, stripe, slack, shopify, "
            "standard-webhooks, hmac",
            id="no-provider",
        ),
    ],
)
async def test_verify_missing_settings_named(arguments, message, runner, shared_relay):
    """`channel verify` without a setting the provider needs names the option to pass, never None."""
    channel = await runner.create_channel(shared_relay.url)
    options = ["--relay", shared_relay.url, "--channel", channel.id, "--token", channel.token]

    exit_code, _, stderr = await runner.run(["channel", "verify", *arguments, *options])

    assert exit_code == EXIT_USAGE, stderr
    assert "None" not in stderr
    assert stderr == f"hookrelay: error: relay {shared_relay.url} rejected the request: HTTP 400: {message}\n"


async def test_channel_show_lists_groups_and_response(runner, shared_relay, target):
    """`channel show` names every consumer group with its backlog, and the response mode."""
    channel = await runner.create_channel(shared_relay.url)
    audit = runner.start_listener(shared_relay.url, channel, target.authority, "--group", "audit")
    await audit.wait_for_stderr(re.compile(r"hookrelay listening"), CONNECT_TIMEOUT)
    # The relay creates the group with the listener's first claim, just after the welcome.
    await poll(
        lambda: api_request(shared_relay.url, "GET", f"/api/channels/{channel.id}", token=channel.token),
        lambda answer: "audit" in answer.body.get("groups", {}),
        CONNECT_TIMEOUT,
        "the audit group to exist",
    )
    audit.kill()
    await audit.wait_for_exit(CONNECT_TIMEOUT)
    await post_webhook(channel.url, b'{"held":1}')

    code, stdout, stderr = await runner.run(
        ["channel", "show", "--relay", shared_relay.url, "--channel", channel.id, "--token", channel.token]
    )
    _, json_out, _ = await runner.run(
        ["channel", "show", "--relay", shared_relay.url, "--channel", channel.id, "--token", channel.token, "--json"]
    )

    assert code == 0, stderr
    assert "groups     audit 1, default 1" in stdout.splitlines()
    assert "response   async, timeout 5 s, fallback 202" in stdout.splitlines()
    assert json.loads(json_out)["groups"] == {"audit": 1, "default": 1}
