"""A two-tower recommender served with its own version's vector index.

The runtime holds the module and the index of the same version, so a route that swaps
versions swaps both in one reference and a request never mixes two versions' embeddings.
The index is the one published for the version (:class:`keel.index.IndexStore`); a version
without one gets an index built in memory from its own catalogue.

Two calls, told apart by their inputs (the first dimension is the batch):

* retrieval — ``user_id`` and ``k`` (and ``features``): the top ``k`` items per user from one
  index search for the whole batch, as ``items`` (item IDs, ``-1`` past a row's ``k``) and
  ``scores`` (the inner products, NaN past ``k``), both as wide as the largest ``k``;
* scoring — ``user_id`` and ``item_id`` (and ``features``): ``score`` per pair, the model's
  own :meth:`score_ids`. These are the inputs the Open Inference Protocol declares.

``features`` are the user's values of ``feature_names`` (NaN: missing); without them every
user is scored as if they had none.

Example
-------
>>> import numpy as np
>>> from keel.runtimes.recommend import ranked_lists
>>> out = {"items": np.array([[7, 3, -1], [5, 2, 9]]), "scores": np.array([[2.0, 1.5, np.nan],
...        [3.0, 2.5, 0.5]])}
>>> ranked_lists(out)
{'items': [[7, 3], [5, 2, 9]], 'scores': [[2.0, 1.5], [3.0, 2.5, 0.5]]}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keel.errors import ValidationError
from keel.index.vector import VectorIndex
from keel.runtimes.base import Runtime, TensorSpec

__all__ = [
    "RANKING",
    "RECOMMEND",
    "RecommendRuntime",
    "is_recommender",
    "is_two_tower",
    "published_index",
    "ranked_lists",
]

#: The ``task`` of a runtime that answers with recommendations (rankings of item IDs).
RECOMMEND = "recommend"
#: A retrieval's outputs per row: item IDs best first, and their scores.
RANKING = ("items", "scores")
MISSING = -1  # an item slot past a row's k (the index's key for "no hit")


def is_two_tower(model: Any) -> bool:
    """Whether ``model`` is a two-tower recommender (``keel.recommend.TwoTower`` or anything
    with its retrieval methods): told by what it does, so this layer need not import it."""
    return all(callable(getattr(model, m, None)) for m in ("catalogue", "query", "score_ids"))


def is_recommender(runtime: Any) -> bool:
    """Whether ``runtime`` serves recommendations (here, or forwarded to another process)."""
    return getattr(runtime, "task", None) == RECOMMEND


def published_index(indexes: Any, name: str, version: int) -> Any:
    """``name@version``'s published index from the store ``indexes``, or None when that
    version has none (the runtime then builds one from the version's own catalogue)."""
    if indexes is None or int(version) not in indexes.versions(name):
        return None
    return indexes.open(name, int(version))


class RecommendRuntime(Runtime):
    """A two-tower model and the vector index of its item vectors, served together.

    Parameters
    ----------
    model
        The recommender (``keel.recommend.TwoTower``).
    index
        Its version's :class:`keel.index.VectorIndex` (inner product); None builds one in
        memory from ``model.catalogue()``.
    device
        ``cpu`` only: the towers and the index search run on the CPU.
    threads
        Torch's intra-op threads (process-wide, as for the other torch runtimes); a request's
        towers are too small to split, so 1 spares the cores for the server.
    """

    platform = "pytorch"
    task = RECOMMEND

    def __init__(
        self, model: Any, *, index: Any = None, device: str = "cpu", threads: int | None = None
    ) -> None:
        if device != "cpu":
            raise ValidationError(
                f"a two-tower recommender is served on the CPU (its towers and index search "
                f"run there); set the route's device to 'cpu', not {device!r}"
            )
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.model = model.eval()
        self.feature_names = list(getattr(model, "feature_names", None) or [])
        ids, vectors = model.catalogue()
        vectors = np.asarray(vectors.float().numpy() if hasattr(vectors, "float") else vectors)
        self.built_here = index is None
        if index is None:
            index = VectorIndex.build(ids, vectors.astype(np.float32), metric="ip")
        elif index.metric != "ip" or index.dim != vectors.shape[1] or len(index) != len(ids):
            raise ValidationError(
                f"the vector index ({len(index)} items × {index.dim}, {index.metric}) does not "
                f"belong to this model ({len(ids)} items × {vectors.shape[1]}, ip): an index is "
                "published for one version; publish this version's own"
            )
        self.index = index
        self.items = len(ids)
        self.inputs = [TensorSpec("user_id", "INT64", (-1,)), TensorSpec("item_id", "INT64", (-1,))]
        self.outputs = [TensorSpec("score", "FP64", (-1,))]
        #: What a retrieval call answers (not an Open Inference Protocol output).
        self.ranking = [
            TensorSpec(RANKING[0], "INT64", (-1, -1)),
            TensorSpec(RANKING[1], "FP64", (-1, -1)),
        ]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        users = np.asarray(inputs["user_id"], dtype=np.int64).reshape(-1)
        features = inputs.get("features")
        if features is not None and np.shape(features)[-1] == 0:
            features = None  # a model without features
        if "item_id" in inputs:
            items = np.asarray(inputs["item_id"], dtype=np.int64).reshape(-1)
            return {"score": np.asarray(self.model.score_ids(users, items, features), np.float64)}
        if "k" not in inputs:
            raise ValidationError("a recommender takes 'user_id' with 'k' or with 'item_id'")
        return self.top_k(users, np.asarray(inputs["k"], dtype=np.int64).reshape(-1), features)

    def top_k(
        self, users: np.ndarray, k: np.ndarray, features: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Each user's best ``k`` items (one index search for the whole batch)."""
        width = int(k.max()) if len(k) else 1
        queries = self.model.query(users, features)
        hits = self.index.search(queries, width)
        past = np.arange(width)[None, :] >= k[:, None]
        items, scores = RANKING
        return {
            items: np.where(past, MISSING, hits.keys),
            scores: np.where(past, np.nan, hits.scores),
        }

    def warmup(self) -> dict[str, np.ndarray]:
        """Both calls on the cold-start user; the outputs of both."""
        scored = super().warmup()
        k = np.full(2, min(10, max(self.items, 1)), dtype=np.int64)
        return {**scored, **self.top_k(np.zeros(2, np.int64), k)}


def ranked_lists(outputs: dict[str, np.ndarray]) -> dict[str, list[list[Any]]]:
    """Retrieval outputs as JSON lists, each row as long as its own ``k`` (slots past it
    dropped; a catalogue smaller than ``k`` gives shorter rows)."""
    items, scores = (np.asarray(outputs[n]) for n in RANKING)
    keep = items != MISSING
    return {
        RANKING[0]: [row[m].tolist() for row, m in zip(items, keep, strict=True)],
        RANKING[1]: [row[m].tolist() for row, m in zip(scores, keep, strict=True)],
    }
