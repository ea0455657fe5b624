"""Materialized windows: per-entity tiles of partial aggregates, combined on read.

An event becomes a one-event tile row; rows of the same entity and tile are combined into
one (sums add, minima take the minimum, the last value is the one with the greatest
``(event time, position)``). A window of W read at time t combines the tiles with
``k > floor(t/tile) - W/tile`` and ``k <= floor(t/tile)`` — the formula the offline training
set uses too. Tiles that no window can reach any more are folded into one *carry* row that
only all-time features (``Last``) read. Everything here is NumPy over all rows at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.errors import ValidationError
from keel.features.definitions import Feature, FeatureView

__all__ = ["CARRY", "Layout", "Result", "TileState"]

CARRY = np.iinfo(np.int64).min  # tile index of the carry row
NEVER = np.iinfo(np.int64).min  # "no value" in timestamp slots
SEQ_BITS = 40  # sequence = partition << 40 | offset: the tie-break for equal event times


@dataclass(slots=True)
class TileState:
    """One entity's tiles in one view, rows sorted by tile index (carry row first)."""

    k: np.ndarray  # int64 (m,)
    ints: np.ndarray  # int64 (m, n_int)
    floats: np.ndarray  # float64 (m, n_float)
    vecs: np.ndarray  # float64 (m, n_vec)
    strs: np.ndarray  # object (m, n_str)
    # (tile index, aggregates) last computed for this state; kept only by in-process stores,
    # whose states are never changed in place.
    memo: Any = None

    def __len__(self) -> int:
        return len(self.k)

    def encode(self) -> bytes:
        return _ENCODER.encode(
            _Wire(
                len(self.k),
                self.k.tobytes(),
                self.ints.tobytes(),
                self.floats.tobytes(),
                self.vecs.tobytes(),
                self.strs.ravel().tolist() if self.strs.size else [],
            )
        )

    @classmethod
    def decode(cls, blob: bytes, layout: Layout) -> TileState:
        w = _DECODER.decode(blob)
        m = w.m
        strs = np.empty((m, layout.n_str), dtype=object)
        if layout.n_str:
            strs[:] = np.array(w.strs, dtype=object).reshape(m, layout.n_str)
        return cls(
            np.frombuffer(w.k, dtype=np.int64),
            np.frombuffer(w.ints, dtype=np.int64).reshape(m, layout.n_int),
            np.frombuffer(w.floats, dtype=np.float64).reshape(m, layout.n_float),
            np.frombuffer(w.vecs, dtype=np.float64).reshape(m, layout.n_vec),
            strs,
        )


def decode_many(blobs: list[bytes | None], layout: Layout) -> tuple[np.ndarray, TileState]:
    """Decode many encoded states at once: (owner index of each row, all rows stacked).

    Each field of all states is joined into one buffer and read with one ``frombuffer``, so
    the cost per state is one msgpack decode."""
    present = [(i, _DECODER.decode(b)) for i, b in enumerate(blobs) if b is not None]
    if not present:
        return np.zeros(0, np.int64), empty(layout, 0)
    ms = np.fromiter((w.m for _, w in present), dtype=np.int64, count=len(present))
    owner = np.repeat(np.fromiter((i for i, _ in present), dtype=np.int64, count=len(present)), ms)
    m = int(ms.sum())
    wires = [w for _, w in present]

    def joined(field: str, dtype: type, width: int) -> np.ndarray:
        buf = b"".join(getattr(w, field) for w in wires)
        return (
            np.frombuffer(buf, dtype=dtype).reshape(m, width)
            if width
            else np.zeros((m, 0), dtype=dtype)
        )

    strs = np.empty((m, layout.n_str), dtype=object)
    if layout.n_str:
        flat = [x for w in wires for x in w.strs]
        strs.ravel()[:] = flat
    k = np.frombuffer(b"".join(w.k for w in wires), dtype=np.int64)
    return owner, TileState(
        k,
        joined("ints", np.int64, layout.n_int),
        joined("floats", np.float64, layout.n_float),
        joined("vecs", np.float64, layout.n_vec),
        strs,
    )


class _Wire(msgspec.Struct, array_like=True):
    m: int
    k: bytes
    ints: bytes
    floats: bytes
    vecs: bytes
    strs: list[str | None]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Wire)


@dataclass
class Result:
    """Feature values for a batch of rows: one array per feature, plus staleness and misses."""

    values: dict[str, Any]
    staleness_s: dict[str, np.ndarray]
    missing: dict[str, np.ndarray]


class Layout:
    """Which slot of a view's tile matrices holds which statistic, and how to combine them."""

    N, MAXTS = 0, 1

    def __init__(self, view: FeatureView, column_types: dict[str, pa.DataType]) -> None:
        self.view = view
        self.tile = view.tile_us
        self.max_tiles = view.max_tiles
        self.keep_carry = any(f.window is None for f in view.features)
        self.types = column_types
        n_int, n_float, n_vec, n_str = 2, 0, 0, 0
        self.cnt: dict[str, int] = {}
        self.sum: dict[str, int] = {}
        self.min: dict[str, int] = {}
        self.max: dict[str, int] = {}
        self.last_ts: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.last_val: dict[str, int] = {}  # slot in floats, or in strs for text columns
        self.vec: dict[str, tuple[int, int]] = {}
        for f in view.features:
            c = f.column
            if c is None:
                continue
            dtype = column_types.get(c)
            if dtype is None:
                raise ValidationError(f"feature view {view.name!r}: no column {c!r}")
            text = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
            vector = pa.types.is_fixed_size_list(dtype)
            needs_number = f.fn in ("sum", "mean", "min", "max")
            if needs_number and (text or vector):
                raise ValidationError(
                    f"feature view {view.name!r}, feature {f.name!r}: {f.fn} needs a numeric "
                    f"column, {c!r} is {dtype}"
                )
            if f.fn == "vector_mean" and not vector:
                raise ValidationError(
                    f"feature view {view.name!r}, feature {f.name!r}: vector_mean needs a "
                    f"vector column, {c!r} is {dtype}"
                )
            if f.fn == "last" and vector:
                raise ValidationError(
                    f"feature view {view.name!r}, feature {f.name!r}: last of a vector column "
                    "is not supported; use vector_mean"
                )
            if f.fn in ("count", "mean", "vector_mean") and c not in self.cnt:
                self.cnt[c] = n_int
                n_int += 1
            if f.fn in ("sum", "mean") and c not in self.sum:
                self.sum[c] = n_float
                n_float += 1
            if f.fn == "min" and c not in self.min:
                self.min[c] = n_float
                n_float += 1
            if f.fn == "max" and c not in self.max:
                self.max[c] = n_float
                n_float += 1
            if f.fn == "last" and c not in self.last_ts:
                self.last_ts[c], self.last_seq[c] = n_int, n_int + 1
                n_int += 2
                if text:
                    self.last_val[c] = n_str
                    n_str += 1
                else:
                    self.last_val[c] = n_float
                    n_float += 1
            if f.fn == "vector_mean" and c not in self.vec:
                size = dtype.list_size
                self.vec[c] = (n_vec, n_vec + size)
                n_vec += size
        self.n_int, self.n_float, self.n_vec, self.n_str = n_int, n_float, n_vec, n_str
        self.text = {c for c in self.last_val if _is_text(column_types[c])}

    # -- building tiles from events ---------------------------------------------------------
    def lift(
        self, events: pa.Table, key: str, event_time: str, seq: np.ndarray
    ) -> tuple[np.ndarray, TileState]:
        """One tile row per event: returns (entity keys, rows)."""
        n = events.num_rows
        ts = events.column(event_time).combine_chunks().cast(pa.int64()).to_numpy()
        ints = np.zeros((n, self.n_int), dtype=np.int64)
        floats = np.zeros((n, self.n_float), dtype=np.float64)
        vecs = np.zeros((n, self.n_vec), dtype=np.float64)
        strs = np.empty((n, self.n_str), dtype=object)
        ints[:, self.N] = 1
        ints[:, self.MAXTS] = ts
        columns = {c: events.column(c).combine_chunks() for c in self._used_columns()}
        for c, col in columns.items():
            valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            if c in self.cnt:
                ints[:, self.cnt[c]] = valid
            if c in self.vec:
                lo, hi = self.vec[c]
                filled = (
                    col.fill_null(pa.scalar([0.0] * (hi - lo), col.type))
                    if (col.null_count)
                    else col
                )
                flat = filled.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
                vecs[:, lo:hi] = flat.reshape(n, hi - lo)
            if c in self.text:
                strs[:, self.last_val[c]] = np.array(col.to_pylist(), dtype=object)
                numbers = None
            elif c in self.sum or c in self.min or c in self.max or c in self.last_val:
                numbers = _as_float(col)
            else:
                numbers = None
            if numbers is not None:
                if c in self.sum:
                    floats[:, self.sum[c]] = np.where(valid, numbers, 0.0)
                if c in self.min:
                    floats[:, self.min[c]] = np.where(valid, numbers, np.inf)
                if c in self.max:
                    floats[:, self.max[c]] = np.where(valid, numbers, -np.inf)
                if c in self.last_val:
                    floats[:, self.last_val[c]] = numbers
            if c in self.last_ts:
                ints[:, self.last_ts[c]] = np.where(valid, ts, NEVER)
                ints[:, self.last_seq[c]] = seq
        keys = events.column(key).combine_chunks().to_numpy(zero_copy_only=False)
        k = np.floor_divide(ts, self.tile)
        return keys, TileState(k, ints, floats, vecs, strs)

    def _used_columns(self) -> list[str]:
        return [c for c in self.view.columns()]

    # -- combining ------------------------------------------------------------------------
    def combine(self, owner: np.ndarray, rows: TileState) -> tuple[np.ndarray, TileState]:
        """Merge rows with the same (owner, tile). Returns (owner per row, merged rows),
        sorted by owner then tile."""
        order = np.lexsort((rows.k, owner))
        owner = owner[order]
        rows = _take(rows, order)
        if len(owner) == 0:
            return owner, rows
        new_group = np.empty(len(owner), dtype=bool)
        new_group[0] = True
        new_group[1:] = (owner[1:] != owner[:-1]) | (rows.k[1:] != rows.k[:-1])
        starts = np.flatnonzero(new_group)
        if len(starts) == len(owner):
            return owner, rows
        group = np.cumsum(new_group) - 1
        ints = np.empty((len(starts), self.n_int), dtype=np.int64)
        floats = np.empty((len(starts), self.n_float), dtype=np.float64)
        ints[:, self.N] = np.add.reduceat(rows.ints[:, self.N], starts)
        ints[:, self.MAXTS] = np.maximum.reduceat(rows.ints[:, self.MAXTS], starts)
        for slot in self.cnt.values():
            ints[:, slot] = np.add.reduceat(rows.ints[:, slot], starts)
        for slot in self.sum.values():
            floats[:, slot] = np.add.reduceat(rows.floats[:, slot], starts)
        for slot in self.min.values():
            floats[:, slot] = np.minimum.reduceat(rows.floats[:, slot], starts)
        for slot in self.max.values():
            floats[:, slot] = np.maximum.reduceat(rows.floats[:, slot], starts)
        vecs = (
            np.add.reduceat(rows.vecs, starts, axis=0) if self.n_vec else np.zeros((len(starts), 0))
        )
        strs = np.empty((len(starts), self.n_str), dtype=object)
        for c, ts_slot in self.last_ts.items():
            winner = _last_per_group(group, rows.ints[:, ts_slot], rows.ints[:, self.last_seq[c]])
            ints[:, ts_slot] = rows.ints[winner, ts_slot]
            ints[:, self.last_seq[c]] = rows.ints[winner, self.last_seq[c]]
            if c in self.text:
                strs[:, self.last_val[c]] = rows.strs[winner, self.last_val[c]]
            else:
                floats[:, self.last_val[c]] = rows.floats[winner, self.last_val[c]]
        merged = TileState(rows.k[starts], ints, floats, vecs, strs)
        return owner[starts], merged

    def prune(self, owner: np.ndarray, rows: TileState) -> tuple[np.ndarray, TileState]:
        """Fold tiles no window can reach (older than the owner's newest tile minus the
        longest window) into the carry row, or drop them when no feature reads all time."""
        if len(owner) == 0:
            return owner, rows
        newest = _group_max(owner, rows.k)
        stale = (rows.k <= newest - self.max_tiles) & (rows.k != CARRY)
        if not stale.any():
            return owner, rows
        if not self.keep_carry:
            keep = ~stale
            return owner[keep], _take(rows, keep)
        k = rows.k.copy()
        k[stale] = CARRY
        return self.combine(owner, TileState(k, rows.ints, rows.floats, rows.vecs, rows.strs))


def finalize(
    view: FeatureView, f: Feature, raw: Any, newest: np.ndarray, at_us: np.ndarray
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Apply TTL, the missing flag, the default and staleness — shared by offline and online."""
    missing = newest == NEVER
    ttl = view.ttl_us
    if ttl is not None:
        missing |= (at_us - newest) > ttl
    staleness = np.where(missing, np.nan, (at_us - newest) / 1e6)
    if f.fn == "vector_mean":
        out = np.array(raw, dtype=np.float64, copy=True)
        if missing.any():
            out[missing] = np.nan if f.default is None else f.default
        return out, staleness, missing
    if isinstance(raw, np.ndarray) and raw.dtype == object:
        out = raw.copy()
        out[missing] = f.default
        return out, staleness, missing
    out = np.array(raw, dtype=np.int64 if f.fn == "count" else np.float64, copy=True)
    if missing.any():
        if f.default is None:
            out = out.astype(np.float64)
            out[missing] = np.nan
        else:
            out[missing] = f.default
    return out, staleness, missing


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _as_float(col: pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    filled = pc.fill_null(col.cast(pa.float64()), 0.0) if col.null_count else col.cast(pa.float64())
    return filled.to_numpy(zero_copy_only=False)


def _take(rows: TileState, index: np.ndarray) -> TileState:
    return TileState(
        rows.k[index], rows.ints[index], rows.floats[index], rows.vecs[index], rows.strs[index]
    )


def concat(states: list[TileState], layout: Layout) -> TileState:
    if not states:
        return empty(layout, 0)
    return TileState(
        np.concatenate([s.k for s in states]),
        np.concatenate([s.ints for s in states]),
        np.concatenate([s.floats for s in states]),
        np.concatenate([s.vecs for s in states]),
        np.concatenate([s.strs for s in states]),
    )


def empty(layout: Layout, m: int) -> TileState:
    return TileState(
        np.zeros(m, np.int64),
        np.zeros((m, layout.n_int), np.int64),
        np.zeros((m, layout.n_float)),
        np.zeros((m, layout.n_vec)),
        np.empty((m, layout.n_str), dtype=object),
    )


def _last_per_group(group: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Row index of the greatest (ts, seq) in each group (``group`` sorted ascending).

    Most groups hold one row; only rows of larger groups are sorted."""
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    sizes = np.diff(np.r_[starts, len(group)])
    winner = starts.copy()
    multi = sizes > 1
    if multi.any():
        idx = np.flatnonzero(np.repeat(multi, sizes))
        g = group[idx]
        order = np.lexsort((seq[idx], ts[idx], g))
        ends = np.flatnonzero(np.r_[g[order][1:] != g[order][:-1], True])
        winner[multi] = idx[order[ends]]
    return winner


def _group_max(owner: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row: the maximum of ``values`` over the rows of the same owner."""
    uniq, inverse = np.unique(owner, return_inverse=True)
    out = np.full(len(uniq), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(out, inverse, values)
    return out[inverse]
