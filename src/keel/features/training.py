"""Point-in-time training sets, computed by DuckDB over the offline store.

For each label row (entity key, time t) and each feature with window W over tiles of size r,
the value aggregates the entity's events with ``ts <= t`` and
``ts >= (floor(t/r) - W/r + 1) * r`` — exactly the tiles ``k > floor(t/r) - W/r`` that the
online store combines — after dropping late events by the materializer's rule. Nothing from
after t is ever read. Missing values, TTL, defaults and staleness are applied by the same
function as online (:func:`keel.features.tiles.finalize`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from keel.errors import ValidationError, did_you_mean
from keel.features.definitions import Feature, FeatureView
from keel.features.tiles import NEVER, SEQ_BITS, finalize

__all__ = ["TRAINING_SET_KEY", "point_in_time", "table_sha256", "view_events"]

#: The schema-metadata key under which a training set carries how it was built.
TRAINING_SET_KEY = b"keel.training_set"


def table_sha256(table: pa.Table) -> str:
    """A content hash of a table: its columns' types and values in row order (metadata and
    chunking do not count)."""
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def view_events(
    view: FeatureView, history: pa.Table, event_time: str, until_us: int | None = None
) -> pa.Table:
    """The view's source events as the materializer sees them: late ones dropped (by log
    order within each partition), the transform applied, plus ``__ts`` and ``__seq``."""
    con = duckdb.connect()
    con.register("history", history)
    lateness = view.source.lateness_us
    late_free = con.sql(
        f"""
        SELECT * EXCLUDE (__before) FROM (
            SELECT *, epoch_us("{event_time}") AS __ts,
                   max(epoch_us("{event_time}")) OVER (
                       PARTITION BY _partition ORDER BY _offset
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS __before
            FROM history)
        WHERE __before IS NULL OR __ts >= __before - {lateness}
        """
    ).to_arrow_table()
    con.close()
    seq = (late_free.column("_partition").to_numpy().astype(np.int64) << SEQ_BITS) | (
        late_free.column("_offset").to_numpy()
    )
    late_free = late_free.append_column("__seq", pa.array(seq))
    if until_us is not None:
        late_free = late_free.filter(pa.compute.less_equal(late_free["__ts"], until_us))
    base = late_free.drop_columns(["__ts", "__seq"])
    transformed = view.source.apply(base)
    return transformed.append_column("__ts", late_free["__ts"]).append_column(
        "__seq", late_free["__seq"]
    )


def point_in_time(
    view: FeatureView,
    features: list[Feature],
    events: pa.Table,
    keys: pa.Array,
    at_us: np.ndarray,
) -> dict[str, tuple[Any, np.ndarray, np.ndarray]]:
    """Values of ``features`` for each (key, time) row: feature name → (values, staleness_s,
    missing)."""
    n = len(at_us)
    key = view.entity.join_key
    tile = view.tile_us
    big_k = np.floor_divide(at_us, tile)
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    if any(f.fn == "vector_mean" for f in features):
        events = events.append_column("__idx", pa.array(np.arange(events.num_rows)))
    con.register("e", events)
    out: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}
    windows = sorted({f.window_us for f in features}, key=lambda w: -1 if w is None else w)
    for w in windows:
        group = [f for f in features if f.window_us == w]
        start = np.full(n, np.iinfo(np.int64).min // 2, dtype=np.int64)
        if w is not None:
            start = (big_k - w // tile + 1) * tile
        labels = pa.table(
            {"row_id": np.arange(n, dtype=np.int64), "k": keys, "t": at_us, "lo": start}
        )
        con.register("l", labels)
        selects = ["count(e.__ts) AS n", "max(e.__ts) AS newest"]
        for i, f in enumerate(group):
            c = f'e."{f.column}"' if f.column else None
            if f.fn == "count":
                selects.append(f"count({c or 'e.__ts'}) AS f{i}")
            # Float sums in a fixed order (by log position): parallel aggregation would add
            # in a different order on every run, and a rebuilt training set must hash alike.
            elif f.fn == "sum":
                selects.append(f"sum({c}::DOUBLE ORDER BY e.__seq) AS f{i}")
            elif f.fn == "mean":
                selects.append(f"sum({c}::DOUBLE ORDER BY e.__seq) / count({c}) AS f{i}")
            elif f.fn in ("min", "max"):
                selects.append(f"{f.fn}({c}::DOUBLE) AS f{i}")
            elif f.fn == "last":
                cast = "" if _is_text(events.schema.field(f.column).type) else "::DOUBLE"
                selects.append(
                    f"arg_max({c}{cast}, struct_pack(a := e.__ts, b := e.__seq)) "
                    f"FILTER (WHERE {c} IS NOT NULL) AS f{i}"
                )
                selects.append(f"max(e.__ts) FILTER (WHERE {c} IS NOT NULL) AS t{i}")
            elif f.fn == "vector_mean":
                selects.append(f"count({c}) AS f{i}")
        sql = (
            f"SELECT l.row_id, {', '.join(selects)} FROM l LEFT JOIN e "
            f'ON e."{key}" = l.k AND e.__ts <= l.t AND e.__ts >= l.lo '
            "GROUP BY l.row_id ORDER BY l.row_id"
        )
        res = con.sql(sql).to_arrow_table()
        newest = _ints(res["newest"])
        for i, f in enumerate(group):
            col = res[f"f{i}"]
            if f.fn == "last":
                raw = (
                    np.array(col.to_pylist(), dtype=object) if _is_text(col.type) else _floats(col)
                )
                f_newest = _ints(res[f"t{i}"])
            elif f.fn == "vector_mean":
                raw = _vector_mean(con, f, key, events, n)
                f_newest = newest
            elif f.fn == "count":
                raw = _ints(col, fill=0)
                f_newest = newest
            else:
                raw = _floats(col)
                f_newest = newest
            out[f.name] = finalize(view, f, raw, f_newest, at_us)
        con.unregister("l")
    con.close()
    return out


def _vector_mean(
    con: duckdb.DuckDBPyConnection, f: Feature, key: str, events: pa.Table, n: int
) -> np.ndarray:
    # DuckDB finds which events fall in each row's window; NumPy sums their vectors.
    pairs = con.sql(
        f'SELECT l.row_id, e.__idx FROM l JOIN e ON e."{key}" = l.k AND e.__ts <= l.t '
        f'AND e.__ts >= l.lo WHERE e."{f.column}" IS NOT NULL'
    ).to_arrow_table()
    col = events.column(f.column).combine_chunks()
    size = col.type.list_size
    vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, size).astype(np.float64)
    rows = pairs["row_id"].to_numpy()
    idx = pairs["__idx"].to_numpy()
    order = np.lexsort((idx, rows))  # a fixed summation order: the same bits on every run
    rows, idx = rows[order], idx[order]
    total = np.zeros((n, size))
    np.add.at(total, rows, vectors[idx])
    cnt = np.bincount(rows, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / cnt[:, None]
    out[cnt == 0] = np.nan
    return out


def _ints(col: pa.ChunkedArray, fill: int | None = None) -> np.ndarray:
    arr = col.combine_chunks()
    if fill is not None:
        arr = pa.compute.fill_null(arr, fill)
        return arr.to_numpy(zero_copy_only=False).astype(np.int64)
    return pa.compute.fill_null(arr.cast(pa.int64()), NEVER).to_numpy(zero_copy_only=False)


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    return col.combine_chunks().cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def check_labels(labels: pa.Table, keys: list[str], timestamp: str) -> None:
    """Refuse label tables without the needed columns or with naive timestamps."""
    for col in [*keys, timestamp]:
        if col not in labels.column_names:
            raise ValidationError(
                f"the label table has no column {col!r}{did_you_mean(col, labels.column_names)};"
                f" it needs the entity key(s) {', '.join(keys)} and the timestamp {timestamp!r}"
            )
    dtype = labels.schema.field(timestamp).type
    if not pa.types.is_timestamp(dtype):
        raise ValidationError(
            f"label column {timestamp!r} must be a timestamp with a time zone, not {dtype}"
        )
    if dtype.tz is None:
        raise ValidationError(
            f"label column {timestamp!r} has timestamps without a time zone; give them one "
            "(e.g. pandas .dt.tz_localize('UTC')) so 'as of' means one instant"
        )
    if labels.column(timestamp).null_count:
        raise ValidationError(f"label column {timestamp!r} has null timestamps")
