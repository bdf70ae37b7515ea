"""`hookrelay serve` start-up failures end with one error line and exit 1, never a traceback."""

import socket
from pathlib import Path

import pytest

from relay_server.app import _start_site
from relay_server.config import ServerConfig
from relay_server.errors import ListenError

EXIT_ERROR = 1


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("hookrelay: error: ")]


async def test_port_in_use_is_one_line(runner, tmp_path):
    """A port in use by another socket is named in the error, with what to do."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        code, _, stderr = await runner.run(["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data")])
    finally:
        holder.close()

    assert code == EXIT_ERROR, stderr
    assert _error_lines(stderr) == [
        f"hookrelay: error: cannot listen on 127.0.0.1:{port}: address already in use; "
        "stop the process that uses it or pass another --port"
    ]
    assert "Traceback" not in stderr


async def test_address_not_on_this_machine_is_one_line(runner, tmp_path):
    """A --host address that no interface has is named, with the options to check.

    192.0.2.1 is reserved for documentation (RFC 5737): binding to it fails
    at once and sends nothing.
    """
    code, _, stderr = await runner.run(["serve", "--host", "192.0.2.1", "--port", "0", "--data-dir", str(tmp_path / "data")])

    lines = _error_lines(stderr)
    assert code == EXIT_ERROR, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hookrelay: error: cannot listen on 192.0.2.1:0: ")
    assert lines[0].endswith("; check --host and --port")
    assert "Traceback" not in stderr


class _UnresolvableSite:
    """Stands in for the site, because resolving a host name would query a DNS server."""

    async def start(self):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def test_unresolvable_host_names_the_option():
    """A --host name that does not resolve raises ListenError that points at --host."""
    config = ServerConfig(host="relay.example", port=8787, data_dir=Path("unused"))

    with pytest.raises(ListenError) as info:
        await _start_site(_UnresolvableSite(), config)

    assert str(info.value) == "cannot listen on relay.example:8787: Name or service not known; check --host"


async def test_body_limit_above_listener_messages_is_refused(runner, tmp_path):
    """A --max-body that no listener could receive is refused before the relay starts."""
    code, _, stderr = await runner.run(["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--max-body", "80MiB"])

    assert code == 2, stderr
    assert _error_lines(stderr) == [
        "hookrelay: error: invalid --max-body '80MiB': use at most 63MiB, because listeners accept messages of up to 64 MiB"
    ]
    assert not (tmp_path / "data").exists()
