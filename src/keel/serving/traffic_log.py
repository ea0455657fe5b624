"""What the traffic topic says now: the latest evidence per candidate, the recent decisions.

Shadows persist a snapshot every few seconds, so the topic grows with a route's history while
its readers (restoring evidence, the controller polling a route's traffic) need only the
latest few events. The index reads the topic once, then only what was appended since it last
looked, from whichever process wrote it.
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Any

from keel.errors import ValidationError
from keel.log import OFFSET

__all__ = ["TrafficIndex"]

READ_BATCH = 10_000


class TrafficIndex:
    """The latest ``shadow_stats`` per (route, candidate) and the last ``keep`` events of
    every other kind per route (traffic settings, decisions), kept up to date from
    ``topic`` of ``log``."""

    def __init__(self, log: Any, topic: str, *, keep: int = 50) -> None:
        self.log = log
        self.topic = topic
        self.keep = keep
        self._positions: dict[int, int] = {}
        self._stats: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        self._recent: dict[tuple[str, str], collections.deque[tuple[Any, dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def events(self, route: str, kind: str) -> list[dict[str, Any]]:
        """The kept events of one route and kind, oldest first, each its payload plus
        ``at`` (the event time, ISO 8601)."""
        with self._lock:
            self._refresh()
            if kind == "shadow_stats":
                kept = [v for (r, _), v in self._stats.items() if r == route]
            else:
                kept = list(self._recent.get((route, kind), ()))
        return [event for _, event in sorted(kept, key=lambda te: te[0])]

    def last(self, route: str, kind: str) -> dict[str, Any] | None:
        """The route's latest event of ``kind`` in the order it was written (a setting is
        the last one written, whatever the clocks of the processes that wrote them), or
        None; not for ``shadow_stats``."""
        if kind == "shadow_stats":
            raise ValidationError("shadow_stats are kept per candidate: read them with events()")
        with self._lock:
            self._refresh()
            recent = self._recent.get((route, kind))
            return recent[-1][1] if recent else None

    def _refresh(self) -> None:
        for p in range(self.log.topic(self.topic).partitions):
            while True:
                table = self.log.read(self.topic, p, self._positions.get(p, 0), READ_BATCH)
                if not table.num_rows:
                    break
                self._positions[p] = int(table.column(OFFSET)[-1].as_py()) + 1
                for e in table.to_pylist():
                    self._add(e)

    def _add(self, e: dict[str, Any]) -> None:
        ts = e["ts"]
        event = {"at": ts.isoformat(), **json.loads(e["payload"])}
        route, kind = e["route"], e["kind"]
        if kind == "shadow_stats":
            key = (route, str(event.get("candidate")))
            held = self._stats.get(key)
            # Later in event time wins; on a tie, later in the log (as a stable sort would).
            if held is None or ts >= held[0]:
                self._stats[key] = (ts, event)
            return
        recent = self._recent.get((route, kind))
        if recent is None:
            recent = self._recent[(route, kind)] = collections.deque(maxlen=self.keep)
        recent.append((ts, event))
