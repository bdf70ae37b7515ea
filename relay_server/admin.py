"""Server-wide endpoints, guarded by the relay's admin token.

``GET /api/metrics`` returns relay-wide counts: rejected requests by
reason, de-duplicated redeliveries, open connections and listener
sessions. It names no channel. On a relay started with ``--admin-token``
it needs that token as ``Authorization: Bearer <token>``; a missing and a
wrong token get the same 401. A relay without an admin token is open by
choice, so there the endpoint is open too, like channel creation.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from relay_server.limits import json_rejection
from relay_server.state import STATE, RelayState


def admin_authorized(request: web.Request) -> bool:
    """Check the request's bearer token against the admin token in constant time."""
    state: RelayState = request.app[STATE]
    expected = state.config.admin_token
    if expected is None:
        return True
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    presented = value.strip() if scheme.lower() == "bearer" else ""
    # Digests have one length, so the comparison time does not reveal the token's length either.
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def admin_unauthorized() -> web.Response:
    return json_rejection(401, "unauthorized", "missing or invalid admin token", **{"WWW-Authenticate": "Bearer"})


async def metrics(request: web.Request) -> web.Response:
    if not admin_authorized(request):
        return admin_unauthorized()
    state: RelayState = request.app[STATE]
    body = {
        "counts": dict(sorted(state.guard.counters.totals.items())),
        "connections": state.guard.connections.total,
        "listener_sessions": len(state.sessions),
        "rate_buckets": {"channels": len(state.guard.by_channel), "addresses": len(state.guard.by_address)},
    }
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/metrics", metrics)
