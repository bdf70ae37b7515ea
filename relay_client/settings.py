"""The user's config file and the channels the CLI remembers.

Precedence, highest first: command-line options, ``HOOKRELAY_*`` environment
variables, the config file, built-in defaults. The config file is TOML at
``<config dir>/config.toml``; top-level keys apply to every command that has
an option of that name, and a table per command overrides them::

    relay = "https://relay.example.com"

    [listen]
    forward = "localhost:3000"

    [serve]
    port = 8787

Channels created by ``listen`` or ``channel create`` are remembered per
relay in ``<config dir>/channels.json`` (mode 0600, because it holds tokens),
so the public URL stays the same from run to run.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from relay_client.errors import UsageError

CONFIG_DIR_ENV = "HOOKRELAY_CONFIG_DIR"
CHANNEL_SUBCOMMANDS = ("create", "list", "show", "update", "rotate-token", "verify", "dedupe", "event-type")


# Tables of the config file; each applies to the command of that name.
SECTIONS = ("listen", "serve", "channel", "events")


def config_dir() -> Path:
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override) if override else Path(platformdirs.user_config_dir("hookrelay"))


def config_path() -> Path:
    return config_dir() / "config.toml"


def load_config_file(path: Path | None = None) -> dict[str, Any]:
    """Read the config file; a missing file is empty, an unreadable or invalid one raises :class:`UsageError`."""
    path = path or config_path()
    try:
        with path.open("rb") as handle:
            config = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError("config file", str(path), f"cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError("config file", str(path), f"it is not valid TOML: {exc}") from None
    for section in SECTIONS:
        if section in config and not isinstance(config[section], dict):
            raise UsageError(section, config[section], f"it must be a table, [{section}]", source=str(path))
    return config


def unknown_keys(config: dict[str, Any], known: dict[str, set[str]]) -> list[str]:
    """Describe each config key that no option reads, such as "unknown key 'x' in [listen]".

    ``known`` maps each section, and "" for the top level, to the parameter
    names of its commands' options.
    """
    found: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict) and key in SECTIONS:
            found += [_unknown(f"key '{name}' in [{key}]", name, known[key]) for name in value if _option(name) not in known[key]]
        elif isinstance(value, dict):
            found.append(_unknown(f"table [{key}]", key, set(SECTIONS)))
        elif _option(key) not in known[""]:
            found.append(_unknown(f"key '{key}'", key, known[""]))
    return found


def _unknown(subject: str, key: str, names: set[str]) -> str:
    file_keys = {name: key for key, name in _RENAMED.items()}
    spelled = [file_keys.get(name, name).replace("_", "-") for name in sorted(names)]
    close = difflib.get_close_matches(key.replace("_", "-"), spelled, n=1)
    return f"unknown {subject} is ignored" + (f"; did you mean '{close[0]}'?" if close else "")


def default_map(config: dict[str, Any]) -> dict[str, Any]:
    """Turn the config file into Click's ``default_map`` (option names use underscores)."""
    shared = {_option(k): v for k, v in config.items() if not isinstance(v, dict)}
    result: dict[str, Any] = {}
    for command in ("listen", "serve"):
        result[command] = _as_lists(shared | {_option(k): v for k, v in config.get(command, {}).items()})
    channel = shared | {_option(k): v for k, v in config.get("channel", {}).items()}
    result["channel"] = {sub: channel for sub in CHANNEL_SUBCOMMANDS}
    events = shared | {_option(k): v for k, v in config.get("events", {}).items()}
    result["events"] = {sub: events for sub in ("list", "show", "replay", "delete")}
    result["replay"] = shared
    result["send"] = shared
    return result


def _option(key: str) -> str:
    name = key.replace("-", "_")
    return _RENAMED.get(name, name)


# Options that may be given several times; the file may give one value or a list.
_LIST_OPTIONS = frozenset({"forward", "events", "filters"})
# Config keys whose option has another parameter name ("--filter" is "filters").
_RENAMED = {"filter": "filters", "json": "as_json", "type": "event_type"}


def _as_lists(options: dict[str, Any]) -> dict[str, Any]:
    return {key: [value] if key in _LIST_OPTIONS and isinstance(value, str) else value for key, value in options.items()}


@dataclass(frozen=True, slots=True)
class SavedChannel:
    relay: str
    channel: str
    token: str
    url: str


class ChannelBook:
    """Channels this user created, keyed by relay URL, stored as JSON."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / "channels.json"

    def load(self) -> dict[str, list[SavedChannel]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UsageError("channel file", str(self.path), f"cannot read it: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError("channel file", str(self.path), f"it is not valid JSON ({exc}); fix or delete it") from None
        try:
            return {relay: [_saved_channel(relay, item) for item in items] for relay, items in raw.items()}
        except (AttributeError, TypeError, KeyError):
            raise UsageError(
                "channel file", str(self.path), 'expected {"<relay URL>": [{"channel": …, "token": …, "url": …}]}; fix or delete it'
            ) from None

    def default_for(self, relay: str) -> SavedChannel | None:
        saved = self.load().get(_relay_key(relay), [])
        return saved[0] if saved else None

    def count_for(self, relay: str) -> int:
        """Return how many channels are remembered for ``relay``."""
        return len(self.load().get(_relay_key(relay), []))

    def find(self, relay: str, channel: str) -> SavedChannel | None:
        return next((item for item in self.load().get(_relay_key(relay), []) if item.channel == channel), None)

    def save(self, saved: SavedChannel) -> None:
        """Add or update ``saved``; the first channel of a relay is its default."""
        book = self.load()
        items = book.get(_relay_key(saved.relay), [])
        if any(item.channel == saved.channel for item in items):
            items = [saved if item.channel == saved.channel else item for item in items]
        else:
            items = items + [saved]
        book[_relay_key(saved.relay)] = items
        self._write(book)

    def _write(self, book: dict[str, list[SavedChannel]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {relay: [{"channel": s.channel, "token": s.token, "url": s.url} for s in items] for relay, items in book.items()}
        # A temporary file of its own per writer, so concurrent commands do not
        # replace each other's half-written file; mkstemp creates it 0600.
        try:
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".channels-", suffix=".tmp")
        except OSError as exc:
            raise UsageError("channel file", str(self.path), f"cannot write it: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=2)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _saved_channel(relay: str, item: dict[str, Any]) -> SavedChannel:
    saved = SavedChannel(relay=relay, channel=item["channel"], token=item["token"], url=item.get("url", ""))
    if not all(isinstance(value, str) for value in (saved.channel, saved.token, saved.url)):
        raise TypeError("channel, token and url must be strings")
    return saved


def _relay_key(relay: str) -> str:
    return relay.rstrip("/")
