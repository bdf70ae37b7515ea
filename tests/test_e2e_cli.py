"""Command-line basics: usage errors exit with the usage status and one line, and remembered channels are listed."""

import json

import pytest

# ExitStatus.USAGE of the CLI.
EXIT_USAGE = 2


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


async def test_channel_list_shows_created_channels(runner, shared_relay):
    """`channel list` shows each remembered channel with its full id, in the table and as JSON."""
    channel = await runner.create_channel(shared_relay.url)

    table_code, table, table_errors = await runner.run(["channel", "list"])
    json_code, listed, json_errors = await runner.run(["channel", "list", "--json"])

    assert table_code == 0, table_errors
    assert channel.id in table
    assert json_code == 0, json_errors
    assert {"relay": shared_relay.url, "channel": channel.id, "url": channel.url} in json.loads(listed)
