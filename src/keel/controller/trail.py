"""The loop's causal trail: the ``keel.loop`` topic, one event per step of a route's loop, each
naming the event that caused it.

A chain reads ``trigger`` (an alert, a drift, a schedule) → ``job`` (submitted) →
``job_done`` → ``candidate`` (the version registered and shadowed) → ``decision`` (promote or
reject) → ``swap`` (the route serves it) → ``monitoring`` (the monitor follows it). ``skipped``
says why a trigger asked for nothing (cooldown, budget, paused); ``paused`` and ``resumed``
are an operator's. Ids are deterministic where the cause is an event of another topic, so a
controller that restarts and reads the same alert again recognizes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keel.errors import TopicNotFoundError
from keel.log import OFFSET, Topic

__all__ = ["CLOSING", "LOOP", "LoopEvent", "chains", "from_record", "publish", "read"]

LOOP = Topic(
    "keel.loop",
    {
        "ts": "timestamp",
        "route": "string",
        "id": "string",
        "cause": "string?",
        "kind": "string",
        "payload": "string",
    },
    event_time="ts",
    key="route",
)

#: Kinds that end a chain: nothing more will happen in it.
CLOSING = frozenset({"closed", "monitoring"})


@dataclass(frozen=True, slots=True)
class LoopEvent:
    """One step of a route's loop."""

    route: str
    id: str
    cause: str | None
    kind: str
    at: datetime
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One line saying what happened."""
        return str(self.payload.get("summary") or self.kind)


def publish(log: Any, events: list[LoopEvent]) -> None:
    """Append ``events`` to the trail (one append, in order)."""
    if not events:
        return
    log.append(
        LOOP.name,
        [
            {
                "ts": e.at,
                "route": e.route,
                "id": e.id,
                "cause": e.cause,
                "kind": e.kind,
                "payload": json.dumps(e.payload, default=str),
            }
            for e in events
        ],
    )


def read(log: Any, route: str | None = None) -> Iterator[LoopEvent]:
    """The trail in log order (of one route, or all)."""
    try:
        partitions = log.topic(LOOP.name).partitions
    except TopicNotFoundError:
        return
    for p in range(partitions):
        offset = 0
        while True:
            batch = log.read(LOOP.name, p, offset, 10_000)
            if not batch.num_rows:
                break
            offset = int(batch.column(OFFSET)[-1].as_py()) + 1
            for e in batch.to_pylist():
                if route is None or e["route"] == route:
                    yield from_record(e)


def from_record(e: dict[str, Any]) -> LoopEvent:
    """The event a record of the ``keel.loop`` topic holds."""
    return LoopEvent(
        e["route"],
        e["id"],
        e["cause"],
        e["kind"],
        e["ts"].astimezone(UTC),
        json.loads(e["payload"]),
    )


def chains(events: list[LoopEvent]) -> list[list[LoopEvent]]:
    """The events grouped by chain (a root and everything it caused, in order), oldest
    chain first. An event whose cause is not on the trail starts a chain of its own."""
    by_id = {e.id: e for e in events}
    root_of: dict[str, str] = {}
    out: dict[str, list[LoopEvent]] = {}
    for e in events:
        root = e.id
        if e.cause is not None and e.cause in by_id:
            root = root_of.get(e.cause, e.cause)
        root_of[e.id] = root
        out.setdefault(root, []).append(e)
    return list(out.values())
