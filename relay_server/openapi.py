"""The relay's OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

The document is written by hand next to the routes it describes, and a test
checks that every route the app registers appears in it and that it names
no route the app lacks. Response schemas list the fields clients rely on
and allow more, so a new field does not break a client that validates.
"""

from __future__ import annotations

import copy
from importlib import metadata
from typing import Any

from aiohttp import web

from relay_server.inspector import STATIC_FILES
from relay_server.store.base import EVENT_STATES
from relay_server.state import STATE

OPENAPI_PATH = "/api/openapi.json"

# OpenAPI's names for the methods the ingest URL accepts. A sender may use any method.
INGEST_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

JSON = "application/json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def _object(required: list[str], properties: dict[str, Schema]) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


_HEADER_LIST: Schema = {
    "type": "array",
    "description": "Header fields in arrival order, repeats kept, as [name, value] pairs; bytes that are not UTF-8 are replaced.",
    "items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "string"}], "minItems": 2, "maxItems": 2},
}

SCHEMAS: dict[str, Schema] = {
    "Error": _object(["error", "message"], {
        "error": {"type": "string", "description": "Machine-readable code, such as event_not_found."},
        "message": {"type": "string", "description": "What went wrong, in one sentence."},
    }),
    "ResponseSettings": _object(["mode", "timeout", "fallback"], {
        "mode": {"enum": ["async", "sync"], "description": "async: senders get 202 once the event is stored; sync: senders get the local server's answer."},
        "timeout": {"type": "number", "description": "Seconds a sync sender waits for the answer."},
        "fallback": {"type": "integer", "description": "Status a sync sender gets when no answer comes in time."},
    }),
    "ChannelCreated": _object(["channel", "url", "token", "group"], {
        "channel": {"type": "string"},
        "url": {"type": "string", "description": "Public ingest URL of the channel."},
        "token": {"type": "string", "description": "Secret that reads the channel; the relay keeps only its hash."},
        "group": {"type": "string", "description": "The consumer group created with the channel."},
    }),
    "Channel": _object(["channel", "url", "created_at", "response", "backlog", "listeners"], {
        "channel": {"type": "string"},
        "url": {"type": "string"},
        "created_at": {"type": "number", "description": "Unix time in seconds."},
        "response": _ref("ResponseSettings"),
        "backlog": {"type": "integer", "description": "Events the default group has still to acknowledge."},
        "groups": {
            "type": "object",
            "description": "Every consumer group of the channel, with the events it has still to acknowledge.",
            "additionalProperties": {"type": "integer"},
        },
        "listeners": {"type": "integer", "description": "Listener sessions connected to this relay process."},
    }),
    "ChannelPatch": {
        "type": "object",
        "description": "Settings to change; keys left out keep their value.",
        "properties": {"response": {"type": "object", "description": "Any subset of ResponseSettings."}},
    },
    "ChannelSettings": _object(["channel", "response"], {"channel": {"type": "string"}, "response": _ref("ResponseSettings")}),
    "Token": _object(["channel", "token"], {"channel": {"type": "string"}, "token": {"type": "string"}}),
    "EventSummary": _object(["id", "seq", "method", "path", "event_type", "received_at", "size", "state", "status", "attempts"], {
        "id": {"type": "string", "description": "Stable event id, evt_…, also sent to the target as X-Hookrelay-Event-Id."},
        "seq": {"type": "integer", "description": "Position in the channel's log; paging uses it."},
        "method": {"type": "string"},
        "path": {"type": "string", "description": "Path tail and query below the channel URL, as sent."},
        "event_type": _nullable("string"),
        "received_at": {"type": "number", "description": "Unix time in seconds."},
        "size": {"type": "integer", "description": "Body size in bytes."},
        "state": {"enum": list(EVENT_STATES)},
        "status": {**_nullable("integer"), "description": "The target's last HTTP status for the group, if any."},
        "attempts": {"type": "integer"},
    }),
    "EventPage": _object(["events", "next_before", "version"], {
        "events": {"type": "array", "items": _ref("EventSummary")},
        "next_before": {**_nullable("integer"), "description": "Pass as before= for the next page; null on the last page."},
        "version": {"type": "integer", "description": "Changes whenever the channel's history changes; pass as version= with wait=."},
    }),
    "Outcome": _object(["group", "outcome", "status", "attempts", "duration_ms", "error", "finished_at"], {
        "group": {"type": "string"},
        "outcome": {"type": "string"},
        "status": _nullable("integer"),
        "attempts": {"type": "integer"},
        "duration_ms": {"type": "number"},
        "error": _nullable("string"),
        "finished_at": {"type": "number"},
    }),
    "Attempt": _object(["group", "attempt", "status", "duration_ms", "error", "at"], {
        "group": {"type": "string"},
        "attempt": {"type": "integer"},
        "status": _nullable("integer"),
        "duration_ms": {"type": "number"},
        "error": _nullable("string"),
        "at": {"type": "number"},
    }),
    "SenderAnswer": _object(["status", "source", "at", "headers", "body_b64"], {
        "status": {"type": "integer"},
        "source": {"type": "string", "description": "Who produced the answer: the target, or the relay's fallback."},
        "at": {"type": "number"},
        "headers": _HEADER_LIST,
        "body_b64": {"type": "string", "contentEncoding": "base64"},
    }),
    "EventDetail": _object(
        ["id", "seq", "channel", "method", "path", "event_type", "received_at", "remote", "size", "state",
         "headers", "body_text", "raw", "outcomes", "attempts", "answer"],
        {
            "id": {"type": "string"},
            "seq": {"type": "integer"},
            "channel": {"type": "string"},
            "method": {"type": "string"},
            "path": {"type": "string"},
            "event_type": _nullable("string"),
            "received_at": {"type": "number"},
            "remote": {"type": "string", "description": "The sender's address."},
            "size": {"type": "integer"},
            "state": {"enum": list(EVENT_STATES)},
            "headers": _HEADER_LIST,
            "body_text": {**_nullable("string"), "description": "The body when it is valid UTF-8, else null."},
            "raw": _object(["target_b64", "headers_b64", "body_b64"], {
                "target_b64": {"type": "string", "contentEncoding": "base64", "description": "Raw path tail and query bytes."},
                "headers_b64": {"type": "array", "items": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}},
                "body_b64": {"type": "string", "contentEncoding": "base64"},
            }),
            "outcomes": {"type": "array", "items": _ref("Outcome")},
            "attempts": {"type": "array", "items": _ref("Attempt")},
            "answer": {"oneOf": [_ref("SenderAnswer"), {"type": "null"}]},
        },
    ),
    "Replayed": _object(["id", "group", "state", "new_group"], {
        "id": {"type": "string"},
        "group": {"type": "string"},
        "state": {"const": "pending"},
        "new_group": {"type": "boolean", "description": "True when the replay created the group: no listener had used it."},
    }),
    "Accepted": _object(["id"], {"id": {"type": "string", "description": "The stored event's id."}}),
}

_CHANNEL = {"name": "channel", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Channel id, ch_…."}
_EVENT = {"name": "event", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Event id, evt_…."}
_GROUP = {
    "name": "group", "in": "query", "schema": {"type": "string", "default": "default", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
    "description": "Consumer group whose state is shown or that receives the event.",
}
_INVALID_GROUP = _error("Invalid group name.")
_CHANNEL_AUTH = [{"channelToken": []}]
_UNAUTHORIZED = _error("Missing or wrong channel token; an unknown channel gets the same answer.")
_NOT_FOUND = _error("No event with this id in the channel.")
_IN_FLIGHT = _error("A listener of the group is delivering the event now; replay it once that delivery ends.")


def _query(name: str, kind: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": kind, **extra}, "description": description}


_LIST_PARAMETERS = [
    _CHANNEL,
    _query("state", "string", "Only events in this state for the group.", enum=list(EVENT_STATES)),
    _query("method", "string", "Only this HTTP method (case-insensitive)."),
    _query("type", "string", "Event type, or its prefix before a dot: issues matches issues.opened."),
    _query("q", "string", "Text the path tail or query contains."),
    _query("since", "number", "Received at or after this Unix time."),
    _query("until", "number", "Received before this Unix time."),
    _query("before", "integer", "Only events with a smaller seq: the next_before of the previous page."),
    _query("after", "integer", "Only events with a larger seq."),
    _query("limit", "integer", "Page size.", minimum=1, maximum=1000, default=50),
    _query("wait", "number", "Long-poll: with version=, wait up to this many seconds (at most 30) for a change.", minimum=0),
    _query("version", "integer", "The version of the last answer; the request returns as soon as it differs."),
    _GROUP,
]

_INGEST_RESPONSES = {
    "202": _json(_ref("Accepted"), "Stored; the event will reach the channel's listeners."),
    "404": _error("No channel at this URL."),
    "413": _error("The body is over the relay's limit; nothing was stored."),
    "429": _error("The channel is full or a rate limit was hit; see Retry-After."),
    "503": _error("Storage failed; retry later."),
    "default": {"description": "On a channel in sync mode: the local server's answer, or the channel's fallback status."},
}


def _ingest_operation(method: str, with_tail: bool) -> dict[str, Any]:
    parameters = [_CHANNEL]
    if with_tail:
        parameters.append({
            "name": "tail", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "Any path below the channel URL; it reaches the target unchanged, with the query.",
        })
    return {
        "tags": ["ingest"],
        "operationId": f"ingest_{method}{'_tail' if with_tail else ''}",
        "summary": "Accept a webhook: stored byte for byte and answered with JSON, never HTML.",
        "parameters": parameters,
        "responses": _INGEST_RESPONSES,
    }


PATHS: dict[str, dict[str, Any]] = {
    "/api/channels": {
        "post": {
            "tags": ["channels"], "operationId": "create_channel",
            "summary": "Create a channel; needs the admin token when the relay has one.",
            "security": [{"adminToken": []}, {}],
            "responses": {"201": _json(_ref("ChannelCreated"), "The new channel and its token."), "401": _error("Missing or wrong admin token.")},
        },
    },
    "/api/channels/{channel}": {
        "get": {
            "tags": ["channels"], "operationId": "show_channel", "summary": "Show a channel's URL, settings, backlog and listeners.",
            "parameters": [_CHANNEL], "security": _CHANNEL_AUTH,
            "responses": {"200": _json(_ref("Channel"), "The channel."), "401": _UNAUTHORIZED},
        },
        "patch": {
            "tags": ["channels"], "operationId": "update_channel", "summary": "Change how the channel answers senders, and its other settings.",
            "parameters": [_CHANNEL], "security": _CHANNEL_AUTH,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ChannelPatch")}}},
            "responses": {"200": _json(_ref("ChannelSettings"), "The settings now in force."), "400": _error("Invalid settings."), "401": _UNAUTHORIZED},
        },
    },
    "/api/channels/{channel}/rotate-token": {
        "post": {
            "tags": ["channels"], "operationId": "rotate_token", "summary": "Replace the channel's token; the old one stops working at once.",
            "parameters": [_CHANNEL], "security": _CHANNEL_AUTH,
            "responses": {"200": _json(_ref("Token"), "The new token."), "401": _UNAUTHORIZED},
        },
    },
    "/api/channels/{channel}/listen": {
        "get": {
            "tags": ["channels"], "operationId": "listen",
            "summary": "Open the listener websocket; frames follow docs/protocol.md.",
            "parameters": [
                _CHANNEL, _GROUP,
                _query("window", "integer", "Events in flight the listener accepts, capped by the relay's --window.", minimum=1),
            ],
            "security": _CHANNEL_AUTH,
            "responses": {"101": {"description": "Switching to the websocket protocol."}, "400": _error("Invalid group name."), "401": _UNAUTHORIZED},
        },
    },
    "/api/channels/{channel}/events": {
        "get": {
            "tags": ["history"], "operationId": "list_events", "summary": "List the channel's events, newest first.",
            "parameters": _LIST_PARAMETERS, "security": _CHANNEL_AUTH,
            "responses": {"200": _json(_ref("EventPage"), "One page of events."), "400": _error("Invalid filter value."), "401": _UNAUTHORIZED},
        },
    },
    "/api/channels/{channel}/events/{event}": {
        "get": {
            "tags": ["history"], "operationId": "show_event",
            "summary": "Show one event in full: headers, body, raw bytes in base64, attempts, outcomes and the sender's answer.",
            "parameters": [_CHANNEL, _EVENT, _GROUP], "security": _CHANNEL_AUTH,
            "responses": {"200": _json(_ref("EventDetail"), "The event."), "400": _INVALID_GROUP, "401": _UNAUTHORIZED, "404": _NOT_FOUND},
        },
        "delete": {
            "tags": ["history"], "operationId": "delete_event", "summary": "Delete an event and its history.",
            "parameters": [_CHANNEL, _EVENT], "security": _CHANNEL_AUTH,
            "responses": {"204": {"description": "Deleted."}, "401": _UNAUTHORIZED, "404": _NOT_FOUND},
        },
    },
    "/api/channels/{channel}/events/{event}/replay": {
        "post": {
            "tags": ["history"], "operationId": "replay_event",
            "summary": "Queue the event again for a consumer group, with the same id.",
            "parameters": [_CHANNEL, _EVENT, _GROUP], "security": _CHANNEL_AUTH,
            "responses": {
                "202": _json(_ref("Replayed"), "Queued."), "400": _INVALID_GROUP, "401": _UNAUTHORIZED, "404": _NOT_FOUND,
                "409": _IN_FLIGHT,
            },
        },
    },
    "/api/metrics": {
        "get": {
            "tags": ["relay"], "operationId": "metrics",
            "summary": "Relay-wide counts; needs the admin token when the relay has one.",
            "security": [{"adminToken": []}, {}],
            "responses": {"200": _json({"type": "object"}, "Counts by reason, connections and sessions."), "401": _error("Missing or wrong admin token.")},
        },
    },
    OPENAPI_PATH: {
        "get": {
            "tags": ["relay"], "operationId": "openapi", "summary": "This document.",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        },
    },
    "/healthz": {
        "get": {
            "tags": ["relay"], "operationId": "health", "summary": "Liveness check.",
            "responses": {"200": _json(_object(["status"], {"status": {"const": "ok"}}), "The relay is running.")},
        },
    },
    "/readyz": {
        "get": {
            "tags": ["relay"], "operationId": "readiness", "summary": "Readiness check: the store answers and, with Redis, wake-ups from other nodes arrive.",
            "responses": {
                "200": _json(_object(["status"], {"status": {"const": "ready"}}), "The relay can accept events."),
                "503": _json(_object(["status", "reason"], {"status": {"const": "not ready"}, "reason": {"type": "string"}}), "Not ready, with the reason."),
            },
        },
    },
    "/inspect/{channel}": {
        "get": {
            "tags": ["inspector"], "operationId": "inspector_page",
            "summary": "The inspector page; it reads the token from the URL fragment (#token=…) and calls the history API.",
            "parameters": [_CHANNEL],
            "responses": {"200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        },
    },
    "/inspect/static/{name}": {
        "get": {
            "tags": ["inspector"], "operationId": "inspector_file", "summary": "A script or style sheet of the inspector page.",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"enum": sorted(STATIC_FILES)}}],
            "responses": {"200": {"description": "The file."}, "404": _error("No such file.")},
        },
    },
    "/h/{channel}": {method: _ingest_operation(method, False) for method in INGEST_METHODS},
    "/h/{channel}/{tail}": {method: _ingest_operation(method, True) for method in INGEST_METHODS},
}

TAGS = [
    {"name": "ingest", "description": "Public channel URLs that webhook senders post to."},
    {"name": "channels", "description": "Create channels, change their settings, connect listeners."},
    {"name": "history", "description": "A channel's stored events: list, show, replay, delete."},
    {"name": "inspector", "description": "The browser page over the history API."},
    {"name": "relay", "description": "Relay-wide endpoints."},
]


def document(base_url: str) -> dict[str, Any]:
    """Build the OpenAPI document, with ``base_url`` as its server."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hookrelay relay API",
            "version": _package_version(),
            "description": (
                "Webhooks posted to a channel's ingest URL are stored byte for byte and delivered to listeners. "
                "Reading a channel needs its token as Authorization: Bearer <token>."
            ),
        },
        "servers": [{"url": base_url or "/"}],
        "tags": TAGS,
        "paths": copy.deepcopy(PATHS),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {
                "channelToken": {"type": "http", "scheme": "bearer", "description": "The channel's token, hrt_…."},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "The relay's --admin-token."},
            },
        },
    }


def _package_version() -> str:
    try:
        return metadata.version("hookrelay")
    except metadata.PackageNotFoundError:
        return "0+unknown"


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(document(request.app[STATE].base_url))


def add_routes(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, openapi_document)
