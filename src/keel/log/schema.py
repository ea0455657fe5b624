"""Topic definitions and the validation that turns any accepted input into one Arrow table.

A topic declares its fields with short type names::

    Topic("payments", {"ts": "timestamp", "user_id": "int64", "amount": "float64",
                       "note": "string?", "emb": "vector[float32, 384]"},
          event_time="ts", key="user_id", partitions=4)

A trailing ``?`` makes a field nullable; every other field, and always the event time and the
key, must be present and non-null.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.errors import RecordError, ValidationError, did_you_mean

__all__ = ["SCALAR_TYPES", "Topic", "parse_type", "partition_for", "to_table"]

SCALAR_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_VECTOR = re.compile(r"^vector\[\s*(float32|float64)\s*,\s*(\d+)\s*\]$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")


def parse_type(spec: str) -> tuple[pa.DataType, bool]:
    """Parse a type name into an Arrow type and a nullable flag.

    Example
    -------
    >>> parse_type("float64?")
    (DataType(double), True)
    >>> parse_type("vector[float32, 3]")[0]
    FixedSizeListType(fixed_size_list<item: float>[3])
    """
    text = spec.strip()
    nullable = text.endswith("?")
    text = text.rstrip("?").strip()
    if text in SCALAR_TYPES:
        return SCALAR_TYPES[text], nullable
    match = _VECTOR.match(text)
    if match:
        inner = SCALAR_TYPES[match.group(1)]
        size = int(match.group(2))
        if size <= 0:
            raise ValidationError(f"vector type {spec!r} needs a positive size")
        return pa.list_(inner, size), nullable
    raise ValidationError(
        f"unknown field type {spec!r}{did_you_mean(text, SCALAR_TYPES)}; expected one of "
        f"{', '.join(SCALAR_TYPES)} or vector[float32, N] (add '?' for nullable)"
    )


@dataclass(frozen=True, slots=True)
class Topic:
    """A log topic: a named, partitioned, append-only stream with a declared schema.

    Parameters
    ----------
    name
        Letters, digits, ``_``, ``.`` and ``-``.
    fields
        Field name to type name (see :func:`parse_type`), in column order.
    event_time
        The field holding each event's time; must be a ``timestamp`` field.
    key
        Optional field whose hash picks the partition (same key, same partition, in order).
    partitions
        Number of partitions (1 or more).
    retention_ms, retention_bytes
        Optional retention per partition: by age since append, or by stored size.
    """

    name: str
    fields: dict[str, str]
    event_time: str
    key: str | None = None
    partitions: int = 1
    retention_ms: int | None = None
    retention_bytes: int | None = None
    _schema: pa.Schema = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _TOPIC.match(self.name):
            raise ValidationError(
                f"topic name {self.name!r} is invalid: use letters, digits, '_', '.' or '-'"
            )
        if not self.fields:
            raise ValidationError(f"topic {self.name!r} declares no fields")
        arrow_fields = []
        for fname, spec in self.fields.items():
            if not _NAME.match(fname) or fname.startswith("_"):
                raise ValidationError(
                    f"topic {self.name!r}: field name {fname!r} is invalid (an identifier "
                    "not starting with '_')"
                )
            try:
                dtype, nullable = parse_type(spec)
            except ValidationError as exc:
                raise ValidationError(f"topic {self.name!r}, field {fname!r}: {exc}") from None
            if fname in (self.event_time, self.key):
                nullable = False
            arrow_fields.append(pa.field(fname, dtype, nullable=nullable))
        if self.event_time not in self.fields:
            raise ValidationError(
                f"topic {self.name!r}: event_time {self.event_time!r} is not a field"
                f"{did_you_mean(self.event_time, self.fields)}"
            )
        if parse_type(self.fields[self.event_time])[0] != SCALAR_TYPES["timestamp"]:
            raise ValidationError(
                f"topic {self.name!r}: event_time field {self.event_time!r} must have type "
                f"'timestamp', not {self.fields[self.event_time]!r}"
            )
        if self.key is not None:
            if self.key not in self.fields:
                raise ValidationError(
                    f"topic {self.name!r}: key {self.key!r} is not a field"
                    f"{did_you_mean(self.key, self.fields)}"
                )
            key_type = parse_type(self.fields[self.key])[0]
            if key_type not in (pa.int32(), pa.int64(), pa.string()):
                raise ValidationError(
                    f"topic {self.name!r}: key {self.key!r} must be int32, int64 or string"
                )
        if not isinstance(self.partitions, int) or self.partitions < 1:
            raise ValidationError(
                f"topic {self.name!r}: partitions must be a positive integer, "
                f"got {self.partitions!r}"
            )
        for attr in ("retention_ms", "retention_bytes"):
            value = getattr(self, attr)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValidationError(
                    f"topic {self.name!r}: {attr} must be a positive integer, got {value!r}"
                )
        object.__setattr__(self, "_schema", pa.schema(arrow_fields))

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema records are stored with."""
        return self._schema

    def to_json(self) -> bytes:
        return msgspec.json.encode(
            {
                "name": self.name,
                "fields": self.fields,
                "event_time": self.event_time,
                "key": self.key,
                "partitions": self.partitions,
                "retention_ms": self.retention_ms,
                "retention_bytes": self.retention_bytes,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Topic:
        return cls(**msgspec.json.decode(data))


def to_table(topic: Topic, records: Any) -> pa.Table:
    """Validate ``records`` against ``topic`` and return them as a table in its schema.

    Accepts a list of dicts, an Arrow table or record batch, or a pandas DataFrame. Raises
    :class:`RecordError` naming the row and field of the first problem.
    """
    if isinstance(records, pa.RecordBatch):
        records = pa.Table.from_batches([records])
    elif _is_dataframe(records):
        try:
            records = pa.Table.from_pandas(records, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise RecordError(topic.name, None, None, f"cannot read DataFrame: {exc}") from None
    elif isinstance(records, list | tuple):
        return _from_rows(topic, records)
    elif not isinstance(records, pa.Table):
        raise ValidationError(
            f"topic {topic.name!r}: records must be a list of dicts, an Arrow table or record "
            f"batch, or a pandas DataFrame, not {type(records).__name__}"
        )
    return _conform(topic, records)


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns") and hasattr(obj, "iloc")


def _conform(topic: Topic, table: pa.Table) -> pa.Table:
    """Check columns, cast each to its declared type, and refuse nulls where not allowed."""
    schema = topic.schema
    names = set(table.column_names)
    for f in schema:
        if f.name not in names and not f.nullable:
            raise RecordError(
                topic.name,
                0 if table.num_rows else None,
                f.name,
                f"field is missing (expected {topic.fields[f.name]})",
            )
    extra = [n for n in table.column_names if n not in topic.fields]
    if extra:
        raise RecordError(
            topic.name,
            0 if table.num_rows else None,
            extra[0],
            f"unknown field{did_you_mean(extra[0], topic.fields)}; "
            f"the topic's fields are {', '.join(topic.fields)}",
        )
    columns = []
    for f in schema:
        if f.name not in names:  # an absent nullable field is all nulls
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, f.type)]))
            continue
        col = table.column(f.name)
        if col.type != f.type:
            col = _cast(topic, f, col)
        if not f.nullable and col.null_count:
            row = _first_true(pc.is_null(col))
            raise RecordError(
                topic.name, row, f.name, f"value is null (expected {topic.fields[f.name]})"
            )
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _cast(topic: Topic, f: pa.Field, col: pa.ChunkedArray) -> pa.ChunkedArray:
    expected = topic.fields[f.name]
    src = col.type
    if pa.types.is_timestamp(f.type):
        ok = pa.types.is_timestamp(src) or pa.types.is_null(src)
    elif pa.types.is_fixed_size_list(f.type):
        ok = pa.types.is_list(src) or pa.types.is_fixed_size_list(src) or pa.types.is_null(src)
    elif pa.types.is_string(f.type):
        ok = pa.types.is_string(src) or pa.types.is_large_string(src) or pa.types.is_null(src)
    elif pa.types.is_boolean(f.type):
        ok = pa.types.is_boolean(src) or pa.types.is_null(src)
    else:  # numeric: integers widen safely, floats take ints and floats, nothing from strings
        ok = (
            pa.types.is_integer(src)
            or pa.types.is_null(src)
            or (pa.types.is_floating(f.type) and pa.types.is_floating(src))
        )
    if ok:
        try:
            if pa.types.is_timestamp(src) and src.tz is None:
                # Naive timestamps are taken as UTC, like the rest of Keel.
                col = pc.assume_timezone(col, "UTC")
            return col.cast(f.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            row = _first_bad_cast(col, f.type)
            raise RecordError(
                topic.name, row, f.name, f"value does not fit {expected}: {exc}"
            ) from None
    raise RecordError(
        topic.name,
        0 if len(col) else None,
        f.name,
        f"column has type {src}, expected {expected}",
    )


def _first_bad_cast(col: pa.ChunkedArray, dtype: pa.DataType) -> int | None:
    # Only reached on the error path: find the row to name, one value at a time.
    for i, value in enumerate(col):
        try:
            pa.array([value.as_py()], type=col.type).cast(dtype, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return i
    return None


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False)))[0])


def _from_rows(topic: Topic, rows: list[Any] | tuple[Any, ...]) -> pa.Table:
    schema = topic.schema
    wanted = set(topic.fields)
    required = [f.name for f in schema if not f.nullable]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RecordError(topic.name, i, None, f"expected a dict, got {type(row).__name__}")
        keys = row.keys()
        if keys != wanted:
            missing = [n for n in required if n not in keys]
            if missing:
                raise RecordError(
                    topic.name,
                    i,
                    missing[0],
                    f"field is missing (expected {topic.fields[missing[0]]})",
                )
            extra = next((k for k in keys if k not in wanted), None)
            if extra is None:
                continue
            raise RecordError(
                topic.name,
                i,
                str(extra),
                f"unknown field{did_you_mean(str(extra), topic.fields)}; "
                f"the topic's fields are {', '.join(topic.fields)}",
            )
    columns = []
    for f in schema:
        values = [row.get(f.name) for row in rows]
        try:
            arr = pa.array(values, type=f.type, from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            row_i, problem = _first_bad_value(values, f.type)
            raise RecordError(
                topic.name,
                row_i,
                f.name,
                f"{problem} (expected {topic.fields[f.name]})",
            ) from None
        if pa.types.is_timestamp(f.type):
            _check_datetimes(topic, f.name, values)
        columns.append(arr)
    table = pa.Table.from_arrays(columns, schema=schema)
    for f in schema:
        col = table.column(f.name)
        if not f.nullable and col.null_count:
            row = _first_true(pc.is_null(col))
            raise RecordError(
                topic.name, row, f.name, f"value is null (expected {topic.fields[f.name]})"
            )
    return table


def _check_datetimes(topic: Topic, name: str, values: list[Any]) -> None:
    # pyarrow accepts integers for timestamp columns; an event time must be a real time.
    for i, v in enumerate(values):
        if isinstance(v, int | float) and not isinstance(v, bool):
            raise RecordError(
                topic.name,
                i,
                name,
                f"got the number {v!r}, expected a timestamp (a datetime, naive ones are UTC)",
            )


def _first_bad_value(values: list[Any], dtype: pa.DataType) -> tuple[int | None, str]:
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            pa.array([v], type=dtype)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return i, f"got {type(v).__name__} {_short(v)}"
    return None, "values do not fit the type"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def partition_for(topic: Topic, table: pa.Table) -> np.ndarray:
    """The partition of each row: a stable hash of the key, so a key always lands alike.

    Integer keys are mixed with splitmix64 in NumPy; string keys are dictionary-encoded and
    only the distinct values are hashed (CRC-32), so the cost follows distinct keys, not rows.
    Without a key every row goes to partition 0 (callers pick a sticky partition instead).
    """
    n = topic.partitions
    if topic.key is None or n == 1:
        return np.zeros(table.num_rows, dtype=np.int64)
    col = table.column(topic.key).combine_chunks()
    if pa.types.is_integer(col.type):
        return (_splitmix64(col.to_numpy().astype(np.uint64)) % np.uint64(n)).astype(np.int64)
    encoded = pc.dictionary_encode(col)
    distinct = encoded.dictionary.to_pylist()
    hashes = np.fromiter(
        (zlib.crc32(s.encode()) for s in distinct), dtype=np.int64, count=len(distinct)
    )
    return hashes[encoded.indices.to_numpy()] % n


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
