"""The ``keel.up`` topic: every lifecycle change of a supervised component, on the log.

Kinds: ``started`` (pid), ``healthy``, ``exited`` (code or signal), ``restarting`` (in
``delay_s``), ``crash-loop`` (with the tail of the component's log), ``settled`` (a crash loop
is over), ``stopped``; the supervisor's own start and stop are ``up`` and ``down`` of
component ``supervisor``.

Example
-------
>>> import tempfile
>>> from keel.log import open_log
>>> log_ = open_log(f"sqlite:///{tempfile.mkdtemp()}/log.db")
>>> publish(log_, [UpEvent(at=0.0, component="server", kind="started", payload={"pid": 7})])
>>> [(e.component, e.kind, e.payload) for e in read_events(log_)]
[('server', 'started', {'pid': 7})]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from keel.errors import TopicNotFoundError
from keel.log import OFFSET, Topic

__all__ = ["UP", "UpEvent", "publish", "read_events"]

#: Lifecycle changes of the components ``keel up`` supervises.
UP = Topic(
    "keel.up",
    {"ts": "timestamp", "component": "string", "kind": "string", "payload": "string"},
    event_time="ts",
    key="component",
)


class UpEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One lifecycle change; ``at`` is epoch seconds."""

    at: float
    component: str
    kind: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)

    def __str__(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%H:%M:%S")
        detail = ", ".join(f"{k} {v}" for k, v in self.payload.items() if k != "log_tail")
        return f"{when} {self.component} {self.kind}" + (f" ({detail})" if detail else "")


def publish(log_: Any, events: Sequence[UpEvent]) -> None:
    """Append ``events`` to :data:`UP`, creating the topic if need be."""
    if not events:
        return
    log_.create_topic(UP, exist_ok=True)
    log_.append(
        UP.name,
        [
            {
                "ts": datetime.fromtimestamp(e.at, UTC),
                "component": e.component,
                "kind": e.kind,
                "payload": json.dumps(e.payload),
            }
            for e in events
        ],
    )


def read_events(
    log_: Any, component: str | None = None, kinds: Sequence[str] | None = None
) -> list[UpEvent]:
    """The events of ``component`` (default: all) of ``kinds`` (default: all), in log order."""
    try:
        topic = log_.topic(UP.name)
    except TopicNotFoundError:
        return []
    out = []
    for p in range(topic.partitions):
        offset = 0
        while True:
            batch = log_.read(UP.name, p, offset, 10_000)
            if not batch.num_rows:
                break
            offset = int(batch.column(OFFSET)[-1].as_py()) + 1
            for row in batch.to_pylist():
                if component is not None and row["component"] != component:
                    continue
                if kinds is not None and row["kind"] not in kinds:
                    continue
                out.append(
                    UpEvent(
                        at=row["ts"].timestamp(),
                        component=row["component"],
                        kind=row["kind"],
                        payload=json.loads(row["payload"]),
                    )
                )
    return out
