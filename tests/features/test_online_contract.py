"""The online store's contract, run over every backend (memory, SQLite, Redis) as the log's is:
states and progress committed together, read back exactly, replaced per key, cleared per
view, counted, kept by a second client, and tied to the log they were folded from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from keel.features import Aggregate, Entity, FeatureStore, FeatureView, Last, Source
from keel.features.online import open_online_store
from keel.log import Log

T0 = datetime(2026, 11, 1, tzinfo=UTC)
AT = T0 + timedelta(hours=3)


def _views() -> list[FeatureView]:
    user = Entity("user", "user_id")
    return [
        FeatureView(
            name,
            user,
            Source("pay"),
            [Aggregate(None, "count", timedelta(hours=2)), Last("country")],
            tile=timedelta(minutes=10),
        )
        for name in ("a", "b")
    ]


def _pay(log: Log, n: int, start: int = 0) -> None:
    rng = np.random.default_rng(start)
    log.append(
        "pay",
        [
            {
                "ts": T0 + timedelta(minutes=int(m)),
                "user_id": int(u),
                "amount": 1.0,
                "country": str(c),
            }
            for m, u, c in zip(
                np.sort(rng.integers(start, start + 120, n)),
                rng.integers(0, 20, n),
                rng.choice(["DE", "FR", "NL"], n),
                strict=True,
            )
        ],
    )


def _values(store: FeatureStore, view: str) -> dict[str, list]:
    got = store.get_online([view], list(range(25)), at=AT)
    return {k: [str(x) for x in v] for k, v in got.values.items()}


def test_states_and_progress_round_trip_like_the_reference(
    payments_log, online_url: str, tmp_path
) -> None:
    log = payments_log()
    _pay(log, 300)
    reference = FeatureStore(log, views=_views(), online="memory://", offline=tmp_path / "r")
    store = FeatureStore(log, views=_views(), online=online_url, offline=tmp_path / "o")
    reference.materialize()
    stats = store.materialize()
    assert stats["a"].events == 300 and stats["b"].events == 300
    for view in ("a", "b"):
        assert _values(store, view) == _values(reference, view)
        progress = store.online.progress(view)
        assert sum(progress.offsets.values()) == 300 and progress.log == log.identity
    seen = {int(u) for u in log.read("pay", 0, 0, 10**6)["user_id"].to_pylist()}
    seen |= {int(u) for u in log.read("pay", 1, 0, 10**6)["user_id"].to_pylist()}
    assert store.online.count("a") == len(seen)
    # Keys never seen read as missing, on every backend.
    missing = store.get_online(["a"], [999], at=AT)
    assert len(missing.missing) == 2
    assert all(m.tolist() == [True] for m in missing.missing.values())


def test_a_commit_replaces_only_its_keys_and_clear_only_its_view(
    payments_log, online_url, tmp_path
) -> None:
    log = payments_log()
    _pay(log, 200)
    store = FeatureStore(log, views=_views(), online=online_url, offline=tmp_path / "o")
    store.materialize()
    before = _values(store, "a")
    _pay(log, 40, start=50)  # new events for some users: their states are replaced
    reference = FeatureStore(log, views=_views(), online="memory://", offline=tmp_path / "r")
    reference.materialize()
    assert store.materialize()["a"].events == 40
    assert _values(store, "a") == _values(reference, "a") != before
    store.online.clear("a")
    assert store.online.count("a") == 0 and store.online.progress("a").offsets == {}
    assert _values(store, "b") == _values(reference, "b")
    # Cleared, the view is rebuilt from the log's start, counting each event once.
    assert store.materialize()["a"].events == 240
    assert _values(store, "a") == _values(reference, "a")


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The backends a second client can open (memory:// lives in one process)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.db'}"
    server = request.getfixturevalue("redis_server")
    return f"{server}?prefix={request.getfixturevalue('redis_prefix')}"


def test_a_second_client_sees_and_continues_the_state(
    payments_log, shared_url: str, tmp_path
) -> None:
    online_url = shared_url
    log = payments_log()
    _pay(log, 150)
    first = FeatureStore(log, views=_views(), online=online_url, offline=tmp_path / "o")
    first.materialize()
    expected = _values(first, "a")
    first.online.close()
    second = FeatureStore(log, views=_views(), online=online_url, offline=tmp_path / "o")
    assert _values(second, "a") == expected
    assert second.materialize()["a"].events == 0  # nothing folded twice
    again = open_online_store(online_url)
    try:
        assert again.count("a") == second.online.count("a") > 0
    finally:
        again.close()
