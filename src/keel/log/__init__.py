"""The event log: partitioned, append-only topics with offsets and consumer groups.

Open one by URL with :func:`open_log`: ``sqlite:///path/log.db`` (embedded, the default) or
``redis://host:port/db?prefix=keel`` (Redis Streams).
"""

from __future__ import annotations

from keel.log.base import OFFSET, PARTITION, Appended, Consumer, Log, TopicStats
from keel.log.factory import open_log
from keel.log.schema import Topic

__all__ = [
    "OFFSET",
    "PARTITION",
    "Appended",
    "Consumer",
    "Log",
    "Topic",
    "TopicStats",
    "open_log",
]
