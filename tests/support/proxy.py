"""A TCP proxy on loopback that can turn its open connections into a silent black hole, or cut them.

`blackhole()` models a NAT or firewall that silently drops a connection:
both ends keep their sockets open, bytes are accepted and thrown away, and
neither end ever receives a FIN or RST. `cut()` closes every open connection
at once, as a restarted load balancer would. Connections opened after either
call are forwarded as usual, so a client that notices the dead connection
can reconnect through the same proxy.
"""

import asyncio
import time

from .timing import wait_until

READ_SIZE = 65536


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client_writer: asyncio.StreamWriter, upstream_writer: asyncio.StreamWriter):
        self.writers = (client_writer, upstream_writer)
        self.blackholed = False
        self.tasks: list[asyncio.Task] = []

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            writer.close()


class TcpProxy:
    """Forwards connections from 127.0.0.1:`port` to 127.0.0.1:`upstream_port`."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port: int | None = None
        self.accepted_at: list[float] = []
        self._links: list[_Link] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        """Stop forwarding on every open connection without closing it."""
        for link in self._links:
            link.blackholed = True

    def cut(self) -> None:
        """Close every open connection on both sides."""
        for link in self._links:
            link.close()

    async def wait_for_connections(self, count: int, timeout: float) -> float:
        """Wait until `count` connections were accepted in total and return the seconds waited."""
        return await wait_until(
            lambda: len(self.accepted_at) >= count,
            timeout,
            f"{count} connections through the proxy (got {len(self.accepted_at)})",
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for link in self._links:
            link.close()
        await asyncio.gather(*(task for link in self._links for task in link.tasks), return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted_at.append(time.monotonic())
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        link = _Link(client_writer, upstream_writer)
        link.tasks = [
            asyncio.create_task(self._pump(link, client_reader, upstream_writer)),
            asyncio.create_task(self._pump(link, upstream_reader, client_writer)),
        ]
        self._links.append(link)

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy bytes from `reader` to `writer` until EOF, dropping them once the link is blackholed."""
        try:
            while data := await reader.read(READ_SIZE):
                if link.blackholed:
                    continue
                writer.write(data)
                await writer.drain()
            # A blackholed link keeps the other side open: no FIN goes through.
            if not link.blackholed and writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            if not link.blackholed:
                link.close()
