"""Property tests: for random batches, the log keeps every record once, in order per key."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.log import OFFSET, Log, Topic

T0 = datetime(2026, 11, 1, tzinfo=UTC)

keys = st.one_of(st.integers(-(2**40), 2**40), st.text(min_size=1, max_size=6))
batch = st.lists(
    st.tuples(st.integers(0, 10**6), st.floats(allow_nan=False, allow_infinity=False)),
    min_size=0,
    max_size=40,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(batch, min_size=1, max_size=6),
    partitions=st.integers(1, 5),
    string_keys=st.booleans(),
    key_pool=st.lists(keys, min_size=1, max_size=8, unique=True),
    data=st.data(),
)
def test_every_record_once_in_order_per_key(
    log: Log, batches, partitions, string_keys, key_pool, data
) -> None:
    pool = (
        [str(k) for k in key_pool]
        if string_keys
        else [k if isinstance(k, int) else len(k) for k in key_pool]
    )
    name = f"p-{uuid.uuid4().hex[:8]}"
    log.create_topic(
        Topic(
            name,
            {
                "ts": "timestamp",
                "k": "string" if string_keys else "int64",
                "seq": "int64",
                "x": "float64",
            },
            event_time="ts",
            key="k",
            partitions=partitions,
        )
    )
    sent = []
    seq = 0
    for records in batches:
        rows = []
        for second, x in records:
            k = data.draw(st.sampled_from(pool))
            rows.append({"ts": T0 + timedelta(seconds=second), "k": k, "seq": seq, "x": x})
            sent.append((k, seq, x))
            seq += 1
        result = log.append(name, rows)
        assert len(result) == len(rows)
    parts = [log.read(name, p, 0, 10**6) for p in range(partitions)]
    got = []
    key_partition: dict = {}
    for p, part in enumerate(parts):
        assert part.column(OFFSET).to_pylist() == list(range(part.num_rows))
        for r in part.to_pylist():
            got.append((r["k"], r["seq"], r["x"]))
            # one key, one partition
            assert key_partition.setdefault(r["k"], p) == p
    assert sorted(got, key=lambda r: r[1]) == sent
    for k in set(r[0] for r in sent):
        in_log = [r[1] for r in got if r[0] == k]
        assert in_log == sorted(in_log)
    assert sum(log.end_offsets(name)) == len(sent)
    consumed = pa.concat_tables([*log.consumer("g", name)]) if sent else None
    assert (consumed.num_rows if consumed is not None else 0) == len(sent)
