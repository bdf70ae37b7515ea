"""Redis backend: one stream per channel, one consumer group per listener group.

Several relay nodes share one Redis and so share channels, positions and
pending lists: an event stored through one node is claimed by a listener
connected to another. Every change to a channel runs as one Lua script (see
:mod:`relay_server.store.redis_scripts` for the keys and their layout), so
the log, its indexes and the group state never disagree, whichever node
wrote them.

Durability is Redis's. With ``appendonly yes`` and ``appendfsync always``
Redis writes and syncs its append-only file before it replies, so a stored
event survives a crash of Redis or of the machine. Weaker settings lose the
last second of writes, or everything since the last snapshot.

The scripts that make events claimable (append, replay, release) also
publish the wake-up on :data:`HUB_CHANNEL` themselves, so it leaves Redis
together with the script's reply and costs the node no second round trip.
:mod:`relay_server.redis_hub` reads that pub/sub channel on every node.

Commands are never cancelled half-way: a cancelled command on a shared
connection could leave its reply to be read by the next one. Each command
runs in a task of its own that the caller awaits through a shield.

Appends to one channel go out in pipelines, one in flight per channel and
node (see :meth:`RedisStore.append`), so concurrent senders share round
trips and Redis's syncs of its append-only file.

Channel records (token hash, created_at, settings) come from a copy in the
node's memory, so ingest does not wait for a channel read before the
append. Every change to a channel publishes ``C <channel>`` on
:data:`HUB_CHANNEL` in the same round trip, and :class:`~relay_server.store.redis_channels.ChannelCache`
decides how long a copy is used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from relay_server.errors import ChannelFull, DuplicateEvent, EventInFlight, StoreError
from relay_server.protocol import AttemptReport, DeliveryResult, Event
from relay_server.store import redis_scripts
from relay_server.store.redis_channels import CHANNEL_MAX_AGE, ChannelCache
from relay_server.store.base import (
    DEFAULT_GROUP,
    AttemptRecord,
    ChannelRecord,
    EventDetail,
    EventQuery,
    EventStore,
    EventSummary,
    NewEvent,
    Outcome,
    Retention,
    SenderAnswer,
)

logger = logging.getLogger("hookrelay.server.store")

T = TypeVar("T")

PREFIX = "hookrelay"
CHANNELS_KEY = f"{PREFIX}:channels"
# The pub/sub channel of the relay nodes' hub. A pub/sub channel is not a
# key, so scripts receive it in ARGV and it belongs to no hash slot.
HUB_CHANNEL = f"{PREFIX}:hub"
_CHANNEL_KEYS = ("meta", "log", "ids", "bodies", "outcomes", "attempts", "answers", "replays", "consumers", "progress")

# A consumer is alive while its node refreshes it, every third of the TTL;
# after a TTL without a refresh (its node died) other nodes reclaim its
# pending events.
PRESENCE_TTL = 15.0

# Share of a full channel pruned at once, as in the SQLite store.
_PRUNE_FRACTION = 0.01
_PRUNE_BUDGET = 1000
_HISTORY_CHUNK = 500
# The REPLAY script's result when a live consumer is delivering the event.
_REPLAY_IN_FLIGHT = 2

_SCRIPT_NAMES = (
    "APPEND", "CLAIM", "ACK", "RECORD", "RELEASE", "BACKLOG", "DETAIL",
    "DELETE", "REPLAY", "PRUNE_AGE", "REFRESH", "UPDATE_CHANNEL",
)  # fmt: skip

# An append waiting for its pipeline: keys, script arguments, and the future of its reply.
_QueuedAppend = tuple[list[str], list[Any], "asyncio.Future[Any]"]


def wake_up_message(channel: str) -> str:
    """Build the hub message that wakes the listener sessions of ``channel`` on every node."""
    return f"W {channel}"


def channel_changed_message(channel: str) -> str:
    """Build the hub message that makes every node drop its copy of ``channel``'s record."""
    return f"C {channel}"


def channel_keys(channel: str) -> list[str]:
    """Return the channel's keys in the order the scripts expect them."""
    return [f"{PREFIX}:{{{channel}}}:{name}" for name in _CHANNEL_KEYS]


class RedisStore(EventStore):
    """The shared store: Redis Streams at ``url`` (``redis://host:port/db``)."""

    def __init__(
        self,
        url: str,
        *,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        max_connections: int = 64,
        presence_ttl: float = PRESENCE_TTL,
        channel_max_age: float = CHANNEL_MAX_AGE,
    ) -> None:
        self.url = url
        self.retention = retention or Retention()
        self._clock = clock
        self._max_connections = max_connections
        self.presence_ttl = presence_ttl
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        # Consumers served by this node, refreshed in Redis while they live.
        self._live: dict[str, set[str]] = {}
        self._refresher: asyncio.Task[None] | None = None
        # Per channel, the expired consumers (group/consumer) of the last refresh.
        self._stale_seen: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Per channel: appends waiting for the next pipeline, and the task that sends them.
        self._queued_appends: dict[str, list[_QueuedAppend]] = {}
        self._append_senders: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        # Called with a channel id when consumers of it stopped refreshing,
        # so that local listeners claim their events (the hub's wake_local).
        self.on_reclaimable: Callable[[str], None] | None = None
        # Copies of channel records, which the node's hub enables and invalidates.
        self.channel_cache = ChannelCache(max_age=channel_max_age)

    # -- lifecycle -----------------------------------------------------

    async def open(self) -> None:
        self._client = aioredis.Redis.from_url(
            self.url,
            max_connections=self._max_connections,
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=30,
        )
        for name in _SCRIPT_NAMES:
            self._scripts[name] = self._client.register_script(getattr(redis_scripts, name))
        try:
            await self.ping()
        except StoreError as exc:
            # The node still starts: ingest responds 503 and /readyz reports
            # not ready until Redis can be reached.
            logger.error("store not reachable at start url=%s: %s", redact(self.url), exc)
        self._refresher = asyncio.create_task(self._refresh_forever(), name="hookrelay-redis-presence")
        logger.info("store opened url=%s", redact(self.url))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

        # Consumers of this node are gone: other nodes may take their events now.
        for channel, members in list(self._live.items()):
            if members:
                try:
                    await self._run("close", lambda c=channel, m=members: self._client.zrem(channel_keys(c)[8], *m))
                except StoreError as exc:
                    logger.warning("presence not removed channel=%s: %s", channel, exc)
        self._live.clear()
        if self._client is not None:
            await self._client.aclose()
        logger.info("store closed url=%s", redact(self.url))

    async def ping(self) -> None:
        await self._run("ping", lambda: self._client.ping())

    # -- command boundary ----------------------------------------------

    async def _run(self, operation: str, command: Callable[[], Awaitable[T]]) -> T:
        """Run one command to its end, even when the caller is cancelled.

        redis exceptions become :class:`StoreError` here and nowhere else.
        """
        if self._closed and operation != "close":
            raise StoreError(operation, "the store is closed")
        try:
            return await run_to_end(self._tasks, command)
        except RedisError as exc:
            raise StoreError(operation, f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise StoreError(operation, str(exc) or type(exc).__name__) from exc

    async def _script(self, operation: str, name: str, channel: str, args: list[Any], extra_keys: tuple[str, ...] = ()) -> Any:
        keys = channel_keys(channel) + list(extra_keys)
        return await self._run(operation, lambda: self._scripts[name](keys=keys, args=args))

    # -- channels ------------------------------------------------------

    async def create_channel(self, channel: ChannelRecord) -> None:
        keys = channel_keys(channel.id)

        async def create() -> None:
            await self._client.sadd(CHANNELS_KEY, channel.id)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(
                    keys[0],
                    mapping={
                        "token_hash": channel.token_hash,
                        "created_at": repr(channel.created_at),
                        "settings": json.dumps(channel.settings),
                        "seq": 0,
                    },
                )
                # The default group exists from the start and reads from the
                # first event on; other groups start at the end when first used.
                pipe.xgroup_create(keys[1], DEFAULT_GROUP, id="0", mkstream=True)
                # A channel created again under the same id replaces the old one on every node.
                pipe.publish(HUB_CHANNEL, channel_changed_message(channel.id))
                await pipe.execute()

        try:
            await self._run("create channel", create)
        finally:
            self.channel_cache.invalidate(channel.id)

    async def get_channel(self, channel_id: str) -> ChannelRecord | None:
        return await self.channel_cache.get(channel_id, lambda: self._read_channel(channel_id))

    async def _read_channel(self, channel_id: str) -> ChannelRecord | None:
        meta_key = channel_keys(channel_id)[0]
        token_hash, created_at, settings = await self._run(
            "read channel", lambda: self._client.hmget(meta_key, "token_hash", "created_at", "settings")
        )
        if token_hash is None:
            return None
        return ChannelRecord(channel_id, bytes(token_hash), float(created_at), json.loads(settings))

    async def set_token_hash(self, channel_id: str, token_hash: bytes) -> None:
        await self._update_channel("set token", channel_id, ["token_hash", token_hash])

    async def update_settings(self, channel_id: str, settings: dict[str, Any]) -> ChannelRecord:
        await self._update_channel("update settings", channel_id, ["settings", json.dumps(settings)])
        channel = await self.get_channel(channel_id)
        assert channel is not None
        return channel

    async def _update_channel(self, operation: str, channel_id: str, fields: list[Any]) -> None:
        """Write fields of the channel's record and make every node drop its copy."""
        args = [HUB_CHANNEL, channel_changed_message(channel_id), *fields]
        try:
            await self._script(operation, "UPDATE_CHANNEL", channel_id, args)
        finally:
            # Even a failed command may have run, so this node drops its copy either way.
            self.channel_cache.invalidate(channel_id)

    # -- events --------------------------------------------------------

    async def append(self, event: NewEvent) -> int:
        window_ms = int(event.dedupe_window * 1000) if event.dedupe_key else 0
        dedupe_key = f"{PREFIX}:{{{event.channel}}}:dedupe:{event.dedupe_key or ''}"
        args = [
            event.id,
            self.retention.max_events,
            max(1, int(self.retention.max_events * _PRUNE_FRACTION)),
            event.body,
            window_ms,
            HUB_CHANNEL,
            wake_up_message(event.channel),
            *_entry_fields(event),
        ]
        keys = channel_keys(event.channel) + [dedupe_key]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued_appends.setdefault(event.channel, []).append((keys, args, future))
        if event.channel not in self._append_senders:
            sender = asyncio.create_task(self._send_appends(event.channel), name="hookrelay-redis-append")
            self._append_senders[event.channel] = sender
            self._tasks.add(sender)
            sender.add_done_callback(self._tasks.discard)
        try:
            reply = await future
        except StoreError as exc:
            raise _append_error(exc, event, self.retention.max_events) from exc.__cause__
        if isinstance(reply, list):
            raise DuplicateEvent(event.channel, event.dedupe_key or "", reply[1].decode())
        return int(reply)

    async def _send_appends(self, channel: str) -> None:
        """Send the channel's queued appends, one pipeline at a time, until none are left.

        Appends queued while a pipeline is in flight go together in the next
        one. A pipeline uses one connection, and Redis runs the commands of a
        connection in order, so events are numbered in the order that
        :meth:`append` was called, while 50 concurrent senders cost a few
        round trips instead of 50 in a row.
        """
        try:
            while batch := self._queued_appends.pop(channel, None):
                replies: list[Any] = [StoreError("append", "the append was not sent")] * len(batch)
                try:
                    replies = await self._run("append", lambda b=batch: self._pipeline_appends(b))
                except StoreError as exc:
                    replies = [exc] * len(batch)
                finally:
                    _settle(batch, replies)
        finally:
            del self._append_senders[channel]

    async def _pipeline_appends(self, batch: list[_QueuedAppend]) -> list[Any]:
        script = self._scripts["APPEND"]
        replies = await self._pipeline_scripts(script.sha, batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Redis lost its script cache (after a restart or SCRIPT FLUSH), so
            # those appends did not run. Load the script and send them again.
            script.sha = await self._client.script_load(script.script)
            again = await self._pipeline_scripts(script.sha, [batch[i] for i in missing])
            for i, reply in zip(missing, again):
                replies[i] = reply
        return replies

    async def _pipeline_scripts(self, sha: str, batch: list[_QueuedAppend]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)

    async def claim(self, channel: str, group: str, consumer: str, count: int) -> list[Event]:
        if count <= 0:
            return []
        self._live.setdefault(channel, set()).add(f"{group}/{consumer}")
        rows = await self._script("claim", "CLAIM", channel, [group, consumer, count, int(self.presence_ttl * 1000)])
        return [
            _row_to_event(channel, seq, deliveries, _pairs(fields), bytes(body), int(attempts))
            for seq, deliveries, fields, body, attempts in rows
        ]

    async def ack(self, channel: str, group: str, results: list[DeliveryResult]) -> int:
        if not results:
            return 0
        now = self._clock()
        args: list[Any] = [group]
        for r in results:
            outcome = [r.outcome, r.status, r.attempts, r.duration_ms, r.error, now]
            attempt = "" if r.outcome == "skipped" else _attempt_line(group, r.attempts, r.status, r.duration_ms, r.error, now)
            args += [r.event_id, json.dumps(outcome), attempt]
        return int(await self._script("ack", "ACK", channel, args))

    async def release(self, channel: str, group: str, consumer: str) -> int:
        members = self._live.get(channel)
        if members is not None:
            members.discard(f"{group}/{consumer}")
            if not members:
                del self._live[channel]
        args = [group, consumer, HUB_CHANNEL, wake_up_message(channel)]
        return int(await self._script("release", "RELEASE", channel, args))

    async def backlog(self, channel: str, group: str) -> int:
        return int(await self._script("backlog", "BACKLOG", channel, [group]))

    async def list_groups(self, channel: str) -> list[str]:
        log_key = channel_keys(channel)[1]
        try:
            groups = await self._run("list groups", lambda: self._client.xinfo_groups(log_key))
        except StoreError as exc:
            if "no such key" in str(exc).lower():
                return []
            raise
        return sorted(_as_text(group["name"]) for group in groups)

    async def record_attempt(self, channel: str, group: str, report: AttemptReport) -> None:
        line = _attempt_line(group, report.attempt, report.status, report.duration_ms, report.error, self._clock())
        await self._script("record attempt", "RECORD", channel, ["attempt", report.event_id, line, group, report.attempt])

    async def record_answer(self, channel: str, event_id: str, answer: SenderAnswer) -> None:
        await self._script("record answer", "RECORD", channel, ["answer", event_id, _encode_answer(answer)])

    # -- history -------------------------------------------------------

    async def list_events(self, channel: str, query: EventQuery) -> list[EventSummary]:
        limit = max(1, min(query.limit, 1000))
        keys = channel_keys(channel)
        upper = f"({query.before}-0" if query.before is not None else "+"
        lower = f"({query.after}-0" if query.after is not None else "-"
        found: list[EventSummary] = []

        # Walk the log backwards in chunks until enough events match.
        while len(found) < limit:
            entries = await self._run(
                "list events", lambda u=upper: self._client.xrevrange(keys[1], max=u, min=lower, count=_HISTORY_CHUNK)
            )
            events = [(entry_id, _pairs(fields)) for entry_id, fields in entries if b"ref" not in fields]
            outcome_fields = [f"{query.group}\n{fields[b'id'].decode()}" for _, fields in events]
            outcomes = await self._run("list events", lambda: self._client.hmget(keys[4], outcome_fields)) if events else []
            for (entry_id, fields), outcome in zip(events, outcomes):
                row = _summary(entry_id, fields, json.loads(outcome) if outcome else None)
                if _matches(row, fields, query):
                    found.append(row)
            if len(entries) < _HISTORY_CHUNK:
                break
            upper = "(" + entries[-1][0].decode()
        return found[:limit]

    async def get_event(self, channel: str, event_id: str) -> EventDetail | None:
        reply = await self._script("show event", "DETAIL", channel, [event_id])
        if not reply:
            return None
        seq, fields, body, outcome_pairs, attempt_lines, answer = reply
        event = _row_to_event(channel, int(seq), 1, _pairs(fields), bytes(body))
        outcomes = tuple(
            Outcome(outcome_pairs[i].decode(), *json.loads(outcome_pairs[i + 1])) for i in range(0, len(outcome_pairs), 2)
        )
        return EventDetail(event, tuple(sorted(outcomes, key=lambda o: o.group)), _attempts(attempt_lines), _decode_answer(answer))

    async def delete_event(self, channel: str, event_id: str) -> bool:
        return bool(await self._script("delete event", "DELETE", channel, [event_id]))

    async def replay(self, channel: str, event_id: str, group: str) -> bool:
        args = [event_id, group, HUB_CHANNEL, wake_up_message(channel)]
        replayed = int(await self._script("replay", "REPLAY", channel, args))
        if replayed == _REPLAY_IN_FLIGHT:
            raise EventInFlight(event_id, group)
        return bool(replayed)

    async def prune(self, now: float) -> int:
        cutoff = now - self.retention.max_age
        channels = await self._run("prune", lambda: self._client.smembers(CHANNELS_KEY))
        removed = 0
        for raw in channels:
            channel = raw.decode()
            for _ in range(1000):
                dropped = int(await self._script("prune", "PRUNE_AGE", channel, [repr(cutoff), _PRUNE_BUDGET]))
                removed += dropped
                if dropped < _PRUNE_BUDGET:
                    break
        if removed:
            logger.info("retention pruned events=%d reason=age max_age_s=%d", removed, self.retention.max_age)
        return removed

    # -- presence ------------------------------------------------------

    async def _refresh_forever(self) -> None:
        """Keep this node's consumers alive in Redis, and report channels whose consumers died."""
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            await self._refresh_once()

    async def _refresh_once(self) -> None:
        """Refresh the expiry of this node's consumers in every channel, and report the consumers found expired."""
        for channel, members in list(self._live.items()):
            if not members:
                continue
            try:
                expired = await self._script("refresh presence", "REFRESH", channel, [int(self.presence_ttl * 1000), *members], ())
            except StoreError as exc:
                logger.warning("presence refresh failed channel=%s: %s", channel, exc)
                return
            self._report_stale(channel, {_as_text(member) for member in expired})

    def _report_stale(self, channel: str, stale: set[str]) -> None:
        """Wake local listeners once for each consumer seen expired, so that their next claim takes over its pending events.

        The set is compared, not its size: a claim removes an expired consumer
        that has no pending events, so one consumer can expire while another is
        removed, and a session that found nothing to claim waits for a
        wake-up.
        """
        seen = self._stale_seen.get(channel, set())
        self._stale_seen[channel] = stale
        if stale - seen and self.on_reclaimable is not None:
            logger.info("consumers expired channel=%s count=%d: reclaiming their events", channel, len(stale - seen))
            self.on_reclaimable(channel)


async def run_to_end(tasks: set[asyncio.Task[Any]], command: Callable[[], Awaitable[T]]) -> T:
    """Run ``command()`` in a task of its own and return its result.

    Cancelling the caller leaves the command running to its end, so its
    reply is read and its connection goes back to the pool clean. ``tasks``
    keeps the task until it finishes, so that closing can wait for it.
    """
    task = asyncio.ensure_future(command())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return await asyncio.shield(task)


def redact(url: str) -> str:
    """Hide the password of a ``redis://user:password@host`` URL for logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in credentials else f"{scheme}{sep}***@{host}"


def _settle(batch: list[_QueuedAppend], replies: list[Any]) -> None:
    """Hand each queued append its reply; an error reply becomes a :class:`StoreError`."""
    for (_, _, future), reply in zip(batch, replies):
        if future.done():
            # The caller was cancelled and no longer waits for the reply.
            continue
        if isinstance(reply, StoreError):
            # Each caller raises an exception of its own, with the shared cause.
            error = StoreError(reply.operation, reply.reason)
            error.__cause__ = reply.__cause__
            future.set_exception(error)
        elif isinstance(reply, RedisError):
            error = StoreError("append", f"{type(reply).__name__}: {reply}")
            error.__cause__ = reply
            future.set_exception(error)
        else:
            future.set_result(reply)


def _append_error(exc: StoreError, event: NewEvent, limit: int) -> StoreError:
    """Turn the append script's error replies into the store's exceptions."""
    cause = exc.__cause__
    if isinstance(cause, ResponseError) and str(cause).startswith("FULL"):
        return ChannelFull(event.channel, limit)
    if isinstance(cause, ResponseError) and str(cause).startswith("NOCHANNEL"):
        return StoreError("append", f"channel {event.channel} does not exist")
    return exc


def _entry_fields(event: NewEvent) -> list[Any]:
    fields: list[Any] = [
        "id", event.id,
        "t", repr(event.received_at),
        "m", event.method,
        "p", event.target,
        "h", _encode_headers(event.headers),
        "r", event.remote,
        "s", event.scheme,
        "n", len(event.body),
    ]  # fmt: skip
    optional = {"e": event.event_type, "u": event.respond_until, "v": event.verification}
    for name, value in optional.items():
        if value is not None:
            fields += [name, repr(value) if isinstance(value, float) else value]
    return fields


def _as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Any) -> dict[bytes, bytes]:
    if isinstance(flat, dict):
        return flat
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return value.decode() if value is not None else None


def _row_to_event(channel: str, seq: int, deliveries: int, fields: dict[bytes, bytes], body: bytes, attempts: int = 0) -> Event:
    respond_until = fields.get(b"u")
    return Event(
        id=fields[b"id"].decode(),
        channel=channel,
        seq=int(seq),
        method=fields[b"m"].decode(),
        target=bytes(fields[b"p"]),
        headers=_decode_headers(fields[b"h"]),
        body=body,
        received_at=float(fields[b"t"]),
        remote=fields[b"r"].decode(),
        scheme=fields[b"s"].decode(),
        delivery_count=int(deliveries),
        attempts=attempts,
        event_type=_text(fields, b"e"),
        respond_until=float(respond_until) if respond_until is not None else None,
        verification=_text(fields, b"v"),
    )


def _summary(entry_id: bytes, fields: dict[bytes, bytes], outcome: list[Any] | None) -> EventSummary:
    state, status, attempts = (outcome[0], outcome[1], outcome[2]) if outcome else ("pending", None, 0)
    return EventSummary(
        id=fields[b"id"].decode(),
        seq=int(entry_id.split(b"-")[0]),
        method=fields[b"m"].decode(),
        target=bytes(fields[b"p"]),
        event_type=_text(fields, b"e"),
        received_at=float(fields[b"t"]),
        size=int(fields[b"n"]),
        state=state,
        status=status,
        attempts=attempts,
    )


def _matches(row: EventSummary, fields: dict[bytes, bytes], query: EventQuery) -> bool:
    """Apply the filters of :class:`EventQuery` as the SQLite store's query does."""
    if query.state is not None and row.state != query.state:
        return False
    if query.method is not None and row.method != query.method:
        return False
    if query.event_type is not None:
        kind = row.event_type or ""
        if kind != query.event_type and not kind.startswith(query.event_type + "."):
            return False
    if query.since is not None and row.received_at < query.since:
        return False
    if query.until is not None and row.received_at >= query.until:
        return False
    return query.text is None or query.text.encode("utf-8") in row.target


def _attempt_line(group: str, attempt: int, status: int | None, duration_ms: float, error: str | None, at: float) -> str:
    return json.dumps([group, attempt, status, duration_ms, error, at]) + "\n"


def _attempts(lines: bytes) -> tuple[AttemptRecord, ...]:
    # Every report is kept: a replayed event numbers its attempts from 1 again.
    records = [AttemptRecord(*json.loads(line)) for line in bytes(lines).decode().splitlines()]
    return tuple(sorted(records, key=lambda a: (a.at, a.attempt)))


def _encode_headers(headers: tuple[tuple[bytes, bytes], ...]) -> str:
    return json.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers], separators=(",", ":"))


def _decode_headers(raw: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(raw))


def _encode_answer(answer: SenderAnswer) -> str:
    body = answer.body.decode("latin-1")
    return json.dumps([answer.status, _encode_headers(answer.headers), body, answer.source, answer.at])


def _decode_answer(raw: bytes) -> SenderAnswer | None:
    if not raw:
        return None
    status, headers, body, source, at = json.loads(raw)
    return SenderAnswer(status, _decode_headers(headers.encode()), body.encode("latin-1"), source, at)
