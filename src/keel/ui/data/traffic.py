"""The traffic topic as the console shows it: each shadow comparison as it converged, and the
decisions taken, with their evidence.

Shadows snapshot their evidence every few seconds, so the topic grows with a route's history;
:class:`TrafficHistory` reads it once, then only what was appended since it last looked, and
keeps a bounded, evenly thinned series of snapshots per comparison.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from keel.errors import TopicNotFoundError
from keel.log import OFFSET
from keel.serving.traffic import Running
from keel.serving.traffic_manager import TRAFFIC

__all__ = ["Comparison", "Snapshot", "TrafficHistory"]

READ_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The shadow's evidence at one moment: comparisons so far, the mean discrepancy and its
    95% interval (None under two comparisons)."""

    at: str
    elapsed_s: float
    samples: int
    mean: float | None
    low: float | None
    high: float | None
    status: str


@dataclass(slots=True)
class Comparison:
    """One candidate compared against one primary on a route."""

    route: str
    candidate: str
    primary: str
    started_at: float
    snapshots: list[Snapshot] = field(default_factory=list)
    closed: bool = False  # a snapshot after it stopped comparing has been kept

    @property
    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    @property
    def status(self) -> str:
        return "comparing" if not self.snapshots else self.snapshots[-1].status


class TrafficHistory:
    """The comparisons and decisions of every route, kept up to date from ``log``."""

    def __init__(self, log: Any, *, keep_points: int = 240, keep_events: int = 100) -> None:
        self.log = log
        self.keep_points = keep_points
        self._positions: dict[int, int] = {}
        self._comparisons: dict[tuple[str, str], Comparison] = {}
        self._decisions: deque[dict[str, Any]] = deque(maxlen=keep_events)
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            try:
                partitions = self.log.topic(TRAFFIC.name).partitions
            except TopicNotFoundError:
                return
            for p in range(partitions):
                while True:
                    batch = self.log.read(TRAFFIC.name, p, self._positions.get(p, 0), READ_BATCH)
                    if not batch.num_rows:
                        break
                    self._positions[p] = int(batch.column(OFFSET)[-1].as_py()) + 1
                    for e in batch.to_pylist():
                        self._add(e)

    def comparisons(self, route: str) -> list[Comparison]:
        """The route's comparisons, in the order they started."""
        self.refresh()
        with self._lock:
            found = [c for (r, _), c in self._comparisons.items() if r == route]
        return sorted(found, key=lambda c: c.started_at)

    def decisions(self, route: str | None = None, last: int = 20) -> list[dict[str, Any]]:
        """The latest decisions (of one route, or every route), oldest first; each the
        event's payload plus ``route`` and ``at``."""
        self.refresh()
        with self._lock:
            found = [d for d in self._decisions if route is None or d["route"] == route]
        return found[-last:]

    def _add(self, e: dict[str, Any]) -> None:
        kind = e["kind"]
        if kind not in ("shadow_stats", "decision"):
            return
        try:
            payload = json.loads(e["payload"])
        except ValueError:
            return
        at = e["ts"].isoformat()
        if kind == "decision":
            self._decisions.append({**payload, "route": e["route"], "at": at})
            return
        key = (e["route"], str(payload.get("candidate")))
        comparison = self._comparisons.get(key)
        if comparison is None or float(payload["started_at"]) != comparison.started_at:
            comparison = self._comparisons[key] = Comparison(
                e["route"],
                str(payload.get("candidate")),
                str(payload.get("primary")),
                float(payload["started_at"]),
            )
        status = str(payload.get("status", "comparing"))
        if comparison.closed:
            return  # snapshots after the decision repeat its evidence
        diff = Running.from_dict(payload["diff"])
        lo, hi = diff.ci
        snap = Snapshot(
            at=at,
            elapsed_s=max(0.0, e["ts"].timestamp() - comparison.started_at),
            samples=diff.n,
            mean=diff.mean if diff.n else None,
            low=lo if diff.n > 1 else None,
            high=hi if diff.n > 1 else None,
            status=status,
        )
        if comparison.snapshots and comparison.snapshots[-1].samples == snap.samples:
            comparison.snapshots[-1] = snap  # nothing new compared: keep the latest word
        else:
            comparison.snapshots.append(snap)
        comparison.closed = status != "comparing"
        if len(comparison.snapshots) > self.keep_points:
            # Every other one of the older half: the start and the recent end stay sharp.
            half = len(comparison.snapshots) // 2
            comparison.snapshots[:half] = comparison.snapshots[:half:2]
