"""Signature verification through real relay and listener processes, for every provider.

`hookrelay channel verify` sets the check on the relay. In mark mode every
request is stored and reaches the target with `X-Hookrelay-Verified`; in
reject mode only valid ones do, the rest get 401, are counted, and are never
stored. The secret never appears in an API answer or a relay log line.
"""

import json
import time
import uuid

import pytest

from tests.support.http import send_request
from tests.support.providers import ALL_PROVIDERS, TIMESTAMPED, scheme_of, secret_for, signed_headers, verify_options
from tests.support.timing import MS

DELIVERY_TIMEOUT = 20_000 * MS
STALE_SECONDS = 400


def body_for(provider: str) -> bytes:
    kind = {"github": "push", "stripe": "invoice.paid", "slack": "event_callback"}.get(provider, "order.created")
    return json.dumps({"id": f"evt_{uuid.uuid4().hex[:12]}", "type": kind, "amount": 100}).encode()


def requests_for(provider: str) -> dict[str, tuple[list[tuple[str, str]], bytes]]:
    """Return the four cases for `provider`: correct, tampered, stale and missing signatures."""
    now = int(time.time())
    body = body_for(provider)
    base = [("Content-Type", "application/json"), ("X-Case-Id", "")]

    def case(name, headers, sent_body):
        return [(key, name if key == "X-Case-Id" else value) for key, value in base] + headers, sent_body

    return {
        "correct": case("correct", signed_headers(provider, body, now, f"msg_{uuid.uuid4().hex}"), body),
        "tampered": case("tampered", signed_headers(provider, body, now, f"msg_{uuid.uuid4().hex}"), body.replace(b"100", b"900")),
        "stale": case("stale", signed_headers(provider, body, now - STALE_SECONDS, f"msg_{uuid.uuid4().hex}"), body),
        "missing": case("missing", [], body),
    }


def expected_results(provider: str) -> dict[str, str]:
    # GitHub, Shopify and generic HMAC signatures cover no timestamp, so an
    # old but authentic delivery is valid for them.
    stale = "stale" if provider in TIMESTAMPED else "valid"
    return {"correct": "valid", "tampered": "invalid", "stale": stale, "missing": "missing"}


async def configure(runner, relay_url, channel, provider, mode) -> dict:
    arguments = ["channel", "verify", "--relay", relay_url, "--channel", channel.id, "--token", channel.token]
    exit_code, stdout, stderr = await runner.run([*arguments, *verify_options(provider), "--mode", mode, "--json"])
    assert exit_code == 0, stderr
    return json.loads(stdout)


async def show(runner, relay_url, channel) -> tuple[str, dict]:
    arguments = ["channel", "show", "--relay", relay_url, "--channel", channel.id, "--token", channel.token, "--json"]
    exit_code, stdout, stderr = await runner.run(arguments)
    assert exit_code == 0, stderr
    return stdout, json.loads(stdout)


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_mark_mode_forwards_verdict(provider, runner, shared_relay, target):
    """In mark mode each request is delivered with the relay's verdict in X-Hookrelay-Verified and in --json."""
    channel = await runner.create_channel(shared_relay.url)
    answer = await configure(runner, shared_relay.url, channel, provider, "mark")
    listener = runner.start_listener(shared_relay.url, channel, target.authority)
    cases = requests_for(provider)

    for name, (headers, body) in cases.items():
        response = await send_request(channel.url, "POST", headers, body, tail=f"/{provider}")
        assert response.status == 202, f"{name}: {response.describe()}"
    await target.wait_for_requests(4, DELIVERY_TIMEOUT)

    expected = expected_results(provider)
    verdicts = {request.header("X-Case-Id"): request.header("X-Hookrelay-Verified") for request in target.requests}
    assert verdicts == {name: f"{scheme_of(provider)}; result={result}" for name, result in expected.items()}
    assert answer["verify"]["mode"] == "mark"
    assert answer["verify"]["provider"] == provider
    records = await _json_records(listener, 4)
    assert sorted(record["verified"]["result"] for record in records) == sorted(expected.values())
    assert f"[{scheme_of(provider)} invalid]" in listener.stderr_text()


async def _json_records(listener, count):
    from tests.support.timing import wait_until

    await wait_until(lambda: len(listener.json_lines()) >= count, DELIVERY_TIMEOUT, f"{count} --json lines")
    return listener.json_lines()


@pytest.mark.parametrize("provider", ALL_PROVIDERS)
async def test_reject_mode_refuses_bad_signatures(provider, runner, shared_relay, target):
    """In reject mode only the valid request is stored and delivered; the others get 401 JSON and are counted."""
    channel = await runner.create_channel(shared_relay.url)
    await configure(runner, shared_relay.url, channel, provider, "reject")
    runner.start_listener(shared_relay.url, channel, target.authority)
    cases = requests_for(provider)

    statuses = {}
    for name, (headers, body) in cases.items():
        response = await send_request(channel.url, "POST", headers, body, tail=f"/{provider}")
        statuses[name] = response.status
        if response.status == 401:
            assert response.json()["error"] == "signature_invalid"
            assert response.content_type.startswith("application/json")

    expected = expected_results(provider)
    assert statuses == {name: 202 if result == "valid" else 401 for name, result in expected.items()}
    await target.wait_for_requests(list(statuses.values()).count(202), DELIVERY_TIMEOUT)
    _, info = await show(runner, shared_relay.url, channel)
    assert info["backlog"] == 0
    assert sorted(request.header("X-Case-Id") for request in target.requests) == sorted(n for n, s in statuses.items() if s == 202)
    refused = {f"signature_{result}": 1 for result in expected.values() if result != "valid"}
    assert {key: value for key, value in info["counts"].items() if key.startswith("signature_")} == refused


async def test_secret_never_shown_or_logged(runner, tmp_path, target):
    """Neither the verify answer, channel show, the events API nor a debug-level relay log contains the secret."""
    relay = await runner.start_relay(tmp_path / "data", "--log-level", "debug")
    channel = await runner.create_channel(relay.url)
    secret = secret_for("github") + "-" + uuid.uuid4().hex
    arguments = ["channel", "verify", "--relay", relay.url, "--channel", channel.id, "--token", channel.token]
    exit_code, verify_out, stderr = await runner.run([*arguments, "--provider", "github", "--secret", secret, "--mode", "reject", "--json"])
    assert exit_code == 0, stderr
    await send_request(channel.url, "POST", [("X-Hub-Signature-256", "sha256=" + "0" * 64)], b"{}")
    await send_request(channel.url, "POST", [], b"{}")

    show_out, info = await show(runner, relay.url, channel)
    events = await send_request(f"{relay.url}/api/channels/{channel.id}/events", "GET", [("Authorization", f"Bearer {channel.token}")])

    assert info["verify"] == {"provider": "github", "mode": "reject", "tolerance": 300.0}
    for text in (verify_out, show_out, events.body.decode(errors="replace"), relay.process.stderr_text()):
        assert secret not in text
        assert secret[-16:] not in text


async def test_verify_off_removes_check(runner, shared_relay, target):
    """--mode off removes the check: later requests are stored without a verdict."""
    channel = await runner.create_channel(shared_relay.url)
    await configure(runner, shared_relay.url, channel, "github", "reject")
    arguments = ["channel", "verify", "--relay", shared_relay.url, "--channel", channel.id, "--token", channel.token]
    exit_code, stdout, stderr = await runner.run([*arguments, "--mode", "off", "--json"])
    runner.start_listener(shared_relay.url, channel, target.authority)

    response = await send_request(channel.url, "POST", [("Content-Type", "application/json")], b"{}")
    [received] = await target.wait_for_requests(1, DELIVERY_TIMEOUT)

    assert exit_code == 0, stderr
    assert json.loads(stdout)["verify"] is None
    assert response.status == 202
    assert received.header("X-Hookrelay-Verified") is None


async def test_verify_rejects_bad_options(runner, shared_relay):
    """Invalid settings exit non-zero with one error line naming the problem."""
    channel = await runner.create_channel(shared_relay.url)
    arguments = ["channel", "verify", "--relay", shared_relay.url, "--channel", channel.id, "--token", channel.token]

    exit_code, stdout, stderr = await runner.run([*arguments, "--provider", "standard-webhooks", "--secret", "whsec_***", "--mode", "mark"])

    assert exit_code == 2
    assert stdout == ""
    assert stderr.startswith("hookrelay: error: ")
    assert "Standard Webhooks secret" in stderr
    assert "Traceback" not in stderr


async def test_spoofed_verdict_header_dropped(runner, shared_relay, target):
    """A sender's own X-Hookrelay-Verified never reaches the target, with or without a check on the channel."""
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, target.authority)

    await send_request(channel.url, "POST", [("X-Hookrelay-Verified", "github; result=valid")], b"{}")
    [received] = await target.wait_for_requests(1, DELIVERY_TIMEOUT)

    assert received.header("X-Hookrelay-Verified") is None
