"""Pick the local target of each event: ``--forward`` rules.

``--forward`` may be given several times. Each value is one of:

* ``TARGET``: the default target (at most one), as before: ``8000``,
  ``localhost:8000/hooks`` or a URL;
* ``/PREFIX=TARGET``: events whose path tail is ``/PREFIX`` or lies below
  it (``/PREFIX/…``, ``/PREFIX?…``; ``/PREFIXabc`` does not match);
* ``type:PATTERN=TARGET``: events whose event type matches ``PATTERN`` the
  way ``--events`` patterns do (``push``, ``issues``, ``invoice.*``).

Rules are tried in the order given and the first match wins; the default
target takes what no rule matched. Without a default, an unmatched event
is acknowledged as ``skipped``.

A path rule mounts the prefix on its target: the prefix is stripped and
the rest of the tail is appended to the target's path, so with
``--forward /github=localhost:8000/gh`` a request to ``<url>/github/push?x=1``
reaches ``localhost:8000/gh/push?x=1``. To keep the prefix, repeat it in
the target (``/github=localhost:8000/github``). Prefixes are compared with
the raw path as the sender wrote it, before percent-decoding.

Every target is parsed once at start-up; nothing in an event can name
another host.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay_client.config import Target, parse_target
from relay_client.errors import UsageError
from relay_client.filters import type_matches
from relay_server.protocol import Event


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``--forward`` rule: a path prefix or an event-type pattern, and its target."""

    target: Target
    prefix: bytes | None = None
    event_type: str | None = None

    def __str__(self) -> str:
        condition = self.prefix.decode("latin-1") if self.prefix is not None else f"type:{self.event_type}"
        return f"{condition} → {self.target.redacted()}"

    def match(self, event: Event) -> bytes | None:
        """Return the tail to forward when the rule matches ``event``, else None."""
        if self.prefix is None:
            return event.target if type_matches(self.event_type or "", event.event_type) else None
        path, question, query = event.target.partition(b"?")
        if path == self.prefix or path.startswith(self.prefix + b"/"):
            return path[len(self.prefix) :] + question + query
        return None


@dataclass(frozen=True, slots=True)
class Route:
    """The destination of one event: the target and the tail appended to its path."""

    target: Target
    tail: bytes


@dataclass(frozen=True, slots=True)
class Router:
    """The rules in the order given, and the default target, if any."""

    rules: tuple[Rule, ...] = ()
    default: Target | None = None

    @classmethod
    def parse(cls, values: list[str]) -> Router:
        rules: list[Rule] = []
        default: Target | None = None
        for value in values:
            rule = parse_rule(value)
            if rule is not None:
                rules.append(rule)
            elif default is not None:
                raise UsageError("--forward", value, f"only one plain target may be given; {default} is the default already")
            else:
                default = parse_target(value)
        return cls(tuple(rules), default)

    @property
    def targets(self) -> tuple[Target, ...]:
        """Every distinct target, default last."""
        found = [rule.target for rule in self.rules] + ([self.default] if self.default else [])
        return tuple(dict.fromkeys(found))

    def resolve(self, event: Event) -> Route | None:
        for rule in self.rules:
            tail = rule.match(event)
            if tail is not None:
                return Route(rule.target, tail)
        return Route(self.default, event.target) if self.default else None

    def describe(self) -> list[str]:
        lines = [str(rule) for rule in self.rules]
        if self.default is not None:
            lines.append(f"everything else → {self.default.redacted()}" if self.rules else self.default.redacted())
        return lines


def parse_rule(value: str) -> Rule | None:
    """Parse ``/prefix=TARGET`` or ``type:PATTERN=TARGET``; returns None for a plain target."""
    text = value.strip()
    if text.startswith("/"):
        prefix, equals, target = text.partition("=")
        if not equals or not target:
            raise UsageError("--forward", value, "write a path rule as /PREFIX=TARGET, e.g. /github=localhost:8000/gh")
        prefix = prefix.rstrip("/")
        if not prefix or any(char in prefix for char in "?# "):
            raise UsageError("--forward", value, "the prefix must be a path such as /github, without query or spaces")
        return Rule(parse_target(target), prefix=prefix.encode("utf-8"))
    if text.startswith("type:"):
        pattern, equals, target = text[len("type:") :].partition("=")
        if not equals or not pattern.strip() or not target:
            raise UsageError("--forward", value, "write a type rule as type:PATTERN=TARGET, e.g. type:push=localhost:7000")
        return Rule(parse_target(target), event_type=pattern.strip())
    return None
