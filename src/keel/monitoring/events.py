"""The ``keel.monitor`` topic: monitored windows, alerts, retrain requests and realized
performance, per route, and reading them back."""

from __future__ import annotations

import json
import math
from typing import Any

from keel.errors import TopicNotFoundError
from keel.log import OFFSET, Topic

__all__ = ["MONITOR", "events", "has_topic", "history", "times_level"]

#: Monitored windows, alerts, retrain requests and realized performance, per route.
MONITOR = Topic(
    "keel.monitor",
    {"ts": "timestamp", "route": "string", "kind": "string", "payload": "string"},
    event_time="ts",
    key="route",
)


def history(log_: Any, route: str) -> list[dict[str, Any]]:
    """The route's monitored windows in order, with realized performance merged in."""
    windows: dict[int, dict[str, Any]] = {}
    for event in _read(log_, route, ("window", "realized")):
        if event["kind"] == "window":
            windows[event["window"]] = event
        elif event["window"] in windows and windows[event["window"]]["performance"]:
            perf = windows[event["window"]]["performance"]
            perf["realized"], perf["labelled"] = event["realized"], event["labelled"]
    return [windows[i] for i in sorted(windows)]


def events(log_: Any, route: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """The route's events of ``kinds`` in log order, each its payload plus ``kind`` and ``at``."""
    return list(_read(log_, route, kinds))


def _read(log_: Any, route: str, kinds: tuple[str, ...]) -> Any:
    if not has_topic(log_, MONITOR.name):
        return
    for p in range(log_.topic(MONITOR.name).partitions):
        offset = 0
        while True:
            batch = log_.read(MONITOR.name, p, offset, 10_000)
            if not batch.num_rows:
                break
            offset = int(batch.column(OFFSET)[-1].as_py()) + 1
            for e in batch.to_pylist():
                if e["route"] == route and e["kind"] in kinds:
                    yield {"kind": e["kind"], "at": e["ts"].isoformat(), **json.loads(e["payload"])}


def has_topic(log_: Any, name: str) -> bool:
    """Whether the log has topic ``name`` (answered from the log's cache once it has)."""
    try:
        log_.topic(name)
    except TopicNotFoundError:
        return False
    return True


def times_level(check: dict[str, Any]) -> float:
    """How many times its alert level one feature check of a window record came to (a
    feature missing from the window counts as infinitely far over)."""
    return math.inf if check["value"] is None else check["value"] / check["threshold"]
