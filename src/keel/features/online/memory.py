"""The in-process online store (``memory://``): dicts of decoded states, rebuilt from the log.

Its progress lives in the same process, so a new process starts from offset 0 and rebuilds.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from keel.features.online.base import OnlineStore, Progress
from keel.features.tiles import Layout, TileState

__all__ = ["MemoryStore"]


class MemoryStore(OnlineStore):
    keeps_objects = True

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._states: dict[str, dict[Any, TileState]] = {}
        self._progress: dict[str, Progress] = {}
        self._lock = threading.Lock()

    def read(self, view: str, layout: Layout, keys: Sequence[Any]) -> list[TileState | None]:
        states = self._states.get(view, {})
        return [states.get(k) for k in keys]

    def commit(self, view: str, states: Mapping[Any, TileState], progress: Progress) -> None:
        with self._lock:
            # Replace the dict entries, never mutate a state in place: readers holding the
            # old object keep a consistent view.
            self._states.setdefault(view, {}).update(states)
            self._progress[view] = _copy(progress)

    def progress(self, view: str) -> Progress:
        return _copy(self._progress.get(view, Progress()))

    def clear(self, view: str) -> None:
        with self._lock:
            self._states.pop(view, None)
            self._progress.pop(view, None)

    def count(self, view: str) -> int:
        return len(self._states.get(view, {}))


def _copy(p: Progress) -> Progress:
    return Progress.decode(p.encode())
