"""Prometheus-style durations ("1m30s", "500ms", "5s") as used in blackbox.yml."""

from __future__ import annotations

import math
import re

from probemesh.errors import ConfigError

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(value: object, where: str) -> float:
    """Return seconds for a duration string or a bare number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like '30s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ConfigError(
                f"{where}: invalid duration {value!r} (use e.g. '500ms', '30s', '1m')"
            )
    else:
        raise ConfigError(f"{where}: expected a duration like '30s', got {value!r}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"{where}: duration must be positive, got {value!r}")
    return seconds
