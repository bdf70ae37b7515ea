"""Reading a channel needs its token: the listen websocket and the `listen` command reject anything else."""

import base64
import secrets

from tests.support.api import api_request
from tests.support.checks import post_webhook
from tests.support.http import RawResponse, send_request
from tests.support.timing import MS

DELIVERY_TIMEOUT = 15_000 * MS
EXIT_TIMEOUT = 15_000 * MS
# ExitStatus.UNAUTHORIZED of the CLI.
EXIT_UNAUTHORIZED = 3
UNAUTHORIZED_BODY = {"error": "unauthorized", "message": "missing or invalid channel token"}


async def open_listen_websocket(relay_url: str, channel_id: str, token: str | None) -> RawResponse:
    """Send the websocket opening handshake for a channel's listen endpoint and return the response."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(secrets.token_bytes(16)).decode()),
        ("Sec-WebSocket-Version", "13"),
    ]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return await send_request(f"{relay_url}/api/channels/{channel_id}/listen", "GET", headers)


def response_summary(response: RawResponse) -> tuple[int, str, bytes]:
    return response.status, response.content_type, response.body


async def test_right_token_opens_websocket(runner, shared_relay):
    """The channel's own token upgrades the listen endpoint to a websocket."""
    channel = await runner.create_channel(shared_relay.url)

    response = await open_listen_websocket(shared_relay.url, channel.id, channel.token)

    assert response.status == 101, response.describe()


async def test_wrong_token_rejected_401(runner, shared_relay):
    """A wrong token gets 401 on the listen websocket."""
    channel = await runner.create_channel(shared_relay.url)

    response = await open_listen_websocket(shared_relay.url, channel.id, secrets.token_urlsafe(24))

    assert response.status == 401, response.describe()
    assert response.content_type.startswith("application/json"), response.describe()
    assert response.json() == UNAUTHORIZED_BODY


async def test_missing_token_rejected_401(runner, shared_relay):
    """A handshake without Authorization gets 401 on the listen websocket."""
    channel = await runner.create_channel(shared_relay.url)

    response = await open_listen_websocket(shared_relay.url, channel.id, None)

    assert response.status == 401, response.describe()


async def test_unknown_channel_same_response(runner, shared_relay):
    """An unknown channel gets the same response as a wrong token, so the response does not reveal which channels exist."""
    channel = await runner.create_channel(shared_relay.url)
    token = secrets.token_urlsafe(24)

    wrong_token = await open_listen_websocket(shared_relay.url, channel.id, token)
    unknown_channel = await open_listen_websocket(shared_relay.url, secrets.token_urlsafe(16), token)

    assert unknown_channel.status == 401, unknown_channel.describe()
    assert response_summary(unknown_channel) == response_summary(wrong_token)


async def test_other_channel_token_rejected(runner, shared_relay):
    """One channel's token does not open another channel and gets the wrong-token response."""
    first = await runner.create_channel(shared_relay.url)
    second = await runner.create_channel(shared_relay.url)

    borrowed = await open_listen_websocket(shared_relay.url, second.id, first.token)
    wrong_token = await open_listen_websocket(shared_relay.url, second.id, secrets.token_urlsafe(24))

    assert borrowed.status == 401, borrowed.describe()
    assert response_summary(borrowed) == response_summary(wrong_token)


async def test_listen_wrong_token_exits(runner, shared_relay, target):
    """`listen` with a wrong token exits with status 3 and a one-line reason, without a traceback."""
    channel = await runner.create_channel(shared_relay.url)

    listener = runner.start_listener(shared_relay.url, channel, target.authority, token=secrets.token_urlsafe(24))
    exit_code = await listener.wait_for_exit(EXIT_TIMEOUT)

    stderr = listener.stderr_text()
    error_lines = [line for line in stderr.splitlines() if line.startswith("hookrelay: error: ")]
    expected = (
        f"hookrelay: error: relay {shared_relay.url} rejected the token for channel {channel.id} (HTTP 401); "
        "check --token, or run 'hookrelay channel create' for a new channel"
    )
    assert exit_code == EXIT_UNAUTHORIZED
    assert error_lines == [expected], stderr
    assert "Traceback" not in stderr
    assert listener.stdout_text() == ""


async def test_rotated_token_disconnects_listener(runner, shared_relay, target):
    """A listener connected with the old token is cut off at the rotation, gets no later event and exits 3."""
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(shared_relay.url, channel, target.authority)
    before = await post_webhook(channel.url, b'{"n":1}')
    await target.wait_for_event(before, DELIVERY_TIMEOUT)

    rotated = await api_request(shared_relay.url, "POST", f"/api/channels/{channel.id}/rotate-token", token=channel.token)
    exit_code = await listener.wait_for_exit(EXIT_TIMEOUT)
    after = await post_webhook(channel.url, b'{"n":2}')

    assert rotated.status == 200, rotated.describe()
    assert exit_code == EXIT_UNAUTHORIZED
    errors = [line for line in listener.stderr_text().splitlines() if line.startswith("hookrelay: error: ")]
    assert errors == [
        f"hookrelay: error: relay {shared_relay.url} disconnected this listener because the token of channel"
        f" {channel.id} is no longer valid (rotated, or the channel was deleted); after a rotation start it again"
        " with the new token: 'hookrelay channel rotate-token' printed it and saved it on the machine where it ran,"
        " or pass it with --token"
    ]
    assert "reconnecting" not in listener.stderr_text()
    assert after not in target.event_ids
