"""The vector index: recall against exact search, updates as embeddings change, on-disk
round trips, one immutable index per model version, and clear errors on bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from keel.errors import ConflictError, NotFoundError, ValidationError
from keel.index import IndexStore, VectorIndex, exact_search


def items(n: int = 5_000, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors, as item embeddings are (items of a category lie together)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, dim))
    x = centers[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


@pytest.mark.parametrize("metric", ["cos", "ip", "l2sq"])
def test_recall_against_exact_search(metric: str) -> None:
    x = items()
    queries = items(200, seed=1)
    index = VectorIndex.build(np.arange(len(x)), x, metric=metric)
    got = index.search(queries, k=10)
    truth = exact_search(x, queries, 10, metric=metric)
    assert recall(got.keys, truth.keys) >= 0.97
    # Scores are similarities, best first, and agree with the exact ones where keys agree.
    assert (np.diff(got.scores, axis=1) <= 1e-6).all()
    same = got.keys[:, 0] == truth.keys[:, 0]
    assert np.allclose(got.scores[same, 0], truth.scores[same, 0], atol=1e-4)


def test_upsert_moves_an_item_and_remove_drops_it() -> None:
    x = items(1_000)
    keys = np.arange(1_000) + 10_000
    index = VectorIndex.build(keys, x)
    target = x[5]
    assert index.search(target, k=1).keys[0, 0] == 10_005
    # Item 10_900's embedding is refreshed to sit where 10_005 is: it now ties for first.
    index.upsert([10_900], target[None, :])
    assert set(index.search(target, k=2).keys[0]) == {10_005, 10_900}
    assert len(index) == 1_000
    index.remove([10_005, 10_900])
    assert not {10_005, 10_900} & set(index.search(target, k=20).keys[0])
    with pytest.raises(ValidationError, match="already indexed"):
        index.add([10_001], x[:1])


def test_fewer_items_than_k_pads_with_missing() -> None:
    index = VectorIndex.build([1, 2, 3], items(3, dim=8))
    hits = index.search(items(2, dim=8, seed=3), k=5)
    assert (hits.keys[:, 3:] == -1).all() and np.isnan(hits.scores[:, 3:]).all()
    assert set(hits.keys[0, :3]) == {1, 2, 3}
    empty = VectorIndex(8)
    assert (empty.search(np.zeros(8), k=2).keys == -1).all()


def test_save_and_open_memory_mapped(tmp_path: Path) -> None:
    x = items(2_000)
    index = VectorIndex.build(np.arange(2_000) * 3, x)
    path = index.save(tmp_path / "a" / "index.usearch")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    again = VectorIndex.open(path)
    queries = items(50, seed=2)
    assert (again.search(queries, k=10).keys == index.search(queries, k=10).keys).all()
    with pytest.raises(ValidationError, match="no vector index"):
        VectorIndex.open(tmp_path / "missing.usearch")
    (tmp_path / "junk.usearch").write_bytes(b"not an index")
    with pytest.raises((ValidationError, RuntimeError, ValueError)):
        VectorIndex.open(tmp_path / "junk.usearch")


@pytest.mark.parametrize(
    ("keys", "vectors", "message"),
    [
        pytest.param([1, 2], np.zeros((2, 5)), r"shape \(n, 4\)", id="wrong-dimension"),
        pytest.param([1, 1], np.ones((2, 4)), "unique", id="duplicate-keys"),
        pytest.param([1], np.ones((2, 4)), "one per vector", id="keys-count"),
        pytest.param([1.5, 2.5], np.ones((2, 4)), "integers", id="float-keys"),
        pytest.param([1, 2], np.array([[1, 2, 3, np.nan], [1, 1, 1, 1]]), "NaN", id="nan"),
    ],
)
def test_bad_input_names_what_is_wrong(keys, vectors, message) -> None:
    index = VectorIndex(4)
    with pytest.raises(ValidationError, match=message):
        index.add(keys, vectors)
    assert len(index) == 0  # nothing half-added
    with pytest.raises(ValidationError, match="k must be between"):
        index.search(np.ones(4), k=0)
    with pytest.raises(ValidationError, match="queries must have shape"):
        index.search(np.ones(3), k=1)
    with pytest.raises(ValidationError, match="metric"):
        VectorIndex(4, metric="hamming")


def test_one_index_per_version_published_whole(tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
    x1, x2 = items(500, seed=1), items(500, seed=2)
    meta = store.publish("recommend", 1, np.arange(500), x1)
    assert meta["items"] == 500 and meta["dim"] == 32
    store.publish("recommend", 2, np.arange(500), x2)
    # Each version answers from its own embeddings.
    assert store.open("recommend", 1).search(x1[7], k=1).keys[0, 0] == 7
    assert store.open("recommend", 2).search(x2[7], k=1).keys[0, 0] == 7
    assert store.versions("recommend") == [1, 2]
    with pytest.raises(ConflictError, match="already has an index"):
        store.publish("recommend", 1, np.arange(500), x2)
    assert store.open("recommend", 1).search(x1[7], k=1).keys[0, 0] == 7  # untouched
    with pytest.raises(NotFoundError, match="versions with one: 1, 2"):
        store.open("recommend", 3)
    store.drop("recommend", 1)
    assert store.versions("recommend") == [2]


def test_concurrent_publishers_of_one_version_leave_one_whole_index(tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
    outcomes: list[str] = []

    def publish(seed: int) -> None:
        try:
            store.publish("recommend", 5, np.arange(300), items(300, seed=seed))
            outcomes.append("published")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=publish, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 3 + ["published"]
    assert store.meta("recommend", 5)["items"] == 300
    assert not [p for p in (tmp_path / "recommend").iterdir() if p.name.endswith(".tmp")]
