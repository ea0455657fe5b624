"""The prediction log's layout, shared by the server that writes it and the monitor that
reads it: one topic per route, ``keel.predictions.<route>``, one record per predicted row.

Columns: ``ts`` (when it was served), ``request_id`` (what outcomes join on), ``version``,
``latency_ms``, ``key__<join key>`` per joined entity (as text), then the model's inputs exactly as
served (one column per feature, or the tensors), ``output__<name>`` per output, and
``stale__<feature>`` (seconds) per joined feature.
"""

from __future__ import annotations

from dataclasses import dataclass

from keel.log import Topic

__all__ = [
    "KEY_PREFIX",
    "META",
    "OUTPUT_PREFIX",
    "STALE_PREFIX",
    "Columns",
    "prediction_topic",
    "topic_name",
]

KEY_PREFIX = "key__"
OUTPUT_PREFIX = "output__"
STALE_PREFIX = "stale__"
META = ("ts", "request_id", "version", "latency_ms")


def topic_name(route: str) -> str:
    return f"keel.predictions.{route}"


@dataclass(frozen=True)
class Columns:
    """What one route's records hold besides the metadata."""

    features: list[str]  # a feature model's input, one column per feature
    tensors: dict[str, str]  # a tensor model's inputs: name -> field type
    outputs: dict[str, str]  # output name -> field type
    stale: list[str]  # joined features whose staleness is logged
    keys: list[str]  # the joined entities' keys, in the route's order


def prediction_topic(route: str, columns: Columns) -> Topic:
    """The topic a route's predictions are logged on."""
    fields = {
        "ts": "timestamp",
        "request_id": "string",
        "version": "string",
        "latency_ms": "float64",
    }
    fields.update({KEY_PREFIX + k: "string?" for k in columns.keys})
    fields.update({name: "float64?" for name in columns.features})
    fields.update(columns.tensors)
    fields.update({OUTPUT_PREFIX + name: t for name, t in columns.outputs.items()})
    fields.update({STALE_PREFIX + name: "float64?" for name in columns.stale})
    return Topic(topic_name(route), fields, event_time="ts", retention_ms=30 * 86_400_000)
