"""Times and durations as the console writes them.

>>> duration(42), duration(600), duration(9000), duration(2 * 86400)
('42 s', '10 min', '2.5 h', '2.0 d')
>>> stamp("2026-12-07T18:28:42.5+00:00")
'2026-12-07 18:28:42'
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = ["duration", "stamp", "stamp_ts"]


def duration(seconds: float | None) -> str:
    """A length of time for a person."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 120:
        return f"{sign}{seconds:.0f} s"
    if seconds < 7200:
        return f"{sign}{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{sign}{seconds / 3600:.1f} h"
    return f"{sign}{seconds / 86400:.1f} d"


def stamp(iso: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    if not iso:
        return "—"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def stamp_ts(ts: float | None) -> str:
    """A POSIX time as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
