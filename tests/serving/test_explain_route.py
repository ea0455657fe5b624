"""``POST /v1/routes/{route}/explain``: explanations of the route's version, with the features
exactly as served — exact TreeSHAP, budgeted Kernel SHAP against a background from the
version's lineage, a registered surrogate rebuilt when the version changes — and the audit
topic; ``keel explain`` prints them."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from keel.cli import app as cli
from keel.config import ExplainConfig, RouteConfig
from keel.errors import KeelError, ValidationError
from keel.explain import kmeans_background
from keel.serving import InferenceServer, create_app
from keel.serving.explaining import EXPLANATIONS, training_matrix

NAMES = ["card__count_1h", "card__amount_1d", "amount"]


def server_for(world, **explain) -> InferenceServer:
    cfg = RouteConfig(
        name="fraud",
        model="fraud@champion",
        features=["card"],
        max_wait_ms=5,
        explain=ExplainConfig(**explain),
    )
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log
    )
    server.load_all()
    return server


def served_matrix(world, rows) -> np.ndarray:
    got = world.features.get_online(["card"], [r["card_id"] for r in rows])
    return np.column_stack(
        [got.values["card__count_1h"], got.values["card__amount_1d"], [r["amount"] for r in rows]]
    )


def contributions(answer) -> np.ndarray:
    return np.array(
        [[row["contributions"][n] for n in answer["features"]] for row in answer["explanations"]]
    )


def test_tree_explanations_are_exact_and_add_up_to_the_served_score(world, running) -> None:
    server = server_for(world)
    rows = world.rows[:5]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.post("/v1/routes/fraud/explain", json={"rows": rows})
        assert r.status_code == 200, r.text
        answer = r.json()
        predicted = client.post("/v1/routes/fraud/predict", json={"rows": rows}).json()
    assert answer["method"] == "tree" and answer["output"] == "raw"
    assert answer["version"] == "fraud@1" and answer["features"] == NAMES
    phi = contributions(answer)
    base = np.array([row["base_value"] for row in answer["explanations"]])
    # Additivity in log-odds, and the same row's served probability.
    raw = base + phi.sum(axis=1)
    np.testing.assert_allclose(raw, [row["output"] for row in answer["explanations"]], atol=1e-9)
    score = np.asarray(predicted["predictions"]["score"])
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), score, rtol=1e-9)
    np.testing.assert_allclose(answer["predictions"]["score"], score, rtol=1e-12)
    # The features as served: LightGBM's own contributions on the online store's values.
    booster = world.registry.load("fraud", 1)
    native = booster.predict(served_matrix(world, rows), pred_contrib=True)
    np.testing.assert_allclose(phi, native[:, :-1], atol=1e-9)
    np.testing.assert_allclose(base, native[:, -1], atol=1e-9)
    served = served_matrix(world, rows)
    for i, row in enumerate(answer["explanations"]):
        assert row["values"] == dict(zip(NAMES, served[i].tolist(), strict=True))


def test_kernel_shap_within_its_budget_and_a_clear_400_over_it(world, running) -> None:
    server = server_for(world, background=8, samples=64, max_evaluations=6 * 8 * 4)
    rows = world.rows[:4]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.post("/v1/routes/fraud/explain", json={"rows": rows, "method": "kernel"})
        assert r.status_code == 200, r.text
        answer = r.json()
        over = client.post(
            "/v1/routes/fraud/explain", json={"rows": world.rows[:5], "method": "kernel"}
        )
    assert answer["method"] == "kernel" and answer["output"] == "score"
    # Three features: all 6 coalitions are enumerated, so the values are exact Shapley values.
    assert answer["details"] == {"samples": 64, "background": 8, "exact": True}
    # Each row's coalitions against each background row, and the row and the background alone.
    assert 6 * 8 * 4 <= answer["evaluations"] <= 6 * 8 * 4 + 8 + 4
    # Efficiency: the contributions add up to the served probability.
    phi = contributions(answer)
    np.testing.assert_allclose(
        answer["base_value"] + phi.sum(axis=1), answer["predictions"]["score"], atol=1e-9
    )
    # The background is the version's training set (through its lineage) in 8 k-means
    # centers: the base is the model's mean score over them.
    x = training_matrix(world.registry, world.features, "fraud@1", NAMES)
    centers, weights = kmeans_background(x, k=8)
    score = world.registry.load("fraud", 1).predict(centers)
    assert answer["base_value"] == pytest.approx(float(weights @ score), abs=1e-12)
    assert over.status_code == 400
    message = over.json()["error"]
    assert "max_evaluations" in message and "at most 4 rows" in message


def test_a_surrogate_is_registered_with_its_fidelity_and_follows_the_version(
    world, running
) -> None:
    server = server_for(world, surrogate="tree")
    rows = world.rows[:6]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.post("/v1/routes/fraud/explain", json={"rows": rows, "method": "surrogate"})
        assert r.status_code == 200, r.text
        first = r.json()
        exact = client.post("/v1/routes/fraud/explain", json={"rows": rows}).json()
        # A new version: the route swaps, and its surrogate is refitted on it.
        model, train = world.train(seed=2, trees=30)
        world.registry.register("fraud", model, training_set=train)
        world.registry.set_alias("fraud", "champion", 2)
        assert server.reload("fraud")["serving"] == "fraud@2"
        second = client.post(
            "/v1/routes/fraud/explain", json={"rows": rows, "method": "surrogate"}
        ).json()
    assert first["method"] == "surrogate" and first["output"] == "raw"
    v1 = world.registry.get("fraud-surrogate", first["details"]["model"].split("@")[1])
    assert v1.params["surrogate_of"] == "fraud@1" and v1.params["kind"] == "tree"
    fidelity = first["details"]["fidelity"]
    assert fidelity == v1.metrics and 0.5 < fidelity["r2"] <= 1
    assert -1 <= fidelity["rank_correlation"] <= 1
    # It mimics the model's raw output: close to the exact explanation's outputs.
    gap = np.abs(
        np.array([e["output"] for e in first["explanations"]])
        - np.array([e["output"] for e in exact["explanations"]])
    )
    assert gap.max() < 2.0
    assert second["version"] == "fraud@2"
    v2 = world.registry.get("fraud-surrogate", second["details"]["model"].split("@")[1])
    assert v2.version != v1.version and v2.params["surrogate_of"] == "fraud@2"
    # A restarted server finds the registered surrogate instead of fitting another.
    again = server_for(world, surrogate="tree")
    before = len(world.registry.versions("fraud-surrogate"))
    prepared = again.explanations.prepare(again.routes["fraud"], "surrogate").result(60)
    assert prepared.details["model"] == v2.ref
    assert len(world.registry.versions("fraud-surrogate")) == before


def test_methods_a_model_cannot_give_answer_400_naming_the_ones_it_can(world, running) -> None:
    server = server_for(world)
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.post(
            "/v1/routes/fraud/explain", json={"rows": world.rows[:1], "method": "surrogate"}
        )
        assert r.status_code == 400 and "offers tree, kernel" in r.json()["error"]
        r = client.post("/v1/routes/fraud/explain", json={"rows": world.rows[:1], "method": "x"})
        assert r.status_code == 400 and "offers tree, kernel" in r.json()["error"]
        r = client.post("/v1/routes/fraud/explain", json={"rows": [{"amount": 3.0}]})
        assert r.status_code == 400 and "entity key 'card_id'" in r.json()["error"]
        r = client.post("/v1/routes/fraud/explain", json={"rows": world.rows[:1], "top": 0})
        assert r.status_code == 400 and "'top'" in r.json()["error"]
        r = client.post("/v1/routes/fraud/explain", content=b"{not json")
        assert r.status_code == 400
        r = client.post("/v1/routes/nope/explain", json={"rows": world.rows[:1]})
        assert r.status_code == 404
    with pytest.raises(ValidationError, match="surrogate"):
        ExplainConfig(method="surrogate")


def test_text_routes_have_no_explanation_method(world, running) -> None:
    server = InferenceServer([RouteConfig(name="embed", model="builtin:all-MiniLM-L6-v2")])
    server.load_all()
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.post("/v1/routes/embed/explain", json={"rows": [{"text": "a red shoe"}]})
    assert r.status_code == 400 and "no explanation method" in r.json()["error"]


def audit_records(log) -> list[dict]:
    try:
        ends = log.end_offsets(EXPLANATIONS.name)
    except KeelError:
        return []
    return [r for p in range(len(ends)) for r in log.read(EXPLANATIONS.name, p, 0).to_pylist()]


def test_sampled_predictions_are_explained_for_audit(world, running) -> None:
    server = server_for(world, audit=1.0)
    rows = world.rows[:3]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        assert client.post("/v1/routes/fraud/predict", json={"rows": rows}).status_code == 200
        deadline = time.monotonic() + 30
        while len(records := audit_records(world.log)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(records) == 3
    booster = world.registry.load("fraud", 1)
    x = served_matrix(world, rows)
    native = booster.predict(x, pred_contrib=True)
    for i, rec in enumerate(records):
        payload = json.loads(rec["payload"])
        assert rec["route"] == "fraud" and rec["version"] == "fraud@1" and rec["method"] == "tree"
        assert payload["features"] == dict(zip(NAMES, x[i].tolist(), strict=True))
        got = [payload["contributions"][n] for n in NAMES]
        np.testing.assert_allclose(got, native[i, :-1], atol=1e-9)


def test_keel_explain_prints_each_rows_contributions(world, running) -> None:
    server = server_for(world)
    with running(create_app(server)) as srv:
        out = CliRunner().invoke(
            cli,
            [
                "explain",
                "fraud",
                "--row",
                json.dumps(world.rows[0]),
                "--top",
                "2",
                "--url",
                srv.url,
            ],
        )
        bad = CliRunner().invoke(cli, ["explain", "fraud", "--row", "[1]", "--url", srv.url])
    assert out.exit_code == 0, out.output
    assert "fraud@1" in out.output and "tree SHAP (exact)" in out.output
    shown = [n for n in NAMES if n in out.output]
    assert len(shown) == 2  # the two largest contributions only
    assert bad.exit_code != 0 and "JSON object" in bad.output


def test_a_surrogate_that_cannot_be_built_ahead_of_requests_is_reported(world, caplog) -> None:
    server = server_for(world, surrogate="tree")
    route = server.routes["fraud"]
    server.explanations.prepare(route, "surrogate").result(60)
    # A version registered without its training set: nothing to fit a surrogate on.
    model, _ = world.train(seed=3, trees=20)
    bare = world.registry.register("fraud", model)
    world.registry.set_alias("fraud", "champion", bare.version)
    with caplog.at_level("WARNING", logger="keel.serving.explaining"):
        assert server.reload("fraud")["serving"] == bare.ref
        built = server.explanations.prepare(route, "surrogate")
        with pytest.raises(KeelError):
            built.result(60)
        deadline = time.monotonic() + 30
        while f"no surrogate for {bare.ref}" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert f"route fraud: no surrogate for {bare.ref}" in caplog.text
    server.explanations.close()
