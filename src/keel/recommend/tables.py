"""Collisionless ID tables: one embedding row per user or item ID, never a hashed bucket.

As in Monolith, an ID gets its own row once it has been seen ``min_count`` times (until then it
is a *candidate*, counted but sharing row 0, the cold-start row), and a row unseen for longer
than ``expire_after`` is freed for the next new ID. Two IDs never share a row, so a refresh of
one user's row cannot move another's.

The bookkeeping lives in plain NumPy arrays that the model keeps as buffers (saved with its
weights): ``ids[row]`` (``-1`` free, ``-2`` the cold-start row 0), ``seen[row]`` (µs of the
last interaction) and the candidates ``pending`` (id, count, last seen, attribute).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["COLD", "FREE", "Admitted", "IdRows"]

FREE = -1
COLD = -2


@dataclass(frozen=True, slots=True)
class Admitted:
    """IDs that got a row in one :meth:`IdRows.observe` (aligned arrays)."""

    ids: np.ndarray
    rows: np.ndarray
    attrs: np.ndarray


class IdRows:
    """The ID ↔ row map of one table.

    Example
    -------
    >>> t = IdRows.empty()
    >>> got = t.observe(np.array([7, 7, 9]), np.array([1, 2, 3]), min_count=2)
    >>> got.ids.tolist(), t.rows(np.array([7, 9, 5])).tolist()
    ([7], [1, 0, 0])
    >>> t.pending[:, 0].tolist()  # 9 seen once: a candidate still
    [9]
    """

    def __init__(self, ids: np.ndarray, seen: np.ndarray, pending: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64).copy()
        self.seen = np.asarray(seen, dtype=np.int64).copy()
        self.pending = np.asarray(pending, dtype=np.int64).reshape(-1, 4).copy()
        self._index()

    @classmethod
    def empty(cls) -> IdRows:
        return cls(np.array([COLD]), np.array([0]), np.zeros((0, 4)))

    @classmethod
    def of(cls, ids: np.ndarray, seen: np.ndarray) -> IdRows:
        """A table whose rows 1.. hold ``ids`` (row 0 is the cold-start row)."""
        return cls(np.r_[COLD, ids], np.r_[0, seen], np.zeros((0, 4)))

    def _index(self) -> None:
        # A sorted copy of the live IDs: a batch of lookups is one searchsorted, not a loop
        # over a dict (the training loop looks up hundreds of thousands of IDs).
        live = np.flatnonzero(self.ids >= 0)
        order = np.argsort(self.ids[live], kind="stable")
        self._keys = self.ids[live][order]
        self._rows = live[order]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def live(self) -> np.ndarray:
        """Rows that hold an ID (not free, not the cold-start row)."""
        return np.flatnonzero(self.ids >= 0)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Each ID's row; 0 (the cold-start row) for IDs without one."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self._keys):
            return np.zeros(len(ids), dtype=np.int64)
        at = np.minimum(np.searchsorted(self._keys, ids), len(self._keys) - 1)
        return np.where(self._keys[at] == ids, self._rows[at], 0)

    def observe(
        self,
        ids: np.ndarray,
        ts: np.ndarray,
        *,
        min_count: int,
        attrs: np.ndarray | None = None,
    ) -> Admitted:
        """Count interactions of ``ids`` at times ``ts``: known IDs' rows are marked seen,
        unknown ones counted, and those now seen ``min_count`` times admitted into free rows
        (or new ones at the end). ``attrs`` (e.g. an item's category) travels with an ID."""
        ids = np.asarray(ids, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.int64)
        attrs = np.zeros(len(ids), np.int64) if attrs is None else np.asarray(attrs, np.int64)
        rows = self.rows(ids)
        known = rows > 0
        if known.any():
            np.maximum.at(self.seen, rows[known], ts[known])
        new = ~known
        if not new.any():
            return Admitted(*(np.zeros(0, np.int64) for _ in range(3)))
        uniq, first, counts = np.unique(ids[new], return_index=True, return_counts=True)
        last = np.zeros(len(uniq), np.int64)
        np.maximum.at(last, np.searchsorted(uniq, ids[new]), ts[new])
        attr = attrs[new][first]
        # Merge with the candidates counted before.
        pend = self.pending
        merged_ids = np.r_[pend[:, 0], uniq]
        merged = np.c_[
            merged_ids, np.r_[pend[:, 1], counts], np.r_[pend[:, 2], last], np.r_[pend[:, 3], attr]
        ]
        keys, inverse = np.unique(merged[:, 0], return_inverse=True)
        total = np.zeros(len(keys), np.int64)
        np.add.at(total, inverse, merged[:, 1])
        seen = np.zeros(len(keys), np.int64)
        np.maximum.at(seen, inverse, merged[:, 2])
        attr_k = np.zeros(len(keys), np.int64)
        attr_k[inverse] = merged[:, 3]  # the latest attribute wins
        admit = total >= min_count
        self.pending = np.c_[keys[~admit], total[~admit], seen[~admit], attr_k[~admit]]
        new_ids, new_seen, new_attr = keys[admit], seen[admit], attr_k[admit]
        free = np.flatnonzero(self.ids == FREE)
        take = free[: len(new_ids)]
        extra = len(new_ids) - len(take)
        if extra > 0:
            start = len(self.ids)
            self.ids = np.r_[self.ids, np.full(extra, FREE, np.int64)]
            self.seen = np.r_[self.seen, np.zeros(extra, np.int64)]
            take = np.r_[take, np.arange(start, start + extra)]
        self.ids[take] = new_ids
        self.seen[take] = new_seen
        self._index()
        return Admitted(new_ids, take.astype(np.int64), new_attr)

    def expire(self, now_us: int, after_us: int) -> np.ndarray:
        """Free the rows unseen since ``now_us - after_us`` (and drop such candidates);
        return the freed rows."""
        cutoff = now_us - after_us
        stale = np.flatnonzero((self.ids >= 0) & (self.seen < cutoff))
        self.ids[stale] = FREE
        self.seen[stale] = 0
        if len(self.pending):
            self.pending = self.pending[self.pending[:, 2] >= cutoff]
        self._index()
        return stale
