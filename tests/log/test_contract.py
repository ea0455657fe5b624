"""The log contract: every backend passes the same suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from keel.errors import ConflictError, RecordError, TopicNotFoundError, ValidationError
from keel.log import OFFSET, PARTITION, Log, Topic, open_log

T0 = datetime(2026, 11, 1, tzinfo=UTC)
FIELDS = {
    "ts": "timestamp",
    "user": "int64",
    "seq": "int64",
    "amount": "float64",
    "note": "string?",
}


def topic(name: str = "ev", partitions: int = 3, **kw) -> Topic:
    return Topic(name, FIELDS, event_time="ts", key="user", partitions=partitions, **kw)


def rows(n: int, start: int = 0, users: int = 5) -> list[dict]:
    return [
        {
            "ts": T0 + timedelta(seconds=i),
            "user": i % users,
            "seq": i,
            "amount": i * 1.5,
            "note": None if i % 2 else f"n{i}",
        }
        for i in range(start, start + n)
    ]


def read_all(log: Log, name: str) -> pa.Table:
    t = log.topic(name)
    parts = [log.read(name, p, 0, 10**9) for p in range(t.partitions)]
    return pa.concat_tables(parts)


def test_create_topic_is_idempotent_only_for_the_same_definition(log: Log) -> None:
    log.create_topic(topic())
    assert log.create_topic(topic(), exist_ok=True) == topic()
    with pytest.raises(ConflictError, match="already exists"):
        log.create_topic(topic())
    with pytest.raises(ConflictError, match="different definition"):
        log.create_topic(topic(partitions=5), exist_ok=True)
    assert [t.name for t in log.topics()] == ["ev"]
    assert log.topic("ev").partitions == 3


@pytest.mark.parametrize(
    "kind", ["dicts", "table", "batch", "dataframe"], ids=lambda k: f"input-{k}"
)
def test_append_accepts_every_input_kind(log: Log, kind: str) -> None:
    log.create_topic(topic())
    data = rows(20)
    table = pa.Table.from_pylist(data, schema=log.topic("ev").schema)
    given = {
        "dicts": data,
        "table": table,
        "batch": table.to_batches()[0],
        "dataframe": pd.DataFrame(data),
    }[kind]
    appended = log.append("ev", given)
    assert len(appended) == 20
    back = read_all(log, "ev").sort_by("seq")
    assert back.drop_columns([PARTITION, OFFSET]).to_pylist() == table.to_pylist()


def test_order_within_a_partition_and_offsets_are_contiguous(log: Log) -> None:
    log.create_topic(topic())
    first = log.append("ev", rows(50))
    second = log.append("ev", rows(50, start=50))
    for p in range(3):
        part = log.read("ev", p, 0, 10**6)
        offsets = part.column(OFFSET).to_pylist()
        assert offsets == list(range(len(offsets)))
        for user in set(part.column("user").to_pylist()):
            seqs = [
                s
                for s, u in zip(part["seq"].to_pylist(), part["user"].to_pylist(), strict=True)
                if u == user
            ]
            assert seqs == sorted(seqs)
    # The offsets append returned point at the very records written.
    back = read_all(log, "ev")
    where = {(r[PARTITION], r[OFFSET]): r["seq"] for r in back.to_pylist()}
    for result, base in ((first, 0), (second, 50)):
        for i, (p, off) in enumerate(zip(result.partitions, result.offsets, strict=True)):
            assert where[(int(p), int(off))] == base + i
    assert sum(log.end_offsets("ev")) == 100


def test_same_key_always_lands_in_the_same_partition(log: Log) -> None:
    log.create_topic(topic())
    a = log.append("ev", rows(30))
    b = log.append("ev", rows(30))
    assert np.array_equal(a.partitions, b.partitions)
    assert len(set(a.partitions.tolist())) > 1


def test_read_from_the_middle_and_across_segments(log: Log) -> None:
    log.create_topic(topic(partitions=1))
    for i in range(5):
        log.append("ev", rows(10, start=i * 10))
    part = log.read("ev", 0, 13, 15)
    assert part.column(OFFSET).to_pylist() == list(range(13, 28))
    assert part.column("seq").to_pylist() == list(range(13, 28))
    assert log.read("ev", 0, 50, 10).num_rows == 0
    assert log.read("ev", 0, 45, 100).column(OFFSET).to_pylist() == list(range(45, 50))


@pytest.mark.parametrize(
    ("mutate", "field", "expected"),
    [
        pytest.param(lambda r: r.pop("amount"), "amount", "missing", id="missing-field"),
        pytest.param(lambda r: r.update(amount="12 EUR"), "amount", "str", id="wrong-type"),
        pytest.param(lambda r: r.update(ts=None), "ts", "null", id="null-event-time"),
        pytest.param(lambda r: r.update(ts=1_700_000_000), "ts", "timestamp", id="int-time"),
        pytest.param(
            lambda r: r.update(amout=1.0), "amout", "did you mean 'amount'", id="unknown-field"
        ),
        pytest.param(lambda r: r.update(user=None), "user", "null", id="null-key"),
    ],
)
def test_a_bad_record_appends_nothing_and_names_row_and_field(
    log: Log, mutate, field: str, expected: str
) -> None:
    log.create_topic(topic())
    log.append("ev", rows(10))
    before = log.end_offsets("ev")
    batch = rows(10, start=10)
    mutate(batch[7])
    with pytest.raises(RecordError, match=expected) as info:
        log.append("ev", batch)
    assert info.value.row == 7
    assert info.value.field == field
    assert "topic 'ev'" in str(info.value)
    assert log.end_offsets("ev") == before
    assert read_all(log, "ev").num_rows == 10


def test_a_bad_arrow_column_appends_nothing(log: Log) -> None:
    log.create_topic(topic())
    table = pa.Table.from_pylist(rows(10), schema=log.topic("ev").schema)
    bad = table.set_column(3, "amount", pa.array([str(i) for i in range(10)]))
    with pytest.raises(RecordError, match="amount"):
        log.append("ev", bad)
    nulls = table.set_column(0, "ts", pa.array([None] * 3 + [T0] * 7, pa.timestamp("us")))
    with pytest.raises(RecordError) as info:
        log.append("ev", nulls)
    assert (info.value.row, info.value.field) == (0, "ts")
    assert log.end_offsets("ev") == [0, 0, 0]


def test_unknown_topic_and_bad_partition(log: Log) -> None:
    log.create_topic(topic())
    with pytest.raises(TopicNotFoundError, match="did you mean 'ev'"):
        log.append("evv", rows(1))
    with pytest.raises(ValidationError, match=r"partitions 0\.\.2"):
        log.read("ev", 3, 0)


def test_consumer_group_commits_and_resumes(log: Log) -> None:
    log.create_topic(topic())
    log.append("ev", rows(40))
    c = log.consumer("g", "ev")
    first = c.poll(15)
    c.commit()
    assert log.committed("g", "ev") == c.positions
    again = log.consumer("g", "ev")
    rest = pa.concat_tables(list(again))
    seen = first["seq"].to_pylist() + rest["seq"].to_pylist()
    assert sorted(seen) == list(range(40))
    assert log.stats("ev").lag == {"g": 40 - 15}
    assert log.groups("ev") == ["g"]


def test_iterating_a_consumer_stops_at_the_end_the_log_had_when_it_began(log: Log) -> None:
    log.create_topic(topic())
    log.append("ev", rows(30))
    c = log.consumer("it", "ev")
    seen: list[int] = []
    appended: list[int] = []
    for batch in c:
        seen += batch["seq"].to_pylist()
        # A producer writes while the consumer iterates (each batch, up to 5 times).
        if len(appended) < 50:
            more = rows(10, start=1_000 + len(appended))
            log.append("ev", more)
            appended += [r["seq"] for r in more]
    assert sorted(seen) == list(range(30))
    # What was appended meanwhile is there for the next iteration.
    assert c.lag() == len(appended) > 0
    assert sorted(pa.concat_tables(list(c))["seq"].to_pylist()) == appended


def test_a_log_keeps_its_identity_and_another_log_has_its_own(log: Log, log_url: str) -> None:
    again = open_log(log_url)
    try:
        assert len(log.identity) == 32 and again.identity == log.identity
    finally:
        again.close()
    other = open_log("sqlite://")
    assert other.identity != log.identity


def test_consumer_resumes_in_a_new_process(log: Log, log_url: str) -> None:
    log.create_topic(topic())
    log.append("ev", rows(60))
    script = textwrap.dedent(
        f"""
        from keel.log import open_log
        log = open_log({log_url!r})
        c = log.consumer("proc", "ev")
        got = c.poll(25)
        c.commit()
        print(",".join(str(s) for s in got["seq"].to_pylist()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    first = [int(s) for s in out.split(",")]
    assert len(first) == 25
    resumed = pa.concat_tables(list(log.consumer("proc", "ev")))
    assert sorted(first + resumed["seq"].to_pylist()) == list(range(60))


def test_two_producer_processes_lose_nothing(log: Log, log_url: str) -> None:
    log.create_topic(topic())
    script = textwrap.dedent(
        f"""
        import sys
        from datetime import datetime, timedelta, UTC
        from keel.log import open_log
        who = int(sys.argv[1])
        log = open_log({log_url!r})
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        for b in range(40):
            log.append("ev", [
                {{"ts": t0 + timedelta(seconds=i), "user": who * 1000 + i % 7,
                  "seq": b * 50 + i, "amount": float(who), "note": None}}
                for i in range(50)
            ])
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)]) for w in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    back = read_all(log, "ev")
    assert back.num_rows == 2 * 40 * 50
    for p in range(3):
        part = log.read("ev", p, 0, 10**6)
        assert part.column(OFFSET).to_pylist() == list(range(part.num_rows))
    for who in (1, 2):
        mine = back.filter(pa.compute.equal(back["amount"], float(who)))
        assert sorted(mine["seq"].to_pylist()) == list(range(2000))
        # Each producer's records keep their order within every partition.
        for p in range(3):
            seqs = mine.filter(pa.compute.equal(mine[PARTITION], p)).sort_by(OFFSET)["seq"]
            assert seqs.to_pylist() == sorted(seqs.to_pylist())


def test_seek_by_event_time(log: Log) -> None:
    log.create_topic(topic(partitions=1))
    log.append("ev", rows(30))
    log.append("ev", rows(30, start=30))
    assert log.seek("ev", 0, T0 + timedelta(seconds=42)) == 42
    assert log.seek("ev", 0, T0 - timedelta(days=1)) == 0
    assert log.seek("ev", 0, T0 + timedelta(days=1)) == 60
    c = log.consumer("s", "ev")
    c.seek(T0 + timedelta(seconds=55))
    assert c.poll()["seq"].to_pylist() == list(range(55, 60))


def test_retention_by_size_drops_whole_old_segments(log: Log) -> None:
    log.create_topic(topic(partitions=1))
    for i in range(6):
        log.append("ev", rows(100, start=i * 100))
    seg = log.stats("ev").partitions[0].bytes / 6
    log.create_topic(topic("small", partitions=1, retention_bytes=int(seg * 2.5)))
    for i in range(6):
        log.append("small", rows(100, start=i * 100))
    assert log.apply_retention("small") == 4
    assert log.start_offsets("small") == [400]
    assert log.end_offsets("small") == [600]
    assert log.read("small", 0, 0, 1000)["seq"].to_pylist() == list(range(400, 600))
    assert log.apply_retention("ev") == 0  # no retention declared: everything stays


def test_retention_by_age(log: Log) -> None:
    import time

    log.create_topic(topic("aged", partitions=1, retention_ms=60_000))
    log.append("aged", rows(10))
    log.append("aged", rows(10, start=10))
    assert log.apply_retention("aged", now=time.time()) == 0
    assert log.apply_retention("aged", now=time.time() + 120) == 2
    assert log.start_offsets("aged") == [20]
    log.append("aged", rows(5, start=20))
    assert log.read("aged", 0, 0)["seq"].to_pylist() == list(range(20, 25))


def test_vector_fields_round_trip(log: Log) -> None:
    log.create_topic(
        Topic(
            "emb",
            {"ts": "timestamp", "item": "string", "v": "vector[float32, 4]"},
            event_time="ts",
            key="item",
            partitions=2,
        )
    )
    data = [{"ts": T0, "item": f"i{i}", "v": [float(i)] * 4} for i in range(8)]
    log.append("emb", data)
    back = read_all(log, "emb").sort_by("item")
    assert back["v"].to_pylist() == [[float(i)] * 4 for i in range(8)]


def test_delete_topic(log: Log) -> None:
    log.create_topic(topic())
    log.append("ev", rows(10))
    log.delete_topic("ev")
    assert log.topics() == []
    log.create_topic(topic())
    assert log.end_offsets("ev") == [0, 0, 0]


def test_a_second_client_sees_topics_created_by_the_first(log: Log, log_url: str) -> None:
    other = open_log(log_url)
    log.create_topic(topic())
    other.append("ev", rows(5))
    assert sum(log.end_offsets("ev")) == 5
    other.close()


def test_retention_is_applied_while_producing(log: Log) -> None:
    log.create_topic(topic("capped", partitions=1, retention_bytes=1))
    log.append("capped", rows(10))
    # Every segment is over a 1-byte budget: producing enforces retention on its own.
    assert log.start_offsets("capped") == [10]
    assert log.read("capped", 0, 0).num_rows == 0
