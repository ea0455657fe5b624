"""Generated rows that wait for their time: sessions and fraud bursts outlive the window they
start in, and labels arrive hours to days after their payment."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["Frame", "Timeline", "concat", "select"]

Frame = dict[str, np.ndarray]
"""Columns of equal length by name; always with an int64 ``ts`` (µs since the epoch)."""


class Timeline:
    """Pending rows, kept as a few runs sorted by ``ts``.

    A new run is merged into the one before it while that one is at most twice as long (as
    timsort does), so there are O(log n) runs and taking the rows due before a time costs a
    binary search per run rather than a pass over everything pending.

    Example
    -------
    >>> import numpy as np
    >>> t = Timeline({"ts": np.zeros(0, np.int64)})
    >>> t.add({"ts": np.array([5, 1, 9])})
    >>> t.pop_before(6)["ts"].tolist(), len(t)
    ([1, 5], 1)
    """

    __slots__ = ("_empty", "_runs")

    def __init__(self, empty: Frame, runs: list[Frame] | None = None) -> None:
        self._empty = empty
        self._runs = list(runs or [])

    def __len__(self) -> int:
        return sum(len(run["ts"]) for run in self._runs)

    def copy(self) -> Timeline:
        """An independent timeline holding the same rows (arrays are never changed in place)."""
        return Timeline(self._empty, self._runs)

    def add(self, frame: Frame) -> None:
        if not len(frame["ts"]):
            return
        self._runs.append(_sorted(frame))
        runs = self._runs
        while len(runs) > 1 and len(runs[-2]["ts"]) <= 2 * len(runs[-1]["ts"]):
            last = runs.pop()
            runs[-1] = _sorted(concat([runs[-1], last]))

    def pop_before(self, t: int) -> Frame:
        """Remove and return the rows with ``ts < t``, sorted by ``ts``."""
        taken, kept = [], []
        for run in self._runs:
            k = int(np.searchsorted(run["ts"], t))
            if k:
                taken.append({name: col[:k] for name, col in run.items()})
            if k < len(run["ts"]):
                kept.append({name: col[k:] for name, col in run.items()})
        self._runs = kept
        return _sorted(concat(taken)) if taken else self._empty

    def pop_where(self, due: Callable[[Frame], np.ndarray]) -> Frame:
        """Remove and return the rows where ``due(run)`` is true, sorted by ``ts``."""
        taken, kept = [], []
        for run in self._runs:
            mask = due(run)
            taken.append(select(run, mask))
            if not mask.all():
                kept.append(select(run, ~mask))
        self._runs = kept
        return _sorted(concat(taken)) if taken else self._empty


def concat(frames: list[Frame]) -> Frame:
    if len(frames) == 1:
        return frames[0]
    return {name: np.concatenate([f[name] for f in frames]) for name in frames[0]}


def select(frame: Frame, rows: np.ndarray) -> Frame:
    """The rows picked by a boolean mask or an index array."""
    return {name: col[rows] for name, col in frame.items()}


def _sorted(frame: Frame) -> Frame:
    ts = frame["ts"]
    if len(ts) < 2 or (ts[1:] >= ts[:-1]).all():
        return frame
    # Stable, so rows with equal times keep their order; on runs already sorted it is linear.
    return select(frame, np.argsort(ts, kind="stable"))
