"""Blocking loopback clients for fuzz tests: raw HTTP exchanges and hand-built websocket frames.

Hypothesis drives plain functions, so these helpers use blocking sockets
with timeouts instead of asyncio. Every call is bounded by `TIMEOUT`.
"""

import base64
import json
import os
import re
import socket
import struct
import subprocess
import time
from pathlib import Path

from .processes import LISTENING_PATTERN, HookrelayProcess, child_environment
from .timing import MS

TIMEOUT = 5_000 * MS
# Once an answer started, this much silence ends the read of a kept-alive connection.
QUIET = 200 * MS
STARTUP_TIMEOUT = 15_000 * MS
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})")


def start_relay(log_dir: Path, *arguments: str) -> tuple[HookrelayProcess, int]:
    """Start `hookrelay serve` on 127.0.0.1 and a free port; returns the process and the port."""
    data_dir = log_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = ["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir), *arguments]
    process = HookrelayProcess("fuzz-relay", command, log_dir, child_environment(log_dir / "config"))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        match = LISTENING_PATTERN.search(process.stderr_text())
        if match:
            return process, int(match.group(2))
        if process.returncode is not None:
            break
        time.sleep(0.05)
    process.stop()
    raise AssertionError(f"the relay did not start:\n{process.stderr_tail()}")


def exchange(port: int, request: bytes) -> bytes:
    """Send `request` and return what the relay writes until it closes or stays quiet for `QUIET` seconds.

    The connection is not half-closed: aiohttp closes a connection on the
    client's EOF, possibly before it answered.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as connection:
        try:
            connection.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_all(connection)


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    try:
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            connection.settimeout(QUIET)
    except (socket.timeout, ConnectionResetError):
        pass
    return b"".join(chunks)


def statuses(answer: bytes) -> list[int]:
    """Return the status of every response in `answer` (pipelined answers included)."""
    return [int(match.group(1)) for match in re.finditer(rb"(?m)^HTTP/1\.[01] (\d{3})", answer)]


def create_channel(port: int) -> tuple[str, str]:
    """Create a channel through the API; returns its id and token."""
    answer = exchange(port, b"POST /api/channels HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    body = answer.partition(b"\r\n\r\n")[2]
    created = json.loads(body)
    return created["channel"], created["token"]


def patch_channel(port: int, channel: str, token: str, settings: dict) -> int:
    body = json.dumps(settings).encode()
    head = (
        f"PATCH /api/channels/{channel} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return statuses(exchange(port, head + body))[0]


def open_websocket(port: int, channel: str, token: str) -> tuple[socket.socket, bytes]:
    """Open the channel's listen websocket; returns the socket and the frame bytes read with the 101 answer."""
    key = base64.b64encode(os.urandom(16)).decode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    connection.sendall(
        (
            f"GET /api/channels/{channel}/listen HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = connection.recv(4096)
        if not chunk:
            raise AssertionError(f"the relay closed the websocket handshake: {head!r}")
        head += chunk
    match = _STATUS_LINE.match(head)
    if match is None or match.group(1) != b"101":
        connection.close()
        raise AssertionError(f"websocket handshake failed: {head[:200]!r}")
    return connection, head.partition(b"\r\n\r\n")[2]


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None) -> bytes:
    """Build one client frame; clients must mask, so a key is drawn unless `mask` is given (b"" sends it unmasked)."""
    key = os.urandom(4) if mask is None else mask
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0x0F)
    length = len(payload)
    mask_bit = 0x80 if key else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    masked = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload)) if key else payload
    return header + key + masked


def drain(connection: socket.socket, seconds: float) -> bytes:
    """Read what the relay sends for up to `seconds`, stopping early when it closes."""
    connection.settimeout(seconds)
    return _read_all(connection)


def process_output_has_traceback(process: HookrelayProcess) -> bool:
    return "Traceback" in process.stderr_text()


def stop(process: HookrelayProcess) -> None:
    try:
        process.stop()
    except subprocess.TimeoutExpired:
        process.kill()


def server_close_codes(data: bytes) -> list[int]:
    """Parse the relay's (unmasked) frames in `data` and return the codes of its close frames."""
    codes = []
    position = 0
    while position + 2 <= len(data):
        first, second = data[position], data[position + 1]
        length = second & 0x7F
        position += 2
        if length == 126:
            if position + 2 > len(data):
                break
            (length,) = struct.unpack_from("!H", data, position)
            position += 2
        elif length == 127:
            if position + 8 > len(data):
                break
            (length,) = struct.unpack_from("!Q", data, position)
            position += 8
        payload = data[position : position + length]
        position += length
        if first & 0x0F == 0x8:
            codes.append(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005)
    return codes
