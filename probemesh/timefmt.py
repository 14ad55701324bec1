"""RFC 3339 UTC timestamps for every JSON response."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts: float | None) -> str | None:
    """Format Unix seconds as e.g. 2026-11-26T08:30:05Z (None stays None)."""
    if ts is None or ts <= 0:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
