"""hookrelay processes under test: relay, listeners, channel creation, and their resource use.

Every process is started from the `hookrelay` console script with its own config
directory, `NO_COLOR=1` and no proxy variables, so nothing it does leaves the loopback
interface. `stop()` ends only the process that it started, by PID: SIGTERM, then SIGKILL
after a grace period.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

LISTENING_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT = 30.0
STOP_GRACE = 10.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")


class BenchError(Exception):
    """A hookrelay process failed to start, or its output cannot be used by the bench."""


def child_environment(config_dir: Path) -> dict[str, str]:
    """Build the environment for one hookrelay process, without the user's hookrelay settings or proxies.

    Creates `config_dir`, which becomes the process's HOOKRELAY_CONFIG_DIR.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("HOOKRELAY_") and name.lower() not in PROXY_VARIABLES
    }
    env["HOOKRELAY_CONFIG_DIR"] = str(config_dir)
    env["NO_COLOR"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def read_log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One child process that logs to a file and is stopped by its PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def spawn(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def describe_exit(self) -> str:
        tail = read_log_tail(self.log_path)
        return f"{self.name} exited with status {self.exited()}" + (f":\n{tail}" if tail else "")

    def stop(self) -> None:
        """Send SIGTERM, wait up to STOP_GRACE seconds, then SIGKILL. Safe to call twice."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_GRACE)


class Relay(ManagedProcess):
    """`hookrelay serve` on 127.0.0.1 with a fresh SQLite data directory, or on the Redis at `store_url`."""

    def __init__(
        self, hookrelay: str, workdir: Path, env: dict[str, str], *,
        sync: str | None, max_body: int | None, extra_options: list[str], store_url: str | None = None,
    ) -> None:
        data_dir = workdir / "data"
        data_dir.mkdir(parents=True)
        argv = [hookrelay, "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)]
        if store_url is not None:
            argv += ["--store", store_url]
        if sync is not None:
            argv += ["--sync", sync]
        if max_body is not None:
            argv += ["--max-body", str(max_body)]
        argv += extra_options
        super().__init__("relay", argv, env, workdir / "relay.log")
        self.data_dir = data_dir
        self.url = ""

    async def start(self) -> str:
        """Start the relay and return its base URL once it logged the line it listens on."""
        self.spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = LISTENING_LINE.search(self.log_path.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                return self.url
            if self.exited() is not None:
                raise BenchError(self.describe_exit())
            await asyncio.sleep(0.05)
        raise BenchError(f"relay logged no 'listening on' line within {START_TIMEOUT:.0f} s:\n"
                         + read_log_tail(self.log_path))

    def data_size(self) -> int:
        """Return the bytes in the data directory, WAL and journal files included."""
        return sum(path.stat().st_size for path in self.data_dir.rglob("*") if path.is_file())


class Listener(ManagedProcess):
    """`hookrelay listen` forwarding one channel to the bench target."""

    def __init__(
        self, hookrelay: str, log_path: Path, env: dict[str, str], *,
        relay_url: str, channel: Channel, forward: str, concurrency: int,
    ) -> None:
        argv = [
            hookrelay, "listen", "--relay", relay_url, "--channel", channel.id, "--token", channel.token,
            "--forward", forward, "--concurrency", str(concurrency), "--json",
        ]
        super().__init__("listener", argv, env, log_path)


@dataclass(frozen=True)
class Channel:
    id: str
    url: str
    token: str


async def create_channel(hookrelay: str, relay_url: str, env: dict[str, str]) -> Channel:
    """Create a channel with `hookrelay channel create --json` and return its id, ingest URL and token.

    `--no-save` keeps the CLI from remembering the channel in the shared config directory,
    which the bench does not need and which several concurrent creations would all write.
    """
    process = await asyncio.create_subprocess_exec(
        hookrelay, "channel", "create", "--relay", relay_url, "--no-save", "--json",
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        reason = last_line(stderr.decode(errors="replace")) or "no message"
        raise BenchError(f"hookrelay channel create exited with status {process.returncode}: {reason}")
    try:
        created = json.loads(stdout)
        return Channel(id=created["channel"], url=created["url"].rstrip("/"), token=created["token"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"hookrelay channel create printed unexpected output: {stdout[:200]!r}") from exc


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# Abuse limits that would reject the bench's traffic, which all comes from 127.0.0.1, and
# the value that turns each one off.
UNLIMITED_SERVE_OPTIONS = {
    "--address-rate": "0",
    "--channel-rate": "0",
    "--max-connections-per-address": "0",
}


def unlimited_serve_options(hookrelay: str, env: dict[str, str]) -> list[str]:
    """Return the options that turn off the per-address and per-channel limits this `hookrelay serve` has."""
    help_env = {**env, "COLUMNS": "400"}
    completed = subprocess.run(
        [hookrelay, "serve", "--help"], env=help_env, capture_output=True, text=True, timeout=START_TIMEOUT
    )
    if completed.returncode != 0:
        raise BenchError(f"hookrelay serve --help exited with status {completed.returncode}: "
                         + last_line(completed.stderr))
    options = []
    for option, value in UNLIMITED_SERVE_OPTIONS.items():
        if re.search(rf"{re.escape(option)}\b", completed.stdout):
            options += [option, value]
    return options


def peak_rss(pid: int) -> int | None:
    """Return the process's peak resident set size in bytes (Linux VmHWM), or None where unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def cpu_seconds(pid: int) -> float:
    """Return user plus system CPU seconds used so far, or 0.0 once the process is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def machine_busy_seconds() -> float:
    """Return the CPU seconds that all processes on the machine used since boot, summed over cores.

    Idle, I/O wait and steal time are left out. Guest time is left out too, because Linux
    already counts it in user time.
    """
    times = psutil.cpu_times()._asdict()
    busy_fields = ("user", "nice", "system", "irq", "softirq")
    return sum(times.get(field, 0.0) for field in busy_fields)


@dataclass
class Usage:
    """Memory and CPU of one process over a measured window."""

    peak_rss: int = 0
    cpu_seconds: float = 0.0


class ResourceMonitor:
    """Sampler of the RSS of watched processes. It runs in a thread, so a busy event loop cannot delay it.

    `watch()` records a process's CPU time at that moment, and `finish()` turns samples and
    CPU times into a `Usage` per name. The peak is the larger of the sampled maximum and
    the kernel's high-water mark, so a spike between two samples still counts. `finish()`
    also returns, under OTHERS, the CPU seconds that processes outside the bench used
    meanwhile, which shows when other work on the machine skewed a run.
    """

    OTHERS = "others"

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._pids: dict[str, int] = {}
        self._handles: dict[str, psutil.Process] = {}
        self._peaks: dict[str, int] = {}
        self._cpu_at_start: dict[str, float] = {}
        self._machine_busy_at_start = machine_busy_seconds()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-resource-monitor", daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        self._cpu_at_start[name] = cpu_seconds(pid)
        with self._lock:
            self._pids[name] = pid
            self._peaks[name] = current_rss(pid)
            self._handles[name] = psutil.Process(pid)

    def peak(self, name: str) -> int:
        """Return the peak RSS of `name` so far, in bytes."""
        with self._lock:
            sampled = self._peaks[name]
        return max(sampled, peak_rss(self._pids[name]) or 0)

    def finish(self) -> dict[str, Usage]:
        """Stop sampling and return the usage of every watched process. Call it before the processes stop."""
        self._stop.set()
        self._thread.join()
        usage = {
            name: Usage(peak_rss=self.peak(name), cpu_seconds=cpu_seconds(pid) - self._cpu_at_start[name])
            for name, pid in self._pids.items()
        }
        machine_busy = machine_busy_seconds() - self._machine_busy_at_start
        others = max(0.0, machine_busy - sum(process.cpu_seconds for process in usage.values()))
        usage[self.OTHERS] = Usage(cpu_seconds=others)
        return usage

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                handles = list(self._handles.items())
            for name, handle in handles:
                try:
                    rss = handle.memory_info().rss
                except psutil.Error:
                    continue
                with self._lock:
                    self._peaks[name] = max(self._peaks[name], rss)


def stop_all(processes: list[ManagedProcess]) -> None:
    """Stop many processes at once: SIGTERM to all of them first, then wait for each, then SIGKILL."""
    running = [managed.process for managed in processes if managed.process and managed.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_GRACE)
