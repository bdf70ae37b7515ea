"""Parse sizes (``25MiB``) and durations (``7d``) given on the command line."""

from __future__ import annotations

import re

from relay_client.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 1000**2, "MB": 1000**2, "MIB": 1024**2,
                 "G": 1000**3, "GB": 1000**3, "GIB": 1024**3}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: str | int, option: str) -> int:
    """Parse ``1048576``, ``25MiB`` or ``10MB`` into bytes."""
    match = _SIZE.match(str(value))
    unit = (match.group(2) or "").upper() if match else None
    if match is None or unit not in _SIZE_FACTORS:
        raise UsageError(option, value, "use bytes or a size such as 512KiB, 25MiB or 10MB")
    return int(float(match.group(1)) * _SIZE_FACTORS[unit])


def parse_duration(value: str | float, option: str, *, positive: bool = False) -> float:
    """Parse ``45``, ``45s``, ``500ms``, ``30m``, ``12h`` or ``7d`` into seconds, rejecting zero when ``positive`` is set."""
    match = _DURATION.match(str(value))
    if match is None:
        raise UsageError(option, value, "use seconds or a duration such as 500ms, 90s, 30m, 12h or 7d")
    seconds = float(match.group(1)) * _DURATION_FACTORS[(match.group(2) or "s").lower()]
    if positive and seconds <= 0:
        raise UsageError(option, value, "use a duration above zero, such as 500ms, 30s or 2m")
    return seconds
