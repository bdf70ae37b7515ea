"""GitHub's published example payloads, sent as GitHub sends them, arrive with a valid signature.

The payloads live in `payloads/github/<event>/*.json` of the shared folder
beside the repository. One listener carries all of them, and each test
checks one payload.
"""

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.cases import SHARED_DIR, WebhookRequest
from tests.support.pipeline import Delivery, Pipeline, event_id_of
from tests.support.processes import ProcessRunner
from tests.support.signatures import sign_github, verify_github
from tests.support.timing import MS, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAYLOADS_DIR = SHARED_DIR / "payloads" / "github"
SECRET = "hookrelay-tests-github-payloads"
SENDERS = 8
ALL_ARRIVED_TIMEOUT = 120_000 * MS


@dataclass(frozen=True)
class GithubPayload:
    path: Path
    event: str
    delivery_id: str

    @property
    def name(self) -> str:
        return f"{self.event}/{self.path.name}"


def _payloads() -> list[GithubPayload]:
    files = sorted(PAYLOADS_DIR.glob("*/*.json"))
    return [GithubPayload(path, path.parent.name, str(uuid.uuid4())) for path in files]


PAYLOADS = _payloads()


def _payload_params() -> list:
    if not PAYLOADS:
        reason = f"no GitHub example payloads under {PAYLOADS_DIR}"
        return [pytest.param(None, id="github-payloads-missing", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(payload, id=payload.name) for payload in PAYLOADS]


def _github_request(payload: GithubPayload) -> WebhookRequest:
    body = payload.path.read_bytes()
    headers = (
        ("Accept", "*/*"),
        ("Content-Type", "application/json"),
        ("User-Agent", "GitHub-Hookshot/hookrelay-tests"),
        ("X-GitHub-Delivery", payload.delivery_id),
        ("X-GitHub-Event", payload.event),
        ("X-GitHub-Hook-ID", "424242"),
        ("X-Hub-Signature-256", sign_github(SECRET, body)),
    )
    return WebhookRequest(method="POST", path="/github", query="", headers=headers, body=body)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deliveries(shared_relay, tmp_path_factory) -> dict[str, Delivery]:
    """Send every payload with a few concurrent senders and return what arrived, by delivery id."""
    runner = ProcessRunner(tmp_path_factory.mktemp("github-payloads"))
    pipeline = await Pipeline.start(runner, shared_relay.url)
    senders = asyncio.Semaphore(SENDERS)

    async def send(payload: GithubPayload):
        async with senders:
            return payload, await pipeline.send(_github_request(payload))

    try:
        responses = await asyncio.gather(*(send(payload) for payload in PAYLOADS))
        accepted = [event_id_of(response) for _, response in responses if event_id_of(response)]
        try:
            await wait_until(
                lambda: set(accepted) <= set(pipeline.target.event_ids),
                ALL_ARRIVED_TIMEOUT,
                "every accepted GitHub payload at the target",
            )
        except AssertionError:
            pass  # each test reports its own missing payload

        by_delivery_id = {request.header("X-GitHub-Delivery"): request for request in pipeline.target.requests}
        yield {
            payload.delivery_id: Delivery(response, None, by_delivery_id.get(payload.delivery_id))
            for payload, response in responses
        }
    finally:
        await pipeline.close()


@pytest.mark.parametrize("payload", _payload_params())
async def test_github_payload(payload, deliveries):
    """A GitHub payload arrives byte for byte with a signature that verifies."""
    delivery = deliveries[payload.delivery_id]
    body = payload.path.read_bytes()

    assert delivery.response.status == 202, delivery.response.describe()
    assert delivery.received is not None, f"{payload.name} did not reach the target"
    received = delivery.received
    assert hashlib.sha256(received.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert received.header("X-GitHub-Event") == payload.event
    assert received.header("Content-Type") == "application/json"
    assert verify_github(SECRET, received.body, received.header("X-Hub-Signature-256") or "")
