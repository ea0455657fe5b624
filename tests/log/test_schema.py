from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from keel.errors import RecordError, ValidationError
from keel.log.schema import Topic, parse_type, partition_for, to_table


def test_parse_type() -> None:
    assert parse_type("int64") == (pa.int64(), False)
    assert parse_type("string?") == (pa.string(), True)
    assert parse_type("vector[float32, 8]") == (pa.list_(pa.float32(), 8), False)
    with pytest.raises(ValidationError, match="did you mean 'float64'"):
        parse_type("flaot64")
    with pytest.raises(ValidationError, match="positive size"):
        parse_type("vector[float32, 0]")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"event_time": "time"}, "event_time 'time' is not a field", id="no-ts"),
        pytest.param({"event_time": "amount"}, "must have type 'timestamp'", id="ts-type"),
        pytest.param({"key": "usr"}, "did you mean 'user'", id="key-typo"),
        pytest.param({"key": "amount"}, "int32, int64 or string", id="key-type"),
        pytest.param({"partitions": 0}, "positive integer", id="partitions"),
        pytest.param({"name": "bad name"}, "topic name", id="name"),
        pytest.param({"retention_ms": -5}, "retention_ms", id="retention"),
    ],
)
def test_bad_topic_definitions_are_refused(kwargs, message) -> None:
    args = {
        "name": "t",
        "fields": {"ts": "timestamp", "user": "int64", "amount": "float64"},
        "event_time": "ts",
    } | kwargs
    with pytest.raises(ValidationError, match=message):
        Topic(**args)


def test_topic_json_round_trip() -> None:
    t = Topic(
        "t",
        {"ts": "timestamp", "k": "string"},
        event_time="ts",
        key="k",
        partitions=4,
        retention_bytes=10**6,
    )
    assert Topic.from_json(t.to_json()) == t


def test_dataframe_with_naive_times_and_int_amounts_is_cast() -> None:
    t = Topic("t", {"ts": "timestamp", "k": "int32", "x": "float64"}, event_time="ts")
    df = pd.DataFrame(
        {"ts": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 11:00"]), "k": [1, 2], "x": [1, 2]}
    )
    table = to_table(t, df)
    assert table.schema == t.schema
    assert table["ts"][0].as_py() == datetime.fromisoformat("2026-01-01T10:00:00+00:00")
    assert table["x"].to_pylist() == [1.0, 2.0]


def test_floats_are_not_silently_truncated_to_integers() -> None:
    t = Topic("t", {"ts": "timestamp", "k": "int64"}, event_time="ts")
    table = pa.table({"ts": pa.array([datetime(2026, 1, 1)] * 2), "k": [1.0, 2.5]})
    with pytest.raises(RecordError, match="column has type double, expected int64"):
        to_table(t, table)


def test_integer_overflow_names_the_row() -> None:
    t = Topic("t", {"ts": "timestamp", "k": "int32"}, event_time="ts")
    table = pa.table({"ts": pa.array([datetime(2026, 1, 1)] * 3), "k": [1, 2, 2**40]})
    with pytest.raises(RecordError) as info:
        to_table(t, table)
    assert (info.value.row, info.value.field) == (2, "k")


def test_nullable_fields_may_be_absent() -> None:
    t = Topic("t", {"ts": "timestamp", "note": "string?"}, event_time="ts")
    table = to_table(t, [{"ts": datetime(2026, 1, 1)}])
    assert table["note"].to_pylist() == [None]


def test_records_of_the_wrong_container_type() -> None:
    t = Topic("t", {"ts": "timestamp"}, event_time="ts")
    with pytest.raises(ValidationError, match="list of dicts"):
        to_table(t, {"ts": [datetime(2026, 1, 1)]})
    with pytest.raises(RecordError, match=r"row 1.*expected a dict"):
        to_table(t, [{"ts": datetime(2026, 1, 1)}, ("x",)])


@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_partitioning_is_stable_and_spreads(key_type: str) -> None:
    t = Topic("t", {"ts": "timestamp", "k": key_type}, event_time="ts", key="k", partitions=8)
    keys = list(range(2000)) if key_type == "int64" else [f"user-{i}" for i in range(2000)]
    table = to_table(t, pa.table({"ts": pa.array([datetime(2026, 1, 1)] * 2000), "k": keys}))
    parts = partition_for(t, table)
    assert np.array_equal(parts, partition_for(t, table.slice(0, 2000)))
    counts = np.bincount(parts, minlength=8)
    assert counts.min() > 150  # 250 expected per partition
    # one key's partition does not depend on its batch-mates
    single = to_table(t, pa.table({"ts": pa.array([datetime(2026, 1, 1)]), "k": keys[1234:1235]}))
    assert partition_for(t, single)[0] == parts[1234]
