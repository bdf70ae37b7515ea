"""Send one HTTP/1.1 request whose head is given as bytes.

aiohttp's client takes header values as ``str`` and encodes them as UTF-8,
so a value holding obs-text (RFC 9110 §5.5: bytes 0x80-0xFF that are not
valid UTF-8, such as a Latin-1 ``é``) cannot go out unchanged: the C writer
drops the byte and the Python writer raises. The forwarder uses this module
for those events only. h11 writes the head exactly as given and parses the
answer; one connection serves one request.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import h11

from relay_client.config import Target

_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class RawRequestError(Exception):
    """The request could not be sent or the response was not valid HTTP/1.1."""


async def exchange(
    target: Target,
    method: str,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    timeout: float,
    max_body: int,
) -> RawResponse:
    """Send the request and read the response, keeping at most ``max_body`` bytes of its body."""
    async with asyncio.timeout(timeout):
        context = ssl.create_default_context() if target.scheme == "https" else None
        reader, writer = await asyncio.open_connection(target.host.strip("[]"), target.port, ssl=context)
        try:
            connection = h11.Connection(our_role=h11.CLIENT)
            _write_request(writer, connection, method, path, headers, body)
            await writer.drain()
            return await _read_response(reader, connection, max_body)
        except (h11.LocalProtocolError, h11.RemoteProtocolError) as exc:
            raise RawRequestError(str(exc)) from exc
        finally:
            writer.close()


def _write_request(
    writer: asyncio.StreamWriter,
    connection: h11.Connection,
    method: str,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    # h11 frames the body by Content-Length and adds no header itself.
    if body and not any(name.lower() == b"content-length" for name, _ in headers):
        headers = [*headers, (b"Content-Length", str(len(body)).encode())]
    writer.write(connection.send(h11.Request(method=method.encode(), target=path, headers=headers)))
    if body:
        writer.write(connection.send(h11.Data(data=body)))
    writer.write(connection.send(h11.EndOfMessage()))


async def _read_response(reader: asyncio.StreamReader, connection: h11.Connection, max_body: int) -> RawResponse:
    response: h11.Response | None = None
    chunks: list[bytes] = []
    read = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(_READ_SIZE))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            chunks.append(event.data[: max(0, max_body - read)])
            read += len(event.data)
            if read >= max_body:
                break
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    if response is None:
        raise RawRequestError("the target closed the connection without an answer")
    return RawResponse(response.status_code, list(response.headers.raw_items()), b"".join(chunks))
