"""Command-line errors: an invalid option exits with the usage status and a message, never a traceback."""

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
