"""Start and stop `hookrelay` commands as real processes.

Each process writes stdout and stderr to files in a log folder, so no pipe
can fill up and block it, and the files stay behind for a failed test.
Processes are stopped by their own PID: SIGTERM first, SIGKILL after a
timeout.
"""

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from .timing import MS, wait_until

STARTUP_TIMEOUT = 15_000 * MS
STOP_TIMEOUT = 10_000 * MS
COMMAND_TIMEOUT = 30_000 * MS

LISTENING_PATTERN = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")

# Proxy variables would send the listener's loopback traffic elsewhere.
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ws_proxy", "wss_proxy"}


def find_hookrelay() -> str:
    """Return the path of the `hookrelay` console script of this interpreter's environment."""
    beside_python = Path(sys.executable).with_name("hookrelay")
    if beside_python.exists():
        return str(beside_python)
    on_path = shutil.which("hookrelay")
    if on_path is None:
        raise RuntimeError("hookrelay is not installed: run `pip install -e .` in the repository first")
    return on_path


def child_environment(config_dir: Path) -> dict[str, str]:
    """Build the environment of a hookrelay process.

    The user's HOOKRELAY_* settings and proxy variables are left out, and the
    config folder points into the test's temporary folder, so no user config
    is read or written.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("HOOKRELAY_") and name.lower() not in PROXY_VARIABLES
    }
    environment["HOOKRELAY_CONFIG_DIR"] = str(config_dir)
    environment["NO_COLOR"] = "1"
    return environment


class HookrelayProcess:
    """One running `hookrelay` command with its output in `<log_dir>/<name>.stdout` and `.stderr`."""

    def __init__(self, name: str, arguments: list[str], log_dir: Path, environment: dict[str, str]):
        self.name = name
        self.arguments = arguments
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.popen = subprocess.Popen(
                [find_hookrelay(), *arguments],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=environment,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stderr_tail(self, lines: int = 20) -> str:
        """Return the last lines of stderr, for failure messages."""
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def json_lines(self) -> list[dict]:
        """Parse every complete stdout line as JSON.

        Raises AssertionError naming the first line that is not a JSON object.
        """
        records = []
        for line in self.stdout_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"{self.name} printed a stdout line that is not JSON: {line!r}") from None
            if not isinstance(record, dict):
                raise AssertionError(f"{self.name} printed a stdout line that is not a JSON object: {line!r}")
            records.append(record)
        return records

    async def wait_for_stderr(self, pattern: re.Pattern, timeout: float) -> re.Match:
        """Wait until stderr contains a match of `pattern` and return it.

        Raises AssertionError when the process exits or `timeout` seconds pass first.
        """

        def printed_or_exited() -> bool:
            return pattern.search(self.stderr_text()) is not None or self.returncode is not None

        await self._wait(printed_or_exited, timeout, f"{self.name} to print {pattern.pattern!r}")
        match = pattern.search(self.stderr_text())
        if match is None:
            raise AssertionError(
                f"{self.name} exited with {self.returncode} before printing {pattern.pattern!r}:\n"
                f"{self.stderr_tail()}"
            )
        return match

    async def wait_for_exit(self, timeout: float) -> int:
        """Wait until the process exits and return its exit code."""
        await self._wait(lambda: self.returncode is not None, timeout, f"{self.name} to exit")
        return self.returncode

    async def wait_for_connection(self, port: int, timeout: float) -> None:
        """Wait until the process has an established TCP connection to `port` on loopback.

        Raises AssertionError when the process exits or `timeout` seconds pass first.
        """

        def connected_or_exited() -> bool:
            if self.returncode is not None:
                return True
            try:
                connections = psutil.Process(self.pid).net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                return True
            return any(
                connection.status == psutil.CONN_ESTABLISHED
                and connection.raddr
                and connection.raddr.port == port
                for connection in connections
            )

        await self._wait(connected_or_exited, timeout, f"{self.name} to connect to port {port}")
        if self.returncode is not None:
            raise AssertionError(f"{self.name} exited with {self.returncode}:\n{self.stderr_tail()}")

    async def _wait(self, condition, timeout: float, description: str) -> None:
        """Run `wait_until` and add the end of stderr to its timeout message."""
        try:
            await wait_until(condition, timeout, description)
        except AssertionError as error:
            raise AssertionError(f"{error}\nstderr of {self.name}:\n{self.stderr_tail()}") from None

    def send_signal(self, signal_number: int) -> None:
        if self.returncode is None:
            self.popen.send_signal(signal_number)

    def kill(self) -> None:
        """Send SIGKILL and reap the process."""
        self.send_signal(signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT)

    def stop(self) -> int:
        """Send SIGTERM, then SIGKILL after STOP_TIMEOUT, and return the exit code.

        This blocks, so call it through `asyncio.to_thread` while a target
        in the test's event loop may still have to respond to the process.
        """
        self.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.returncode


@dataclass(frozen=True)
class Relay:
    """A running relay and the URL it printed."""

    process: HookrelayProcess
    url: str
    port: int
    data_dir: Path


@dataclass(frozen=True)
class Channel:
    """The output of `hookrelay channel create --json`."""

    id: str
    url: str
    token: str


class ProcessRunner:
    """Starts hookrelay commands with an isolated environment and stops every one of them at the end.

    `store_url`, when set, is passed to every relay as `--store`; the test
    session sets it for all runners to run the end-to-end tests on Redis.
    """

    store_url: str | None = None

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.environment = child_environment(log_dir / "config")
        self.processes: list[HookrelayProcess] = []
        self._numbers = itertools.count(1)

    def start(self, role: str, arguments: list[str]) -> HookrelayProcess:
        """Start `hookrelay ARGUMENTS` and keep it for `stop_all`."""
        name = f"{role}-{next(self._numbers)}"
        process = HookrelayProcess(name, arguments, self.log_dir, self.environment)
        self.processes.append(process)
        return process

    async def start_relay(self, data_dir: Path, *extra_arguments: str, port: int = 0) -> Relay:
        """Start `hookrelay serve` on loopback and wait until it prints its URL.

        Port 0 lets the system pick a free port.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        arguments = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir), *extra_arguments]
        if self.store_url is not None and "--store" not in extra_arguments:
            arguments += ["--store", self.store_url]
        process = self.start("relay", arguments)
        match = await process.wait_for_stderr(LISTENING_PATTERN, STARTUP_TIMEOUT)
        return Relay(process=process, url=match.group(1), port=int(match.group(2)), data_dir=data_dir)

    def start_listener(
        self,
        relay_url: str,
        channel: Channel,
        forward: str,
        *extra_arguments: str,
        token: str | None = None,
    ) -> HookrelayProcess:
        """Start `hookrelay listen --json` on `channel`, forwarding to `forward`."""
        arguments = [
            "listen",
            "--relay", relay_url,
            "--channel", channel.id,
            "--token", channel.token if token is None else token,
            "--forward", forward,
            "--json",
            *extra_arguments,
        ]
        return self.start("listener", arguments)

    async def run(self, arguments: list[str]) -> tuple[int, str, str]:
        """Run a short hookrelay command to its end and return its exit code, stdout and stderr."""
        process = await asyncio.create_subprocess_exec(
            find_hookrelay(),
            *arguments,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"hookrelay {' '.join(arguments)} did not finish within {COMMAND_TIMEOUT:.0f} s")
        return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")

    async def create_channel(self, relay_url: str) -> Channel:
        """Create a channel with `hookrelay channel create --json`."""
        exit_code, stdout, stderr = await self.run(["channel", "create", "--relay", relay_url, "--json"])
        if exit_code != 0:
            raise AssertionError(f"hookrelay channel create exited with {exit_code}:\n{stderr}")
        created = json.loads(stdout)
        return Channel(id=created["channel"], url=created["url"], token=created["token"])

    def stop_all(self) -> None:
        """Stop every process that is still running, newest first."""
        for process in reversed(self.processes):
            process.stop()

    async def stop_all_async(self) -> None:
        await asyncio.to_thread(self.stop_all)
