"""A raw HTTP/1.1 sender that writes the request head byte for byte.

HTTP client libraries reorder, merge, re-case and add headers. Webhook
senders do not always behave like them, so the tests write the request
line, every header and the body themselves.
"""

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from .timing import MS

REQUEST_TIMEOUT = 30_000 * MS

HeaderValue = str | bytes


@dataclass(frozen=True)
class RawResponse:
    """An HTTP response as read from the socket."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        for header_name, value in self.headers:
            if header_name.lower() == name.lower():
                return value
        return None

    @property
    def content_type(self) -> str:
        return self.header("Content-Type") or ""

    def json(self):
        return json.loads(self.body)

    def describe(self) -> str:
        """Return the status, content type and start of the body, for failure messages."""
        return f"HTTP {self.status} ({self.content_type or 'no Content-Type'}): {self.body[:300]!r}"


def _encode(value: HeaderValue) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def chunk_body(body: bytes) -> bytes:
    """Encode `body` with chunked transfer coding, in chunks of growing size."""
    encoded = bytearray()
    position = 0
    size = 1
    while position < len(body):
        chunk = body[position : position + size]
        encoded += b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        position += len(chunk)
        size = min(size * 8, 65536)
    encoded += b"0\r\n\r\n"
    return bytes(encoded)


def build_request(
    method: str,
    target: str,
    authority: str,
    headers: list[tuple[str, HeaderValue]],
    body: bytes,
    chunked: bool,
) -> bytes:
    """Build the request bytes with `headers` in the given order, spelling and repeats.

    A Host header is put first unless `headers` has one. Content-Length is
    added at the end when `headers` has none and the body is not empty or
    the method usually carries one. A chunked request gets
    `Transfer-Encoding: chunked` unless `headers` has it already.
    """
    names = {name.lower() for name, _ in headers}
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    if "host" not in names:
        lines.append(b"Host: " + authority.encode("ascii"))
    lines += [name.encode("ascii") + b": " + _encode(value) for name, value in headers]
    if chunked:
        if "transfer-encoding" not in names:
            lines.append(b"Transfer-Encoding: chunked")
        payload = chunk_body(body)
    else:
        if "content-length" not in names and (body or method in ("POST", "PUT", "PATCH")):
            lines.append(b"Content-Length: %d" % len(body))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def read_response(reader: asyncio.StreamReader, method: str) -> RawResponse:
    """Read one response: status line, headers, and a body framed by length, chunks or EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    status = int(status_line.split(" ")[1])
    headers = tuple((name, value.strip()) for name, _, value in (line.partition(":") for line in header_lines))
    response = RawResponse(status=status, headers=headers, body=b"")

    if method == "HEAD" or status in (101, 204, 304) or 100 <= status < 200:
        return response
    if "chunked" in (response.header("Transfer-Encoding") or "").lower():
        body = await _read_chunked(reader)
    elif response.header("Content-Length") is not None:
        body = await reader.readexactly(int(response.header("Content-Length")))
    else:
        body = await reader.read()
    return RawResponse(status=status, headers=headers, body=body)


async def send_request(
    url: str,
    method: str = "POST",
    headers: list[tuple[str, HeaderValue]] | None = None,
    body: bytes = b"",
    *,
    tail: str = "",
    query: str = "",
    chunked: bool = False,
    timeout: float = REQUEST_TIMEOUT,
) -> RawResponse:
    """Send one request to `url` + `tail` (+ `?query`) over a new connection and read the response.

    `tail` and `query` are written as given, without any encoding. When the
    server responds before it has read the whole body and closes the
    connection, the write error is ignored and the response is still read.
    """
    parts = urlsplit(url)
    target = parts.path + tail + (f"?{query}" if query else "")
    request = build_request(method, target or "/", parts.netloc, headers or [], body, chunked)
    return await asyncio.wait_for(_exchange(parts.hostname, parts.port, method, request), timeout)


async def _exchange(host: str, port: int, method: str, request: bytes) -> RawResponse:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        try:
            writer.write(request)
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
        return await read_response(reader, method)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass
