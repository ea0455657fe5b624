"""Reading tiles: every requested feature of a batch of keys in a fixed number of NumPy calls.

A :class:`Plan` is built once per (view, feature list). For a batch it marks which tile rows
fall in each distinct window, reduces all statistics of all windows per key at once
(``reduceat`` over the keys' contiguous rows), then picks each feature's column and applies
missing/TTL/defaults/staleness to all numeric features together. The cost grows with the
number of tile rows, not with the number of features times keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.features.definitions import Feature
from keel.features.tiles import NEVER, Layout, Result, TileState, finalize

__all__ = ["Plan", "Raw"]


@dataclass(slots=True)
class Raw:
    """Aggregates of a batch before finishing: numeric features as an (n, F) matrix with the
    newest event time behind each, the rest (text, vectors) per feature."""

    num: np.ndarray
    newest: np.ndarray
    other: dict[str, tuple[np.ndarray, np.ndarray]]


class Plan:
    """How to compute ``features`` of ``layout``'s view from stacked tile rows."""

    def __init__(self, layout: Layout, features: list[Feature]) -> None:
        self.layout = layout
        self.features = features
        tile = layout.tile
        self.windows: list[int | None] = []
        self.wi: list[int] = []
        for f in features:
            w = None if f.window_us is None else f.window_us // tile
            if w not in self.windows:
                self.windows.append(w)
            self.wi.append(self.windows.index(w))
        lo = np.array([np.iinfo(np.int64).min if w is None else w for w in self.windows])
        self._span = lo  # a row is in window w when k > K - w (always, for all-time)
        self._all_time = np.array([w is None for w in self.windows])
        self.cnt_slots = [layout.N, *layout.cnt.values()]
        self.sum_slots = list(layout.sum.values())
        self.min_slots = list(layout.min.values())
        self.max_slots = list(layout.max.values())
        self.numeric = [
            i
            for i, f in enumerate(features)
            if f.fn != "vector_mean" and not (f.fn == "last" and f.column in layout.text)
        ]
        self.defaults = np.array(
            [
                np.nan if features[i].default is None else float(features[i].default)
                for i in self.numeric
            ]
        )
        self.int_out = [
            features[i].fn == "count" and features[i].default is not None for i in self.numeric
        ]
        self.ttl = layout.view.ttl_us
        self.by_name = {f.name: f for f in features}
        self.other_names = [f.name for i, f in enumerate(features) if i not in self.numeric]

    def evaluate(self, owner: np.ndarray, rows: TileState, n: int, at_us: np.ndarray) -> Result:
        """Values for ``n`` keys; ``owner`` (sorted) maps each row to its key."""
        return self.finish(
            self.compute(owner, rows, n, np.floor_divide(at_us, self.layout.tile)), at_us
        )

    def compute(self, owner: np.ndarray, rows: TileState, n: int, big_k: np.ndarray) -> Raw:
        """The aggregates before missing/TTL/defaults: they depend on the read time only
        through its tile ``big_k``, so they can be kept and reused within a tile."""
        lay = self.layout
        m = len(owner)
        # owner is sorted: each key's rows are contiguous
        starts = (
            np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if m else np.zeros(0, np.int64)
        )
        present = owner[starts]
        row_k = big_k[owner][:, None]
        k = rows.k[:, None]
        inw = (k <= row_k) & (
            self._all_time | (k > row_k - np.where(self._all_time, 0, self._span))
        )
        p = len(present)

        def seg(ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
            return ufunc.reduceat(values, starts, axis=0) if p else values[:0]

        counts = seg(np.add, inw[:, :, None] * rows.ints[:, None, self.cnt_slots])
        newest = seg(np.maximum, np.where(inw, rows.ints[:, None, lay.MAXTS], NEVER))
        sums = (
            seg(np.add, inw[:, :, None] * rows.floats[:, None, self.sum_slots])
            if self.sum_slots
            else None
        )
        mins = (
            seg(np.minimum, np.where(inw[:, :, None], rows.floats[:, None, self.min_slots], np.inf))
            if self.min_slots
            else None
        )
        maxs = (
            seg(
                np.maximum, np.where(inw[:, :, None], rows.floats[:, None, self.max_slots], -np.inf)
            )
            if self.max_slots
            else None
        )
        lasts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        index = np.arange(m)[:, None]
        for name, ts_slot in lay.last_ts.items():
            qual = inw & (rows.ints[:, None, ts_slot] != NEVER)
            idx = seg(np.maximum, np.where(qual, index, -1))  # the newest tile wins
            lasts[name] = (idx, idx >= 0)

        raw = np.full((n, len(self.numeric)), np.nan)
        new = np.full((n, len(self.numeric)), NEVER, dtype=np.int64)
        columns, newest_cols = [], []
        other: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for j, f in enumerate(self.features):
            w = self.wi[j]
            if f.column is None:  # only a count of events has no column (see Aggregate)
                columns.append(counts[:, w, self.cnt_slots.index(lay.N)].astype(np.float64))
                newest_cols.append(newest[:, w])
                continue
            c = f.column
            if f.fn == "last":
                idx, has = lasts[c]
                safe = np.where(has, idx, 0)
                f_new = (
                    np.where(has[:, w], rows.ints[safe[:, w], lay.last_ts[c]], NEVER)
                    if p
                    else newest[:, w]
                )
                if c in lay.text:
                    out = np.full(n, None, dtype=object)
                    nw = np.full(n, NEVER, dtype=np.int64)
                    got = rows.strs[safe[:, w], lay.last_val[c]] if p else np.zeros(0, object)
                    # np.where takes None as an object scalar; numpy's stubs only list arrays.
                    out[present] = np.where(has[:, w], got, None) if p else got  # type: ignore[arg-type]
                    nw[present] = f_new
                    other[f.name] = (out, nw)
                    continue
                col = (
                    np.where(has[:, w], rows.floats[safe[:, w], lay.last_val[c]], np.nan)
                    if p
                    else newest[:, w].astype(np.float64)
                )
                columns.append(col)
                newest_cols.append(f_new)
                continue
            if f.fn == "vector_mean":
                lo, hi = lay.vec[c]
                total = seg(np.add, inw[:, w, None] * rows.vecs[:, lo:hi])
                cnt = counts[:, w, self.cnt_slots.index(lay.cnt[c])]
                out = np.full((n, hi - lo), np.nan)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[present] = np.where(cnt[:, None] > 0, total / cnt[:, None], np.nan)
                nw = np.full(n, NEVER, dtype=np.int64)
                nw[present] = newest[:, w]
                other[f.name] = (out, nw)
                continue
            if f.fn == "count":
                col = counts[:, w, self.cnt_slots.index(lay.cnt[c])].astype(np.float64)
            elif f.fn == "sum":
                assert sums is not None  # a sum feature gives the layout a sum slot
                col = sums[:, w, self.sum_slots.index(lay.sum[c])]
            elif f.fn == "mean":
                assert sums is not None
                cnt = counts[:, w, self.cnt_slots.index(lay.cnt[c])]
                with np.errstate(invalid="ignore", divide="ignore"):
                    col = np.where(
                        cnt > 0,
                        sums[:, w, self.sum_slots.index(lay.sum[c])] / np.maximum(cnt, 1),
                        np.nan,
                    )
            elif f.fn == "min":
                assert mins is not None
                col = mins[:, w, self.min_slots.index(lay.min[c])]
                col = np.where(np.isinf(col), np.nan, col)
            else:  # max
                assert maxs is not None
                col = maxs[:, w, self.max_slots.index(lay.max[c])]
                col = np.where(np.isinf(col), np.nan, col)
            columns.append(col)
            newest_cols.append(newest[:, w])
        if self.numeric and p:
            raw[present] = np.stack(columns, axis=1)
            new[present] = np.stack(newest_cols, axis=1)
        return Raw(raw, new, other)

    def finish(self, raw: Raw, at_us: np.ndarray) -> Result:
        """Apply missing/TTL/defaults and staleness at the read time."""
        values: dict[str, Any] = {}
        stale: dict[str, np.ndarray] = {}
        missing: dict[str, np.ndarray] = {}
        if self.numeric:
            self._finalize_numeric(raw.num, raw.newest, at_us, values, stale, missing)
        for name, (out, nw) in raw.other.items():
            f = self.by_name[name]
            values[name], stale[name], missing[name] = finalize(self.layout.view, f, out, nw, at_us)
        return Result(values, stale, missing)

    def gather(self, picks: list[tuple[Raw, int] | None]) -> Raw:
        """Rows of earlier batch results, one per key (None: an unknown key), as one batch."""
        n = len(picks)
        if n == 1 and picks[0] is not None:
            raw, i = picks[0]
            return Raw(
                raw.num[i : i + 1],
                raw.newest[i : i + 1],
                {k: (v[i : i + 1], t[i : i + 1]) for k, (v, t) in raw.other.items()},
            )
        num = np.full((n, len(self.numeric)), np.nan)
        new = np.full((n, len(self.numeric)), NEVER, dtype=np.int64)
        other: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in self.other_names:
            f = self.by_name[name]
            if f.fn == "vector_mean":
                assert f.column is not None  # Aggregate requires a column but for counts
                lo, hi = self.layout.vec[f.column]
                other[name] = (np.full((n, hi - lo), np.nan), np.full(n, NEVER, np.int64))
            else:
                other[name] = (np.full(n, None, dtype=object), np.full(n, NEVER, np.int64))
        groups: dict[int, tuple[Raw, list[int], list[int]]] = {}
        for pos, pick in enumerate(picks):
            if pick is not None:
                entry = groups.setdefault(id(pick[0]), (pick[0], [], []))
                entry[1].append(pos)
                entry[2].append(pick[1])
        for raw, positions, rows in groups.values():
            num[positions] = raw.num[rows]
            new[positions] = raw.newest[rows]
            for name, (v, t) in raw.other.items():
                other[name][0][positions] = v[rows]
                other[name][1][positions] = t[rows]
        return Raw(num, new, other)

    def _finalize_numeric(
        self,
        raw: np.ndarray,
        newest: np.ndarray,
        at_us: np.ndarray,
        values: dict[str, Any],
        stale: dict[str, np.ndarray],
        missing: dict[str, np.ndarray],
    ) -> None:
        # The same rules as tiles.finalize, for all numeric features at once.
        at = at_us[:, None]
        miss = newest == NEVER
        if self.ttl is not None:
            miss |= (at - newest) > self.ttl
        staleness = np.where(miss, np.nan, (at - newest) / 1e6)
        out = np.where(miss, self.defaults, raw)
        for j, i in enumerate(self.numeric):
            name = self.features[i].name
            values[name] = out[:, j].astype(np.int64) if self.int_out[j] else out[:, j]
            stale[name] = staleness[:, j]
            missing[name] = miss[:, j]
