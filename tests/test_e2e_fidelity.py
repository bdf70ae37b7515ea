"""Webhook requests pass through a real relay and listener to a local target byte for byte.

All cases share one channel, listener and target and are sent one at a
time. Each case finds its own request at the target by the event id that
the relay returned.
"""

import pytest
import pytest_asyncio

from tests.support.cases import load_shared_cases, SHARED_DIR
from tests.support.checks import (
    accepted_event_id,
    check_delivery,
    check_forwarding_headers,
    check_headers_in_order,
    check_no_invented_headers,
    check_sender_response,
)
from tests.support.own_cases import own_cases
from tests.support.pipeline import Pipeline
from tests.support.processes import ProcessRunner

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _shared_case_params() -> list:
    cases = load_shared_cases()
    if cases is None:
        reason = f"no shared webhook cases: {SHARED_DIR / 'cases' / 'requests.json'} does not exist"
        return [pytest.param(None, id="shared-cases-missing", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(case, id=case.id) for case in cases]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pipeline(shared_relay, tmp_path_factory) -> Pipeline:
    """One channel on the shared relay, forwarded to a capturing target."""
    runner = ProcessRunner(tmp_path_factory.mktemp("fidelity"))
    pipeline = await Pipeline.start(runner, shared_relay.url)
    try:
        yield pipeline
    finally:
        await pipeline.close()


@pytest.mark.parametrize("case", _shared_case_params())
async def test_shared_case(case, pipeline):
    """A recorded webhook request reaches the target as its case expects."""
    delivery = await pipeline.deliver(case.request)

    check_sender_response(case.expect, delivery.response)
    assert delivery.received is not None, delivery.failure
    check_delivery(case.expect, delivery.received, pipeline.target.authority)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in own_cases()])
async def test_own_case(case, pipeline):
    """A webhook request arrives unchanged, with only Host replaced and forwarding headers added."""
    delivery = await pipeline.deliver(case.request)

    check_sender_response(case.expect, delivery.response)
    event_id = accepted_event_id(delivery.response)
    assert delivery.received is not None, delivery.failure
    received = delivery.received
    check_delivery(case.expect, received, pipeline.target.authority)
    check_headers_in_order(case.request, received)
    check_no_invented_headers(case.request, received)

    sender_host = case.request.header("Host") or pipeline.public_authority
    check_forwarding_headers(received, pipeline.target.authority, sender_host)
    assert received.event_id == event_id
