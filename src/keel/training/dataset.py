"""A declared model's point-in-time training set: its examples joined with their labels
(only those settled by the training time), their features as of each prediction time, split
in time into a training part and a later holdout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.errors import NotFoundError, ValidationError, did_you_mean
from keel.features import FeatureStore
from keel.features.training import table_sha256
from keel.log import Log
from keel.training.definitions import Model

__all__ = [
    "TrainingData",
    "build_training_data",
    "check_model",
    "matrix",
    "micros",
    "read_topic",
]

TS = "ts"  # the prediction-time column of a model's training set
US = 1_000_000


@dataclass(frozen=True)
class TrainingData:
    """The training set (with its lineage metadata) and its numeric view for a trainer."""

    table: pa.Table
    names: list[str]
    x: np.ndarray
    y: np.ndarray
    ts_us: np.ndarray
    cut_us: int
    until: datetime

    @cached_property
    def sha256(self) -> str:
        """The training set's content hash (what its checkpoints are tied to)."""
        return table_sha256(self.table)

    @property
    def train(self) -> np.ndarray:
        return self.ts_us < self.cut_us

    @property
    def holdout(self) -> np.ndarray:
        return self.ts_us >= self.cut_us

    def time_range(self, mask: np.ndarray) -> list[str]:
        ts = self.ts_us[mask]
        return [_iso(int(ts.min())), _iso(int(ts.max()))] if len(ts) else []


def read_topic(log: Log, topic: str) -> pa.Table:
    """Every record of ``topic`` now in the log."""
    ends = log.end_offsets(topic)
    parts = [log.read(topic, p, 0, max(end, 1)) for p, end in enumerate(ends)]
    return pa.concat_tables(parts) if parts else log.topic(topic).schema.empty_table()


def check_model(model: Model, log: Log, features: FeatureStore) -> None:
    """Everything a declaration names exists and fits: views and features, the label topic
    and column, the examples' fields, the trainer's parameters. Raises naming what is
    wrong."""
    known = [t.name for t in log.topics()]
    label = model.label
    for what, topic in (("label topic", label.topic), ("examples topic", label.examples)):
        if topic is not None and topic not in known:
            raise ValidationError(
                f"model {model.name!r}: {what} {topic!r} is not in the log"
                f"{did_you_mean(topic, known)}; declare it in topics and run keel apply"
            )
    label_fields = list(log.topic(label.topic).fields)
    if label.column not in label_fields:
        raise ValidationError(
            f"model {model.name!r}: label topic {label.topic!r} has no column "
            f"{label.column!r}{did_you_mean(label.column, label_fields)}"
        )
    try:
        resolved = features.resolve(model.features)
    except (NotFoundError, ValidationError) as exc:
        raise ValidationError(f"model {model.name!r}: {exc}") from None
    if label.id is not None and label.examples is not None:
        if label.id not in label_fields:
            raise ValidationError(
                f"model {model.name!r}: label topic {label.topic!r} has no id column "
                f"{label.id!r}{did_you_mean(label.id, label_fields)}"
            )
        example_fields = list(log.topic(label.examples).fields)
        needed = [label.id, *(v.entity.join_key for v, _ in resolved), *model.inputs]
        where = f"examples topic {label.examples!r}"
    else:
        example_fields = label_fields
        needed = [*(v.entity.join_key for v, _ in resolved), *model.inputs]
        where = f"label topic {label.topic!r}"
    for col in needed:
        if col not in example_fields:
            raise ValidationError(
                f"model {model.name!r}: {where} has no field {col!r}"
                f"{did_you_mean(col, example_fields)} (needed as an entity key, id or input)"
            )
    model.trainer.validate()


def build_training_data(
    model: Model,
    log: Log,
    features: FeatureStore,
    *,
    until: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingData:
    """The model's training set as of ``until`` (default: now); ``progress(done, 4)``
    after each step: labels joined, log landed, features joined, checked."""

    def step(done: int) -> None:
        if progress is not None:
            progress(done, 4)

    check_model(model, log, features)
    until = (until or datetime.now(UTC)).astimezone(UTC)
    keys = list(dict.fromkeys(v.entity.join_key for v, _ in features.resolve(model.features)))
    rows = _labelled(model, log, until, keys)
    step(1)
    features.land()
    step(2)
    table = features.training_set(rows, model.features, timestamp=TS, land=False)
    step(3)
    names = _feature_columns(model, table)
    x = matrix(table, names) if names else np.zeros((table.num_rows, 0))
    missing = [n for j, n in enumerate(names) if np.isnan(x[:, j]).all()]
    if missing and len(missing) == len(names):
        raise ValidationError(
            f"model {model.name!r}: every feature is missing for every row ({', '.join(missing)})"
            "; has the log been landed and the views backfilled (keel features backfill)?"
        )
    if missing:
        raise ValidationError(
            f"model {model.name!r}: feature(s) {', '.join(missing)} are missing for every one of "
            f"{table.num_rows:,} rows; check the view's source and the entity key"
        )
    y = _labels(model, table)
    ts = micros(table, TS)
    horizon = int(until.timestamp() * US) - int(model.label.settle.total_seconds() * US)
    cut = horizon - int(model.split.holdout.total_seconds() * US)
    data = TrainingData(table, names, x, y, ts, cut, until)
    for part, mask in (("training part", data.train), ("holdout", data.holdout)):
        if not mask.any():
            raise ValidationError(
                f"model {model.name!r}: the {part} has no rows — the {table.num_rows:,} settled "
                f"rows span {_span(ts)}, the holdout is {_iso(cut)[:16]} → "
                f"{_iso(horizon)[:16]} (the last {model.split.holdout} before the settle "
                "horizon); change the holdout or train as of another time"
            )
    if model.trainer.binary:
        for part, mask in (("training part", data.train), ("holdout", data.holdout)):
            classes = np.unique(y[mask])
            if len(classes) < 2:
                raise ValidationError(
                    f"model {model.name!r}: the {part} holds a single class "
                    f"({model.label.column} = {classes[0]:g} in all {int(mask.sum()):,} rows); "
                    "a two-class model needs both — train over a longer range"
                )
    step(4)
    return data


def micros(table: pa.Table, column: str) -> np.ndarray:
    """A timestamp column as microseconds since the epoch (UTC)."""
    return _micros(table, column).to_numpy()


def matrix(table: pa.Table, names: list[str]) -> np.ndarray:
    """The named columns of a training set as one float matrix (missing values NaN)."""
    return np.column_stack([_float(table.column(c)) for c in names])


def _labelled(model: Model, log: Log, until: datetime, keys: list[str]) -> pa.Table:
    """Example rows with their label, known by ``until`` and settled."""
    label = model.label
    until_us = int(until.timestamp() * US)
    labels = read_topic(log, label.topic)
    label_time = log.topic(label.topic).event_time
    total = labels.num_rows
    # Where the history starts, for the warm-up: the first example the log holds.
    history, history_time = labels, label_time
    labels = labels.filter(pc.less_equal(_micros(labels, label_time), until_us))
    horizon = until_us - int(label.settle.total_seconds() * US)
    if label.id is not None and label.examples is not None:
        examples = read_topic(log, label.examples)
        example_time = label.time or log.topic(label.examples).event_time
        history, history_time = examples, example_time
        keep = [label.id, *keys, *model.inputs]
        examples = examples.select(list(dict.fromkeys([example_time, *keep])))
        # A label sent twice grades once: the latest known by ``until`` wins.
        latest = labels.select([label.id, label_time, label.column]).sort_by(
            [(label.id, "ascending"), (label_time, "descending")]
        )
        ids = latest.column(label.id).to_numpy()
        first = np.r_[True, ids[1:] != ids[:-1]][: len(ids)]
        latest = latest.filter(pa.array(first)).select([label.id, label.column])
        rows = examples.join(latest, label.id, join_type="inner")
        ts_col = example_time
    else:
        rows = labels.select(list(dict.fromkeys([label_time, *keys, *model.inputs, label.column])))
        ts_col = label_time
    rows = rows.filter(pc.less_equal(_micros(rows, ts_col), horizon))
    if model.split.warmup.total_seconds() > 0 and rows.num_rows:
        first_event = pc.min(_micros(history, history_time)).as_py()
        start = first_event + int(model.split.warmup.total_seconds() * US)
        rows = rows.filter(pc.greater_equal(_micros(rows, ts_col), start))
    if model.split.window is not None:
        cut = horizon - int(model.split.holdout.total_seconds() * US)
        start = cut - int(model.split.window.total_seconds() * US)
        rows = rows.filter(pc.greater_equal(_micros(rows, ts_col), start))
    if ts_col != TS:
        rows = rows.rename_columns([TS if c == ts_col else c for c in rows.column_names])
    rows = rows.sort_by([(TS, "ascending")] + ([(label.id, "ascending")] if label.id else []))
    if rows.num_rows == 0:
        raise ValidationError(
            f"model {model.name!r}: no labelled rows to train on as of {until:%Y-%m-%d %H:%M} "
            f"UTC — {label.topic!r} holds {total:,} labels, {labels.num_rows:,} known by then; "
            f"examples must be older than the label settle time ({label.settle}) and past the "
            f"warm-up ({model.split.warmup})"
        )
    return rows


def _labels(model: Model, table: pa.Table) -> np.ndarray:
    col = table.column(model.label.column)
    what = f"model {model.name!r}: label column {model.label.column!r}"
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            col = pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValidationError(f"{what} holds values that are not numbers: {exc}") from None
    elif not (
        pa.types.is_boolean(col.type)
        or pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
    ):
        raise ValidationError(f"{what} has type {col.type}; expected a boolean or a number")
    y = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        where = ""
        if model.label.id is not None:
            where = f" (first at {model.label.id} {table.column(model.label.id)[int(bad[0])]})"
        raise ValidationError(
            f"{what} has {len(bad):,} missing or NaN values of {len(y):,}{where}; fix or drop "
            "those labels"
        )
    if model.trainer.binary and not np.isin(y, (0.0, 1.0)).all():
        odd = y[~np.isin(y, (0.0, 1.0))][0]
        raise ValidationError(
            f"{what} must be 0/1 for a two-class trainer, found {odd:g}; use a regression "
            "objective for numeric labels"
        )
    return y


def _feature_columns(model: Model, table: pa.Table) -> list[str]:
    features = [
        f.name
        for f in table.schema
        if "__" in f.name
        and (
            pa.types.is_integer(f.type)
            or pa.types.is_floating(f.type)
            or pa.types.is_boolean(f.type)
        )
    ]
    for name in model.inputs:
        dtype = table.schema.field(name).type
        if not (
            pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)
        ):
            raise ValidationError(
                f"model {model.name!r}: input {name!r} has type {dtype}; inputs must be numbers"
            )
    return [*features, *model.inputs]


def _micros(table: pa.Table, column: str) -> pa.ChunkedArray:
    return table.column(column).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())


def _float(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    if pa.types.is_boolean(arr.type):
        arr = arr.cast(pa.int8())
    return arr.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / US, UTC).isoformat()


def _span(ts: np.ndarray) -> str:
    return f"{_iso(int(ts.min()))[:16]} → {_iso(int(ts.max()))[:16]}" if len(ts) else "nothing"
