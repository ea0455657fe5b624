"""The online store's interface: per-entity tile states plus the materializer's progress.

A store keeps, per feature view, one :class:`~keel.features.tiles.TileState` per entity and
one :class:`Progress` (log offsets, watermarks, late-event count). ``commit`` writes states and
progress in one atomic step — one SQLite transaction, one Redis MULTI/EXEC — so a crash at any
point followed by a restart neither loses nor double-counts an event.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from keel.features.tiles import Layout, TileState, concat, decode_many, empty

__all__ = ["EncodedStore", "OnlineStore", "Progress"]


class Progress(msgspec.Struct, kw_only=True):
    """How far the materializer of one view has come."""

    offsets: dict[int, int] = msgspec.field(default_factory=dict)
    watermarks: dict[int, int] = msgspec.field(default_factory=dict)
    events: int = 0
    late: int = 0
    updated_at: float = 0.0
    fingerprint: str = ""
    #: The identity of the log the offsets are in (:attr:`keel.log.Log.identity`).
    log: str = ""

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, blob: bytes | None) -> Progress:
        return cls() if blob is None else msgspec.json.decode(blob, type=cls)

    def touched(self) -> Progress:
        self.updated_at = time.time()
        return self


class OnlineStore(ABC):
    """Per-view entity states for sub-millisecond reads."""

    url: str
    #: States are kept as objects (not copies), so aggregates computed for one read can be
    #: memoized on them for the next.
    keeps_objects: bool = False

    @abstractmethod
    def read(self, view: str, layout: Layout, keys: Sequence[Any]) -> list[TileState | None]:
        """The state of each key (None for keys never seen)."""

    def read_stacked(
        self, view: str, layout: Layout, keys: Sequence[Any]
    ) -> tuple[np.ndarray, TileState]:
        """The states of ``keys`` stacked: (index into ``keys`` of each row, the rows)."""
        states = self.read(view, layout, keys)
        present = [(i, s) for i, s in enumerate(states) if s is not None and len(s)]
        if not present:
            return np.zeros(0, np.int64), empty(layout, 0)
        owner = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in present])
        return owner, concat([s for _, s in present], layout)

    @abstractmethod
    def commit(self, view: str, states: Mapping[Any, TileState], progress: Progress) -> None:
        """Atomically replace the given keys' states and the view's progress."""

    @abstractmethod
    def progress(self, view: str) -> Progress: ...

    @abstractmethod
    def clear(self, view: str) -> None:
        """Forget every state and the progress of ``view``."""

    @abstractmethod
    def count(self, view: str) -> int:
        """How many entities the view holds."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""


class EncodedStore(OnlineStore):
    """A store that keeps states encoded (SQLite, Redis): it only fetches blobs; decoding —
    one state, or many stacked at once — is shared."""

    @abstractmethod
    def _blobs(self, view: str, keys: Sequence[Any]) -> list[bytes | None]:
        """The encoded state of each key (None for keys never seen)."""

    def read(self, view: str, layout: Layout, keys: Sequence[Any]) -> list[TileState | None]:
        return [None if b is None else TileState.decode(b, layout) for b in self._blobs(view, keys)]

    def read_stacked(
        self, view: str, layout: Layout, keys: Sequence[Any]
    ) -> tuple[np.ndarray, TileState]:
        return decode_many(self._blobs(view, keys), layout)
