"""One channel forwarded by one listener to one capturing target, for tests that send many webhooks."""

from dataclasses import dataclass
from urllib.parse import urlsplit

from .cases import WebhookRequest
from .http import RawResponse, send_request
from .processes import Channel, HookrelayProcess, ProcessRunner
from .target import CapturedRequest, CapturingTarget
from .timing import MS

DELIVERY_TIMEOUT = 20_000 * MS


@dataclass(frozen=True)
class Delivery:
    """The relay's response to one webhook and the request that reached the target, if one did."""

    response: RawResponse
    event_id: str | None
    received: CapturedRequest | None
    failure: str = ""


class Pipeline:
    """Relay, channel, listener and target wired together."""

    def __init__(self, runner: ProcessRunner, relay_url: str, channel: Channel, target: CapturingTarget):
        self.runner = runner
        self.relay_url = relay_url
        self.channel = channel
        self.target = target
        self.listener: HookrelayProcess | None = None

    @classmethod
    async def start(cls, runner: ProcessRunner, relay_url: str) -> "Pipeline":
        target = CapturingTarget()
        await target.start()
        channel = await runner.create_channel(relay_url)
        pipeline = cls(runner, relay_url, channel, target)
        pipeline.ensure_listener()
        return pipeline

    @property
    def public_authority(self) -> str:
        """Return the host:port of the channel's public URL, the Host a sender uses by default."""
        return urlsplit(self.channel.url).netloc

    def ensure_listener(self) -> None:
        """Start a listener unless one is running, so that one crash does not fail every later test."""
        if self.listener is None or self.listener.returncode is not None:
            self.listener = self.runner.start_listener(self.relay_url, self.channel, self.target.authority)

    async def send(self, request: WebhookRequest) -> RawResponse:
        return await send_request(
            self.channel.url,
            request.method,
            list(request.headers),
            request.body,
            tail=request.path,
            query=request.query,
            chunked=request.chunked,
        )

    async def deliver(self, request: WebhookRequest, timeout: float = DELIVERY_TIMEOUT) -> Delivery:
        """Send `request` and wait until the event id from the relay's response reaches the target."""
        self.ensure_listener()
        response = await self.send(request)
        event_id = event_id_of(response)
        if event_id is None:
            return Delivery(response, None, None, f"the relay responded without an event id: {response.describe()}")
        try:
            received = await self.target.wait_for_event(event_id, timeout)
        except AssertionError as error:
            return Delivery(response, event_id, None, f"{error}\nlistener stderr:\n{self.listener.stderr_tail()}")
        return Delivery(response, event_id, received)

    async def close(self) -> None:
        await self.runner.stop_all_async()
        await self.target.stop()


def event_id_of(response: RawResponse) -> str | None:
    """Return the `id` of a 2xx JSON response, or None when the response has none."""
    if not 200 <= response.status < 300:
        return None
    try:
        document = response.json()
    except ValueError:
        return None
    return document.get("id") if isinstance(document, dict) else None
