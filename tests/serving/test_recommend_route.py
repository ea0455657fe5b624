"""A two-tower recommender on a route, over real HTTP: top-k items against exact search, k
bounds, unknown users, pair scores over the Open Inference Protocol, a hot swap that swaps the
model and its index together, and a fine-tuned child shadowed by top-k overlap."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

import keel
from keel.clock import ManualClock
from keel.config import RouteConfig, ShadowConfig
from keel.controller import Controller
from keel.errors import ValidationError
from keel.features import FeatureStore
from keel.index import IndexStore
from keel.log import open_log
from keel.recommend import Recommender, fine_tune, train_recommender
from keel.registry import Registry
from keel.serving import InferenceServer, create_app
from keel.serving.traffic import compare_rankings, decide_shadow, discrepancy
from keel.shop import TOPICS, Shop

FEATURES = ["user_activity"]


def template_view(name: str) -> Any:
    """A feature view of the project template (``keel init``'s definitions)."""
    path = Path(keel.__file__).parent / "templates" / "definitions.py"
    spec = importlib.util.spec_from_file_location("keel_template_definitions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@dataclass
class Shelf:
    """A shop with a trained recommender (version 1, user features joined) and its
    fine-tuned child (version 2), each with its published index."""

    log: Any
    features: FeatureStore
    registry: Registry
    indexes: IndexStore
    at: float  # when features are looked up (the shop's clock, not the wall's)
    models: dict[int, Any]
    users: np.ndarray  # users the model knows

    def server(self, model: str = "recommend@1", *, indexes: Any = "store", **kw: Any) -> Any:
        route_kw = {"features": FEATURES, "max_wait_ms": 5, **kw.pop("route", {})}
        server = InferenceServer(
            [RouteConfig(name="recommend", model=model, **route_kw)],
            registry=self.registry,
            features=self.features,
            log_=self.log,
            features_at=lambda: self.at,
            indexes=self.indexes if indexes == "store" else indexes,
            **kw,
        )
        server.load_all()
        return server

    def user_features(self, users: np.ndarray, version: int = 1) -> np.ndarray:
        model = self.models[version]
        got = self.features.get_online(FEATURES, {"user_id": users.tolist()}, at=self.at)
        return np.column_stack([np.asarray(got.values[n], float) for n in model.feature_names])

    def exact(self, users: np.ndarray, k: int, version: int = 1) -> np.ndarray:
        """The true top-k item IDs per user: every catalogue item scored."""
        model = self.models[version]
        ids, vectors = model.catalogue()
        q = model.query(users, self.user_features(users, version))
        sims = q @ vectors.float().numpy().T
        return ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Shelf:
    tmp = tmp_path_factory.mktemp("recommend")
    log = open_log(f"sqlite:///{tmp}/log.db")
    for topic in TOPICS:
        log.create_topic(topic)
    shop = Shop(seed=3, n_users=2000, n_items=1000)
    for name, table in shop.catalog().items():
        log.append(name, table)
    log.append("shop.events", shop.history(days=7)["shop.events"])
    features = FeatureStore(log, views=[template_view("user_activity")], offline=tmp / "offline")
    features.materialize()
    registry = Registry(f"sqlite:///{tmp}/reg.db", str(tmp / "artifacts"), log=log)
    indexes = IndexStore(tmp / "indexes")
    rec = Recommender("recommend", epochs=1, features=FEATURES)
    train_recommender(
        rec, log=log, features=features, registry=registry, indexes=indexes, until=shop.now
    )
    log.append("shop.events", shop.history(days=1)["shop.events"])
    features.materialize()
    child = fine_tune(rec, log=log, features=features, registry=registry, indexes=indexes)
    assert child.version.version == 2 and registry.get("recommend", "challenger").version == 2
    models = {v: registry.load("recommend", v) for v in (1, 2)}
    known = models[1].users.ids[models[1].users.live]
    return Shelf(
        log,
        features,
        registry,
        indexes,
        shop.now.timestamp(),
        models,
        np.random.default_rng(0).choice(known, 120, replace=False),
    )


def predict(client: httpx.Client, rows: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post("/v1/routes/recommend/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    return r.json()


def overlap(got: list[list[int]], want: np.ndarray) -> float:
    k = want.shape[1]
    return float(
        np.mean([len(set(g) & set(w.tolist())) / k for g, w in zip(got, want, strict=True)])
    )


def test_top_k_is_the_exact_top_k_with_the_models_scores(shelf, running) -> None:
    server = shelf.server()
    users = shelf.users
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        # requests of 4 users each, several at a time, so batches hold many requests
        def ask(i: int) -> dict[str, Any]:
            return predict(client, [{"user_id": int(u), "k": 10} for u in users[i : i + 4]])

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            bodies = list(pool.map(ask, range(0, len(users), 4)))
    items = [row for b in bodies for row in b["predictions"]["items"]]
    scores = [row for b in bodies for row in b["predictions"]["scores"]]
    assert {b["version"] for b in bodies} == {"recommend@1"}
    assert all(len(row) == 10 for row in items) and all(len(row) == 10 for row in scores)
    assert set(bodies[0]["staleness_s"]) >= set(shelf.models[1].feature_names)
    # HNSW is approximate: nearly every true top-10 item is found
    assert overlap(items, shelf.exact(users, 10)) >= 0.9
    # the scores are the model's own inner products, best first
    feats = shelf.user_features(users)
    pairs_u = np.repeat(users, 10)
    want = shelf.models[1].score_ids(pairs_u, np.ravel(items), np.repeat(feats, 10, axis=0))
    np.testing.assert_allclose(np.ravel(scores), want, rtol=1e-5, atol=1e-5)
    assert all(np.all(np.diff(row) <= 1e-6) for row in scores)


def test_one_index_search_per_batch(shelf, running) -> None:
    server = shelf.server(route={"max_wait_ms": 20})
    runtime = server.routes["recommend"].current.runtime
    searches: list[int] = []
    search = runtime.index.search

    def counting(queries: np.ndarray, k: int = 10) -> Any:
        searches.append(len(queries))
        return search(queries, k)

    runtime.index.search = counting
    users = shelf.users[:48]
    try:
        with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
            searches.clear()  # (warm-up)
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                bodies = list(
                    pool.map(lambda u: predict(client, [{"user_id": int(u), "k": 5}]), users)
                )
            metrics = client.get("/metrics").text
    finally:
        del runtime.index.search
    batches = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("keel_batch_size_count")
    )
    assert sum(searches) == len(users) and len(searches) == batches < len(users)
    got = [b["predictions"]["items"][0] for b in bodies]
    assert overlap(got, shelf.exact(users, 5)) >= 0.9


def test_k_defaults_bounds_and_bad_rows(shelf, running) -> None:
    server = shelf.server(route={"max_k": 50})
    u = int(shelf.users[0])
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        body = predict(client, [{"user_id": u}, {"user_id": u, "k": 3}, {"user_id": u, "k": 50}])
        assert [len(r) for r in body["predictions"]["items"]] == [10, 3, 50]
        top3 = body["predictions"]["items"][1]
        assert body["predictions"]["items"][0][:3] == top3  # one ranking, cut at each k
        cases = [
            (
                {"user_id": u, "k": 0},
                "k must be an integer from 1 to 50 (the route's max_k), got 0",
            ),
            ({"user_id": u, "k": 51}, "from 1 to 50 (the route's max_k), got 51"),
            ({"user_id": u, "k": 2.5}, "k must be an integer from 1 to 50"),
            ({"user_id": u, "k": "5"}, "k must be an integer from 1 to 50"),
            ({"user_id": u, "k": True}, "k must be an integer"),
            ({"k": 5}, "'user_id' is missing"),
            ({"user_id": "7"}, "'user_id' must be an integer, got '7'"),
            ({"user_id": 2**64}, "'user_id' must be an integer"),
        ]
        for row, message in cases:
            r = client.post("/v1/routes/recommend/predict", json={"rows": [{"user_id": u}, row]})
            assert r.status_code == 400 and message in r.json()["error"], (row, r.text)
            assert "row 1" in r.json()["error"]
        assert client.get("/v2/health/live").status_code == 200
    with pytest.raises(ValidationError, match=r"default_k must be within 1\.\.max_k"):
        RouteConfig(name="r", model="recommend@1", default_k=20, max_k=10)


def test_unknown_users_get_the_cold_start_rows_recommendations(shelf, running) -> None:
    server = shelf.server()
    strangers = np.array([10**12, 10**12 + 1])
    model = shelf.models[1]
    assert model.users.rows(strangers).tolist() == [0, 0]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        body = predict(client, [{"user_id": int(s), "k": 10} for s in strangers])
    got = body["predictions"]["items"]
    assert got[0] == got[1]  # no features and no row of their own: the same list
    assert overlap(got, shelf.exact(strangers, 10)) >= 0.9
    cold = model.query(np.array([-5]), shelf.user_features(strangers[:1]))
    np.testing.assert_allclose(model.query(strangers[:1], shelf.user_features(strangers[:1])), cold)


def test_infer_scores_pairs_and_metadata_names_them(shelf, running) -> None:
    server = shelf.server()
    rng = np.random.default_rng(1)
    users = np.r_[shelf.users[:20], 10**12]
    items = rng.choice(shelf.models[1].items.ids[shelf.models[1].items.live], len(users))
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        meta = client.get("/v2/models/recommend").json()
        assert meta["inputs"] == [
            {"name": "user_id", "datatype": "INT64", "shape": [-1]},
            {"name": "item_id", "datatype": "INT64", "shape": [-1]},
        ]
        assert meta["outputs"] == [{"name": "score", "datatype": "FP64", "shape": [-1]}]
        r = client.post(
            "/v2/models/recommend/infer",
            json={
                "inputs": [
                    {
                        "name": "user_id",
                        "datatype": "INT64",
                        "shape": [len(users)],
                        "data": users.tolist(),
                    },
                    {
                        "name": "item_id",
                        "datatype": "INT64",
                        "shape": [len(items)],
                        "data": items.tolist(),
                    },
                ]
            },
        )
        assert r.status_code == 200, r.text
        [out] = r.json()["outputs"]
        assert out["name"] == "score" and out["datatype"] == "FP64"
        want = shelf.models[1].score_ids(users, items, shelf.user_features(users))
        np.testing.assert_allclose(out["data"], want, rtol=1e-9)
        bad = client.post(
            "/v2/models/recommend/infer",
            json={
                "inputs": [
                    {"name": "user_id", "datatype": "INT64", "shape": [2], "data": [1, 2]},
                    {"name": "item_id", "datatype": "INT64", "shape": [1], "data": [1]},
                ]
            },
        )
        assert bad.status_code == 400 and "disagree on the batch size" in bad.json()["error"]


def test_a_version_without_a_published_index_gets_its_own(shelf, running, tmp_path) -> None:
    server = shelf.server(indexes=IndexStore(tmp_path / "none"))
    runtime = server.routes["recommend"].current.runtime
    assert runtime.built_here and len(runtime.index) == len(shelf.models[1].items.live)
    users = shelf.users[:40]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        body = predict(client, [{"user_id": int(u), "k": 10} for u in users])
    assert overlap(body["predictions"]["items"], shelf.exact(users, 10)) >= 0.9
    served = shelf.server()
    assert not served.routes["recommend"].current.runtime.built_here
    assert served.routes["recommend"].current.runtime.index is shelf.indexes.open("recommend", 1)


def test_a_route_that_cannot_serve_the_model_is_refused(shelf) -> None:
    with pytest.raises(ValidationError, match=r"does not join; add features = \['user_activity'\]"):
        shelf.server(route={"features": []})
    with pytest.raises(ValidationError, match="over the index's limit"):
        shelf.server(route={"max_k": 5000})


def test_hot_swap_moves_model_and_index_together(shelf, running, wait_until) -> None:
    shelf.registry.set_alias("recommend", "swap", 1)
    server = shelf.server("recommend@swap")
    users = shelf.users[:60]
    seen: list[tuple[str, list[int], list[list[int]], list[list[float]]]] = []
    failures: list[str] = []
    rounds = [0] * 3  # requests each hammer has finished
    stop = threading.Event()
    with running(create_app(server)) as srv:

        def hammer(n: int, part: np.ndarray) -> None:
            with httpx.Client(base_url=srv.url) as client:
                i = 0
                while not stop.is_set():
                    ask = [int(u) for u in part[i % len(part) : i % len(part) + 2]]
                    i += 2
                    r = client.post(
                        "/v1/routes/recommend/predict",
                        json={"rows": [{"user_id": u, "k": 5} for u in ask]},
                    )
                    rounds[n] += 1
                    if r.status_code != 200:
                        failures.append(r.text)
                        continue
                    b = r.json()
                    seen.append((b["version"], ask, *b["predictions"].values()))

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            try:
                for n, part in enumerate(np.array_split(users, 3)):
                    pool.submit(hammer, n, part)
                wait_until(
                    lambda: len(seen) >= 10 or failures,
                    lambda: f"answers before the swap ({len(seen)} so far)",
                )
                shelf.registry.set_alias("recommend", "swap", 2, reason="fine-tuned")
                wait_until(
                    lambda: server.routes["recommend"].current.version == "recommend@2",
                    "the route to swap",
                    timeout=20,
                )
                # A request in flight at the swap may still be answered by the old version; the
                # next one each hammer sends cannot.
                swapped = list(rounds)
                wait_until(
                    lambda: (
                        failures or all(r >= s + 2 for r, s in zip(rounds, swapped, strict=True))
                    ),
                    lambda: f"answers after the swap (requests per hammer {rounds})",
                )
            finally:
                stop.set()
        with httpx.Client(base_url=srv.url) as client:
            after = predict(client, [{"user_id": int(u), "k": 10} for u in users])
    assert not failures
    versions = [s[0] for s in seen]
    assert versions[0] == "recommend@1" and versions[-1] == "recommend@2"
    runtime = server.routes["recommend"].current.runtime
    assert runtime.index is shelf.indexes.open("recommend", 2)
    # after the swap: the child's own top-k
    assert after["version"] == "recommend@2"
    assert overlap(after["predictions"]["items"], shelf.exact(users, 10, version=2)) >= 0.9
    # every answer, before and after, is one version's query against that version's items
    for version, asked, items, scores in seen:
        v = int(version.split("@")[1])
        u = np.repeat(asked, [len(r) for r in items])
        feats = np.repeat(shelf.user_features(np.array(asked), v), [len(r) for r in items], axis=0)
        want = shelf.models[v].score_ids(u, np.concatenate(items), feats)
        np.testing.assert_allclose(np.concatenate(scores), want, rtol=1e-5, atol=1e-5)


def test_compare_rankings() -> None:
    a = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [-1, -1, -1, -1]])
    b = np.array([[4, 3, 9, 8], [6, 5, 7, -1], [-1, -1, -1, -1]])
    sa = np.array([[4.0, 3.0, 2.0, 1.0], [2.0, 1.0, np.nan, np.nan], [np.nan] * 4])
    sb = np.array([[1.5, 2.0, 1.0, 0.5], [1.0, 2.5, 0.0, np.nan], [np.nan] * 4])
    diffs, scores = compare_rankings(a, b, sa, sb)
    assert diffs.tolist() == [0.5, 0.0, 0.0]
    # items 3 and 4: |2 - 2| and |1 - 1.5|; items 5 and 6: |2 - 2.5| and |1 - 1|
    assert scores[:2].tolist() == [0.25, 0.25] and np.isnan(scores[2])
    assert discrepancy("overlap", a, b).tolist() == diffs.tolist()
    with pytest.raises(ValidationError, match="tolerance of 1"):
        ShadowConfig(model="recommend@challenger", compare="overlap", tolerance=1.0)


def test_a_fine_tuned_child_is_shadowed_by_top_k_overlap(shelf, running) -> None:
    shelf.registry.set_alias("recommend", "primary", 1)
    clock = ManualClock(1_000_000.0)
    shadow = ShadowConfig(
        model="recommend@challenger",
        compare="overlap",
        tolerance=0.6,
        window_s=3600,
        min_samples=50,
        max_latency_ratio=1000.0,  # the candidate runs at the lowest priority on 2 cores
    )
    server = shelf.server("recommend@primary", clock=clock, route={"shadow": shadow})
    runner = server.routes["recommend"].shadow_runner
    assert runner.isolated, "the candidate should run in a process of its own"
    users = shelf.users[:100]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        bodies = [
            predict(client, [{"user_id": int(u), "k": k} for u in part])
            for part, k in zip(np.array_split(users, 25), [10, 5] * 13, strict=False)
        ]
        # a pair's score has no item list to overlap: not a shadow sample
        r = client.post(
            "/v2/models/recommend/infer",
            json={
                "inputs": [
                    {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [int(users[0])]},
                    {"name": "item_id", "datatype": "INT64", "shape": [1], "data": [1]},
                ]
            },
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 60
        while not server.shadows_idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        status = client.get("/v1/routes/recommend/traffic").json()["shadow"]
        refused = client.post(
            "/v1/routes/recommend/traffic",
            json={"shadow": {"model": "recommend@challenger", "compare": "abs"}},
        )
    assert refused.status_code == 400 and "use compare 'overlap'" in refused.json()["error"]
    assert status["compare"] == "overlap" and status["samples"] == len(users)
    assert status["candidate_error_rate"] == 0.0
    # the figure is the child's own top-k against what the primary answered
    child = shelf.server("recommend@2").routes["recommend"].current.runtime
    feats = shelf.user_features(users)
    ks = np.concatenate([[len(r) for r in b["predictions"]["items"]] for b in bodies])
    theirs = child.top_k(users, ks, feats)["items"]
    primary = [row for b in bodies for row in b["predictions"]["items"]]
    want = np.mean(
        [
            len(set(p) & set(t[t >= 0].tolist())) / len(p)
            for p, t in zip(primary, theirs, strict=True)
        ]
    )
    assert status["overlap"] == pytest.approx(want, abs=1e-9)
    assert status["discrepancy"] == pytest.approx(1 - want, abs=1e-9)
    assert status["score_diff"]["n"] > 0 and status["score_diff"]["mean"] >= 0
    # the controller decides on it once the window has passed: the child recommends much
    # what its parent does (its tables moved, its towers did not), so it is promoted
    controller = Controller(server, shelf.registry)
    assert controller.step() == []
    clock.advance(3601)
    [decision] = controller.step()
    assert decision.action == "promote" and status["ci95"][1] <= 0.6
    assert shelf.registry.get("recommend", "primary").version == 2
    assert server.routes["recommend"].current.version == "recommend@2"
    # with a tighter tolerance the same evidence rejects it
    strict = msgspec.structs.replace(shadow, tolerance=0.05)
    assert decide_shadow(strict, {**status, "elapsed_s": 3601.0}).action == "reject"
