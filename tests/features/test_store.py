"""Feature store behaviour: definitions, windows that roll, TTL, lateness, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from keel.errors import NotFoundError, ValidationError
from keel.features import (
    Aggregate,
    Entity,
    FeatureStore,
    FeatureView,
    Last,
    OfflineStore,
    Source,
)
from keel.features.transforms import TextEmbeddingLookup
from keel.log import Log, Topic

T0 = datetime(2026, 11, 1, tzinfo=UTC)
H = timedelta(hours=1)
USER = Entity("user", "user_id")


@pytest.fixture
def log(payments_log) -> Log:
    return payments_log()


def pay(log: Log, *rows: tuple[int, timedelta, float, str | None]) -> None:
    log.append(
        "pay", [{"ts": T0 + dt, "user_id": u, "amount": a, "country": c} for u, dt, a, c in rows]
    )


def store_for(log: Log, tmp_path: Path, online: str = "memory://", **view_kw) -> FeatureStore:
    kw = {
        "features": [
            Aggregate(None, "count", H),
            Aggregate("amount", "sum", 2 * H),
            Last("country"),
        ],
        "tile": timedelta(minutes=15),
    } | view_kw
    view = FeatureView("u", USER, Source("pay", allowed_lateness=timedelta(minutes=30)), **kw)
    return FeatureStore(log, views=[view], online=online, offline=tmp_path / "offline")


# -- definitions -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda: Aggregate("amount", "summ", H), "did you mean 'sum'", id="fn"),
        pytest.param(lambda: Aggregate("amount", "sum", timedelta(0)), "positive", id="window"),
        pytest.param(
            lambda: FeatureView(
                "v",
                USER,
                Source("pay"),
                [Aggregate("amount", "sum", timedelta(minutes=50))],
                tile=timedelta(minutes=15),
            ),
            "window 50m is not a multiple of the tile 15m",
            id="tile",
        ),
        pytest.param(
            lambda: FeatureView(
                "v", USER, Source("pay"), [Last("amount"), Last("country", name="amount")]
            ),
            "feature name 'amount' is used twice",
            id="clash",
        ),
        pytest.param(
            lambda: Source("pay", fields={"x": "float64"}),
            "no transform",
            id="fields-without-transform",
        ),
    ],
)
def test_bad_definitions_are_refused(make, message) -> None:
    with pytest.raises(ValidationError, match=message):
        make()


def test_columns_are_checked_against_the_topic(log: Log, tmp_path: Path) -> None:
    bad = FeatureView("v", USER, Source("pay"), [Aggregate("amout", "sum", H)])
    store = FeatureStore(log, views=[bad], offline=tmp_path)
    with pytest.raises(ValidationError, match="no column 'amout' — did you mean 'amount'"):
        store.validate()
    textual = FeatureView("t", USER, Source("pay"), [Aggregate("country", "sum", H)])
    with pytest.raises(ValidationError, match="sum needs a numeric column"):
        FeatureStore(log, views=[textual], offline=tmp_path).validate()
    keyless = FeatureView("k", Entity("card", "card_id"), Source("pay"), [Last("amount")])
    with pytest.raises(ValidationError, match="no column 'card_id'"):
        FeatureStore(log, views=[keyless], offline=tmp_path).validate()


def test_fingerprint_follows_the_definition() -> None:
    def make(window: timedelta, transform=None, fields=None) -> FeatureView:
        src = Source("pay", transform=transform, fields=fields or {})
        return FeatureView("v", USER, src, [Aggregate("amount", "sum", window)])

    def t1(t: pa.Table) -> pa.Table:
        return t.append_column("x", pa.array([1.0] * t.num_rows))

    def t2(t: pa.Table) -> pa.Table:
        return t.append_column("x", pa.array([2.0] * t.num_rows))

    assert make(H).fingerprint == make(H).fingerprint
    assert make(H).fingerprint != make(2 * H).fingerprint
    a = make(H, t1, {"x": "float64"}).fingerprint
    assert a != make(H, t2, {"x": "float64"}).fingerprint  # the transform's code counts


# -- online semantics --------------------------------------------------------------------
def test_windows_roll_forward_and_staleness_is_exact(log: Log, tmp_path: Path) -> None:
    store = store_for(log, tmp_path)
    pay(log, (1, timedelta(minutes=5), 10.0, "DE"), (1, timedelta(minutes=20), 5.0, None))
    store.materialize()
    at = T0 + timedelta(minutes=30)
    got = store.get_online(["u"], [1], at=at).row(0, with_meta=True)
    assert got["u__count_1h"] == 2
    assert got["u__amount_sum_2h"] == 15.0
    assert got["u__country"] == "DE"  # the last non-null value
    assert got["u__count_1h.staleness_s"] == 600.0
    assert got["u__country.staleness_s"] == 25 * 60.0
    # An hour later the 1-hour window is empty: rolled, not frozen.
    later = store.get_online(["u"], [1], at=T0 + timedelta(hours=1, minutes=15)).row(
        0, with_meta=True
    )
    assert later["u__count_1h"] == 0 and later["u__count_1h.missing"]
    assert later["u__amount_sum_2h"] == 15.0
    gone = store.get_online(["u"], [1], at=T0 + timedelta(hours=3)).row(0, with_meta=True)
    assert gone["u__amount_sum_2h"] == 0.0 and gone["u__amount_sum_2h.missing"]
    assert gone["u__country"] == "DE"  # all-time, survives tiles leaving every window


def test_ttl_makes_old_values_missing(log: Log, tmp_path: Path) -> None:
    store = store_for(log, tmp_path, ttl=timedelta(hours=2))
    pay(log, (1, timedelta(0), 1.0, "FR"))
    store.materialize()
    assert store.get_online(["u:country"], [1], at=T0 + H).row(0) == {
        "user_id": 1,
        "u__country": "FR",
    }
    stale = store.get_online(["u:country"], [1], at=T0 + 3 * H).row(0, with_meta=True)
    assert stale["u__country"] is None and stale["u__country.missing"]


def test_unknown_entities_get_defaults(log: Log, tmp_path: Path) -> None:
    store = store_for(log, tmp_path)
    got = store.get_online(["u"], [42], at=T0).row(0, with_meta=True)
    assert got["u__count_1h"] == 0 and got["u__count_1h.missing"]
    assert got["u__country"] is None


def test_late_events_are_dropped_and_counted(log: Log, tmp_path: Path) -> None:
    store = store_for(log, tmp_path)
    pay(log, (1, timedelta(hours=5), 1.0, "DE"))
    pay(
        log,
        (1, timedelta(hours=4, minutes=45), 2.0, "DE"),  # 15 min late: allowed
        (1, timedelta(hours=2), 100.0, "US"),
    )  # 3 h late: dropped
    stats = store.materialize()["u"]
    assert (stats.events, stats.late) == (3, 1)
    got = store.get_online(["u"], [1], at=T0 + timedelta(hours=5, minutes=5)).row(0)
    assert got["u__amount_sum_2h"] == 3.0
    train = store.training_set(
        pa.table(
            {
                "user_id": [1],
                "ts": pa.array([T0 + timedelta(hours=5, minutes=5)], pa.timestamp("us", tz="UTC")),
            }
        ),
        ["u"],
    )
    assert train["u__amount_sum_2h"].to_pylist() == [3.0]  # offline drops it too


def test_features_of_two_entities_need_keys_by_join_key(log: Log, tmp_path: Path) -> None:
    log.create_topic(
        Topic(
            "cards",
            {"ts": "timestamp", "card_id": "int64", "amount": "float64"},
            event_time="ts",
            key="card_id",
        )
    )
    views = [
        FeatureView("u", USER, Source("pay"), [Aggregate(None, "count", H)]),
        FeatureView("c", Entity("card", "card_id"), Source("cards"), [Aggregate(None, "count", H)]),
    ]
    store = FeatureStore(log, views=views, offline=tmp_path)
    with pytest.raises(ValidationError, match="several entities"):
        store.get_online(["u", "c"], [1])
    got = store.get_online(["u", "c"], {"user_id": [1], "card_id": [7]}, at=T0)
    assert got.row(0) == {"user_id": 1, "card_id": 7, "u__count_1h": 0, "c__count_1h": 0}


def test_unknown_features_are_named(log: Log, tmp_path: Path) -> None:
    store = store_for(log, tmp_path)
    with pytest.raises(ValidationError, match="no feature 'cuont_1h' — did you mean 'count_1h'"):
        store.get_online(["u:cuont_1h"], [1])
    with pytest.raises(ValidationError, match="no feature view 'uu'"):
        store.get_online(["uu"], [1])


# -- offline ----------------------------------------------------------------------------
def test_training_set_is_point_in_time(log: Log, tmp_path: Path) -> None:
    store = store_for(log, tmp_path)
    pay(log, (1, timedelta(minutes=10), 1.0, "DE"), (2, timedelta(minutes=12), 7.0, "FR"))
    labels = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "label": [0, 1, 0],
            "ts": pd.to_datetime(
                [T0 + timedelta(minutes=11), T0 + timedelta(minutes=40), T0 + timedelta(minutes=11)]
            ),
        }
    )
    first = store.training_set(labels, ["u:amount_sum_2h", "u:count_1h"])
    assert first["u__amount_sum_2h"].to_pylist() == [1.0, 1.0, 0.0]
    assert first["label"].to_pylist() == [0, 1, 0]  # label columns pass through, in order
    pay(log, (1, timedelta(minutes=30), 5.0, "DE"))  # after the first row's time
    again = store.training_set(labels, ["u:amount_sum_2h", "u:count_1h"])
    assert again["u__amount_sum_2h"].to_pylist() == [1.0, 6.0, 0.0]
    assert again["u__count_1h"].to_pylist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        pytest.param(pa.table({"ts": pa.array([T0])}), "no column 'user_id'", id="no-key"),
        pytest.param(
            pa.table({"user_id": [1], "time": pa.array([T0])}), "no column 'ts'", id="no-ts"
        ),
        pytest.param(
            pa.table({"user_id": [1], "ts": pa.array([datetime(2026, 11, 1)])}),
            "without a time zone",
            id="naive",
        ),
        pytest.param(
            pa.table({"user_id": [1], "ts": ["2026-11-01"]}), "must be a timestamp", id="string-ts"
        ),
    ],
)
def test_bad_label_tables_are_refused(log: Log, tmp_path: Path, labels, message) -> None:
    with pytest.raises(ValidationError, match=message):
        store_for(log, tmp_path).training_set(labels, ["u"])


def test_landing_is_idempotent_and_cleans_an_interrupted_run(log: Log, tmp_path: Path) -> None:
    pay(log, *[(i % 3, timedelta(hours=i), float(i), "DE") for i in range(30)])
    off = OfflineStore(tmp_path / "off")
    assert off.land(log, "pay") == 30
    assert off.land(log, "pay") == 0
    # A run that wrote files but died before its manifest: the files are removed and redone.
    pay(log, (1, timedelta(days=3), 99.0, "FR"))
    landed = off.landed("pay")
    orphan = (
        next(iter(off.files("pay"))).parent / f"p0-{landed[0]:012d}-{landed[0] + 5:012d}.parquet"
    )
    orphan.write_bytes(b"half a file")
    assert off.land(log, "pay") == 1
    assert not orphan.exists()
    history = off.read("pay")
    assert history.num_rows == 31
    assert sorted(
        zip(history["_partition"].to_pylist(), history["_offset"].to_pylist(), strict=True)
    ) == sorted(
        set(zip(history["_partition"].to_pylist(), history["_offset"].to_pylist(), strict=True))
    )
    with pytest.raises(NotFoundError):
        OfflineStore(tmp_path / "none").glob("pay")


def test_backfill_equals_incremental(log: Log, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pay(
        log,
        *[
            (int(rng.integers(0, 5)), timedelta(minutes=int(m)), float(rng.normal()), "DE")
            for m in np.sort(rng.integers(0, 600, 200))
        ],
    )
    a = store_for(log, tmp_path / "a")
    a.materialize()
    b = store_for(log, tmp_path / "b", online=f"sqlite:///{tmp_path / 'b.db'}")
    b.backfill()
    at = T0 + timedelta(hours=10)
    va = a.get_online(["u"], list(range(5)), at=at)
    vb = b.get_online(["u"], list(range(5)), at=at)
    for name in va.values:
        assert [str(x) for x in va.values[name]] == [str(x) for x in vb.values[name]]
    pay(log, (1, timedelta(hours=10), 1.0, "FR"))  # backfill then continues from the log
    assert b.materialize()["u"].events == 1


# -- transforms ---------------------------------------------------------------------------
def test_text_embedding_lookup_attaches_vectors(log: Log, tmp_path: Path) -> None:
    log.create_topic(
        Topic(
            "items",
            {"ts": "timestamp", "item_id": "int64", "text": "string"},
            event_time="ts",
            key="item_id",
        )
    )
    log.create_topic(
        Topic(
            "views",
            {"ts": "timestamp", "user_id": "int64", "item_id": "int64"},
            event_time="ts",
            key="user_id",
        )
    )
    log.append("items", [{"ts": T0, "item_id": i, "text": f"item {i}"} for i in (1, 2)])

    def embed(texts):  # a real, deterministic embedding: length and last digit
        return np.array([[len(t), float(t[-1])] for t in texts], dtype=np.float32)

    lookup = TextEmbeddingLookup(
        topic="items", key="item_id", text="text", embed=embed, dim=2, into="emb"
    )
    view = FeatureView(
        "taste",
        USER,
        Source("views", transform=lookup, fields=lookup.fields),
        [Aggregate("emb", "vector_mean", timedelta(days=1))],
        tile=H,
    )
    store = FeatureStore(log, views=[view], offline=tmp_path)
    log.append(
        "views",
        [
            {"ts": T0 + timedelta(minutes=m), "user_id": 1, "item_id": i}
            for m, i in ((1, 1), (2, 2), (3, 3))
        ],
    )
    log.append("items", [{"ts": T0, "item_id": 3, "text": "item 9"}])  # a new item, later
    store.materialize()
    got = store.get_online(["taste"], [1], at=T0 + H).values["taste__emb_vector_mean_1d"]
    np.testing.assert_allclose(got[0], [6.0, (1 + 2 + 9) / 3])


# -- HTTP ---------------------------------------------------------------------------------
def test_http_endpoint_over_a_real_socket(log: Log, tmp_path: Path) -> None:
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from keel.features.http import create_app

    store = store_for(log, tmp_path)
    pay(log, (1, timedelta(minutes=5), 10.0, "DE"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}/v1/features"
        with httpx.Client() as client:
            body = None
            for _ in range(100):  # the app materializes in the background
                r = client.post(
                    url,
                    json={
                        "features": ["u"],
                        "keys": [1],
                        "at": (T0 + timedelta(minutes=10)).isoformat(),
                    },
                )
                body = r.json()
                if r.status_code == 200 and body["rows"][0]["u__count_1h"] == 1:
                    break
                time.sleep(0.05)
            assert body["rows"] == [
                {"user_id": 1, "u__count_1h": 1, "u__amount_sum_2h": 10.0, "u__country": "DE"}
            ]
            assert body["staleness_s"]["u__count_1h"] == [300.0]
            bad = client.post(url, json={"features": ["u:nope"], "keys": [1]})
            assert bad.status_code == 400 and "no feature 'nope'" in bad.json()["error"]
            junk = client.post(url, content=b"{not json")
            assert junk.status_code == 400 and "not JSON" in junk.json()["error"]
            extra = client.post(url, json={"features": ["u"], "keys": [1], "colour": 1})
            assert extra.status_code == 400 and "colour" in extra.json()["error"]
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_online_store_kept_across_a_new_log_is_rebuilt_from_it(
    payments_log, tmp_path: Path
) -> None:
    online = f"sqlite:///{tmp_path / 'online.db'}"
    logs = []
    for name, events in (("old", 10), ("new", 3)):
        log = payments_log(f"sqlite:///{tmp_path / name}.db")
        pay(
            log,
            *[
                (1, timedelta(minutes=i), 5.0 if name == "old" else 1.0, "DE")
                for i in range(events)
            ],
        )
        logs.append(log)
    old = store_for(logs[0], tmp_path / "a", online=online)
    old.materialize()
    at = T0 + timedelta(minutes=30)
    assert old.get_online(["u"], [1], at=at).values["u__count_1h"].tolist() == [10]
    old.online.close()
    # The same online store, pointed at another log: its aggregates are that log's.
    new = store_for(logs[1], tmp_path / "b", online=online)
    assert new.materialize()["u"].events == 3
    got = new.get_online(["u"], [1], at=at).values
    assert got["u__count_1h"].tolist() == [3] and got["u__amount_sum_2h"].tolist() == [3.0]
