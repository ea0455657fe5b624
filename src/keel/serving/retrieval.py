"""Recommendation routes: each row's top-k items, and the scores of user–item pairs.

A route serving a recommender (:class:`~keel.runtimes.RecommendRuntime`) takes

* ``POST /v1/routes/{route}/predict`` rows ``{"user_id": 7, "k": 5}`` (``k`` defaults to the
  route's ``default_k``, at most its ``max_k``), answered with each row's ``items`` and
  ``scores``, best first;
* ``POST /v2/models/{route}/infer`` tensors ``user_id`` and ``item_id`` (INT64, the same
  length), answered with ``score`` per pair.

Both join the user's features (the model's ``feature_names``) from the online store by
``user_id``, one lookup per micro-batch, as any route joins its features: the route's
``features`` must name the views they come from, keyed by ``user_id``. A user the model does
not know gets the cold-start row's recommendations. One batch runs one query pass and one
index search for all its top-k rows, and one scoring pass for all its pairs, on the one
version (model and index) it captured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.config import RouteConfig
from keel.errors import KeelError, ValidationError
from keel.index import MAX_K
from keel.runtimes import Runtime
from keel.serving.routes import Answer, Deployed, Route, Rows, Tensors, lookup

__all__ = ["USER", "check_route", "run_retrieval_batch"]

#: The request field (and Open Inference Protocol input) naming the user.
USER = "user_id"
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(slots=True)
class Query:
    """One payload, read: its users, and either each row's ``k`` or each pair's item."""

    users: np.ndarray
    k: np.ndarray | None = None
    items: np.ndarray | None = None
    features: np.ndarray | None = None  # given with the payload (a shadow's copy), or joined


def check_route(cfg: RouteConfig, runtime: Runtime, joined: list[str], features: Any) -> None:
    """Refuse, at load, a route that could not serve this recommender: features the route
    does not join, views keyed by something other than the user, a ``max_k`` past what the
    index answers, a prediction log (not written for recommendations yet)."""
    where = f"route {cfg.name!r}"
    if cfg.max_k > MAX_K:
        raise ValidationError(f"{where}: max_k {cfg.max_k} is over the index's limit of {MAX_K}")
    if cfg.monitor is not None:
        raise ValidationError(
            f"{where}: the prediction log does not record recommendations yet; remove the "
            "route's [routes.monitor] block"
        )
    missing = [n for n in runtime.feature_names if n not in joined]
    if missing:
        views = sorted({n.split("__", 1)[0] for n in missing})
        raise ValidationError(
            f"{where}: the model reads the user's features {', '.join(missing)}, which the "
            f"route does not join; add features = {views!r} to the route"
        )
    if cfg.features and features is not None:
        for view, _ in features.resolve(cfg.features):
            if view.entity.join_key != USER:
                raise ValidationError(
                    f"{where}: feature view {view.name!r} is keyed by "
                    f"{view.entity.join_key!r}; a recommender's route joins the user's "
                    f"features by {USER!r}"
                )


def read(route: Route, payload: Tensors | Rows) -> Query:
    """A payload's users and ``k`` (rows) or items (tensors), checked."""
    cfg = route.config
    if isinstance(payload, Rows):
        users = np.empty(payload.n, dtype=np.int64)
        ks = np.empty(payload.n, dtype=np.int64)
        for i, row in enumerate(payload.rows):
            users[i] = _user(route, i, row.get(USER))
            k = row.get("k", cfg.default_k)
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.max_k:
                raise ValidationError(
                    f"route {route.name!r}, row {i}: k must be an integer from 1 to "
                    f"{cfg.max_k} (the route's max_k), got {k!r}"
                )
            ks[i] = k
        return Query(users, k=ks)
    arrays = payload.arrays
    if USER not in arrays:
        raise ValidationError(f"route {route.name!r}: input {USER!r} is missing")
    query = Query(np.asarray(arrays[USER], dtype=np.int64).reshape(-1))
    if "features" in arrays:  # what the primary was given, copied to a shadow
        query.features = np.asarray(arrays["features"], dtype=np.float32)
    if "item_id" in arrays:
        query.items = np.asarray(arrays["item_id"], dtype=np.int64).reshape(-1)
        if len(query.items) != len(query.users):
            raise ValidationError(
                f"route {route.name!r}: 'user_id' and 'item_id' must have the same length "
                f"(one pair per position), got {len(query.users)} and {len(query.items)}"
            )
    elif "k" in arrays:
        ks = np.asarray(arrays["k"], dtype=np.int64).reshape(-1)
        if len(ks) and not (ks.min() >= 1 and ks.max() <= cfg.max_k):
            raise ValidationError(
                f"route {route.name!r}: k must be from 1 to {cfg.max_k} (the route's max_k)"
            )
        query.k = ks
    else:
        raise ValidationError(f"route {route.name!r}: give 'item_id' with 'user_id'")
    return query


def _user(route: Route, i: int, value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (_INT64[0] <= value <= _INT64[1])
    ):
        what = "is missing" if value is None else f"must be an integer, got {value!r}"
        raise ValidationError(f"route {route.name!r}, row {i}: {USER!r} {what}")
    return value


def run_retrieval_batch(
    route: Route, payloads: Sequence[Tensors | Rows], features: Any, deployed: Deployed
) -> list[Any]:
    """Answer a micro-batch on one version: one feature lookup for every user in it, one
    retrieval pass for its top-k rows, one scoring pass for its pairs. A payload that does not
    read fails alone; the result of each other is (outputs, version, staleness, input used)."""
    runtime = deployed.runtime
    names = list(runtime.feature_names)
    queries: list[Query | KeelError] = []
    for p in payloads:
        try:
            queries.append(read(route, p))
        except KeelError as exc:
            queries.append(exc)
    good = [q for q in queries if isinstance(q, Query)]
    stale: dict[int, dict[str, list[float | None]]] = {}
    need = [q for q in good if q.features is None]
    if need and names:
        matrix, staleness = _user_features(route, features, names, need)
        start = 0
        for q in need:
            end = start + len(q.users)
            q.features = matrix[start:end]
            stale[id(q)] = {c: s[start:end] for c, s in staleness.items()}
            start = end
    elif need:
        for q in need:
            q.features = np.zeros((len(q.users), 0), dtype=np.float32)
    outputs: dict[int, dict[str, np.ndarray]] = {}
    for field in ("k", "items"):
        group = [q for q in good if getattr(q, field) is not None]
        if not group:
            continue
        inputs = {
            USER: np.concatenate([q.users for q in group]),
            "k" if field == "k" else "item_id": np.concatenate([getattr(q, field) for q in group]),
            "features": np.concatenate([q.features for q in group]),
        }
        out = runtime.predict(inputs)
        start = 0
        for q in group:
            end = start + len(q.users)
            # Each payload as wide as its own largest k, whatever the batch it ran in (a
            # shadow's copy then lines up with the primary's answer).
            if q.k is not None:
                width = int(q.k.max()) if len(q.k) else 0
                outputs[id(q)] = {n: v[start:end, :width] for n, v in out.items()}
            else:
                outputs[id(q)] = {n: v[start:end] for n, v in out.items()}
            start = end
    results: list[Any] = []
    for query in queries:
        if not isinstance(query, Query):
            results.append(query)
            continue
        # read() gives each query its k or its items; the join above, its features.
        asked = query.k if query.k is not None else query.items
        assert asked is not None and query.features is not None
        kind = "k" if query.k is not None else "item_id"
        arrays = {USER: query.users, kind: asked, "features": query.features}
        used = Tensors(arrays, len(query.users))
        results.append(Answer(outputs[id(query)], deployed.version, stale.get(id(query)), used))
    return results


def _user_features(
    route: Route, features: Any, names: list[str], queries: list[Query]
) -> tuple[np.ndarray, dict[str, list[float | None]]]:
    """The model's user features for every query's users, from one online lookup."""
    refs = route.config.features
    if not refs or features is None:
        raise ValidationError(
            f"route {route.name!r}: the model reads the user's features but the route joins "
            "none (set its features, and serve it with a feature store)"
        )
    users = np.concatenate([q.users for q in queries])
    columns, staleness = lookup(route, features, refs, {USER: users.tolist()})
    matrix = np.empty((len(users), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        if name not in columns:
            raise ValidationError(
                f"route {route.name!r}: the model reads {name!r}, which the route's features "
                f"{refs} do not give as a number"
            )
        matrix[:, j] = columns[name]
    return matrix, staleness
