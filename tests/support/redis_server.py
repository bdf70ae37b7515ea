"""A real redis-server for the tests, on a free loopback port with its data in a temporary folder.

The server runs with an append-only file synced on every write, as
`deploy/redis.conf` recommends, so a restart finds every acknowledged write.
Tests that need Redis skip when `redis-server` is not installed, except in
CI (`CI=true`), where a missing server is a failure: `.ci/run` installs it.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .timing import MS

STARTUP_TIMEOUT = 10_000 * MS
STOP_TIMEOUT = 10_000 * MS


def require_redis_server() -> str:
    """Return the path of `redis-server`, or skip the test (fail it in CI) when it is missing."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    message = "redis-server is not installed (Debian: apt-get install redis-server)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must install it", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """One redis-server process; `restart()` keeps its port and data folder."""

    def __init__(self, data_dir: Path):
        self.executable = require_redis_server()
        self.data_dir = data_dir
        self.port = free_port()
        self.popen: subprocess.Popen | None = None
        self.log_path = data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        arguments = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.popen = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.popen.returncode}:\n{self.log_tail()}")
            if self.command(b"PING") == b"+PONG":
                return
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not answer PING within {STARTUP_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def command(self, *words: bytes) -> bytes | None:
        """Send one command and return the first reply line, or None when the server cannot be reached."""
        request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(request)
                return connection.recv(65536).split(b"\r\n", 1)[0]
        except OSError:
            return None

    def flush(self) -> None:
        assert self.command(b"FLUSHALL") == b"+OK"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """Stop the server with SIGKILL: only what its append-only file holds survives."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()
