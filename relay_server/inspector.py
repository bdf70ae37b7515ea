"""The inspector page: a live view of a channel's history in the browser.

``GET /inspect/{channel}`` returns the same static page for every channel
id, without checking that the channel exists, so the page reveals nothing
to someone without the token. The page reads the token from the URL
fragment (``#token=…``), which browsers never send to the server, keeps it
in sessionStorage and calls the history API with an ``Authorization``
header. The token therefore never appears in a request line or an access
log.

Webhook bodies and headers are attacker-controlled. The page's script
shows them only through ``textContent`` and DOM properties, and the
Content-Security-Policy below is the second line of defence: no inline
script, no script or style from anywhere but this relay, no plugins, no
framing, and Trusted Types enforced so that any assignment of a string to
``innerHTML`` throws in browsers that support them.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

from relay_server.ingest import json_error

INSPECT_PREFIX = "/inspect/"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

# Files the page loads, by the name in its URL, with their content types.
STATIC_FILES = {
    "inspector.css": "text/css",
    "inspector.js": "text/javascript",
}


@functools.cache
def read_static(name: str) -> bytes:
    """Return a file from the package's ``static`` folder, read once per process."""
    return (resources.files("relay_server") / "static" / name).read_bytes()


async def inspector_page(request: web.Request) -> web.Response:
    # no-store: the page is tiny and must never be served stale after an upgrade.
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return web.Response(body=read_static("inspector.html"), content_type="text/html", charset="utf-8", headers=headers)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        return json_error(404, "not_found", f"no inspector file {name}")
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return web.Response(body=read_static(name), content_type=content_type, charset="utf-8", headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get(INSPECT_PREFIX + "static/{name}", static_file)
    app.router.add_get(INSPECT_PREFIX + "{channel}", inspector_page)
