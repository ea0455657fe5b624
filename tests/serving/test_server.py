"""The inference server over real HTTP: the Open Inference Protocol (also with tritonclient),
route predictions with joined features, hot swap under load, fast path, bad input, metrics."""

from __future__ import annotations

import concurrent.futures
import json
import threading

import httpx
import numpy as np
import pytest

from keel.config import FastPathConfig, RouteConfig
from keel.serving import InferenceServer, create_app


def server_for(world, **route_kw) -> InferenceServer:
    cfg = RouteConfig(
        name="fraud", model="fraud@champion", features=["card"], max_wait_ms=5, **route_kw
    )
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log
    )
    server.load_all()
    return server


def test_predict_joins_features_and_reports_staleness(world, running) -> None:
    server = server_for(world)
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.post("/v1/routes/fraud/predict", json={"rows": world.rows[:3]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == "fraud@1"
        scores = body["predictions"]["score"]
        assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
        assert set(body["staleness_s"]) == {"card__count_1h", "card__amount_1d"}
        # The same rows predicted offline give the same scores: features joined correctly.
        model = world.registry.load("fraud", 1)
        got = world.features.get_online(["card"], [r["card_id"] for r in world.rows[:3]])
        x = np.column_stack(
            [
                got.values["card__count_1h"],
                got.values["card__amount_1d"],
                [r["amount"] for r in world.rows[:3]],
            ]
        )
        np.testing.assert_allclose(scores, model.predict(x), rtol=1e-9)
        bad = client.post("/v1/routes/fraud/predict", json={"rows": [{"amount": 1.0}]})
        assert bad.status_code == 400 and "entity key 'card_id'" in bad.json()["error"]
        metrics = client.get("/metrics").text
        assert 'keel_requests_total{route="fraud",status="ok",version="fraud@1"}' in metrics
        assert "keel_batch_size_bucket" in metrics and "keel_feature_staleness_seconds" in metrics


def test_open_inference_protocol_json_and_errors(world, running) -> None:
    server = server_for(world)
    with (
        running(create_app(server, max_body=4096)) as srv,
        httpx.Client(base_url=srv.url) as client,
    ):
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 200
        assert "binary_tensor_data" in client.get("/v2").json()["extensions"]
        meta = client.get("/v2/models/fraud").json()
        assert meta["versions"] == ["fraud@1"] and meta["platform"] == "lightgbm"
        assert meta["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 3]}]
        x = [[1.0, 50.0, 80.0], [0.0, 10.0, 5.0]]
        r = client.post(
            "/v2/models/fraud/infer",
            json={
                "id": "a1",
                "inputs": [{"name": "features", "datatype": "FP64", "shape": [2, 3], "data": x}],
            },
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "a1" and out["model_version"] == "fraud@1"
        np.testing.assert_allclose(
            out["outputs"][0]["data"], world.registry.load("fraud", 1).predict(np.array(x))
        )
        cases = [
            (b"{not json", 400, "not JSON"),
            (json.dumps({"inputs": []}).encode(), 400, "non-empty 'inputs'"),
            (
                json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "features",
                                "datatype": "FP64",
                                "shape": [1, 2],
                                "data": [1.0, 2.0],
                            }
                        ]
                    }
                ).encode(),
                400,
                "dimension 1 must be 3",
            ),
            (
                json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "feats",
                                "datatype": "FP64",
                                "shape": [1, 3],
                                "data": [1, 2, 3],
                            }
                        ]
                    }
                ).encode(),
                400,
                "no input 'feats'",
            ),
            (
                json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "features",
                                "datatype": "BYTES",
                                "shape": [1, 3],
                                "data": ["a", "b", "c"],
                            }
                        ]
                    }
                ).encode(),
                400,
                "numbers",
            ),
            (
                json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "features",
                                "datatype": "FP64",
                                "shape": [2, 3],
                                "data": [1, 2, 3],
                            }
                        ]
                    }
                ).encode(),
                400,
                "do not fill",
            ),
        ]
        for body, status, message in cases:
            r = client.post("/v2/models/fraud/infer", content=body)
            assert r.status_code == status and message in r.json()["error"], (body, r.text)
        missing = client.post("/v2/models/nope/infer", json={"inputs": []})
        assert missing.status_code == 404 and "no route 'nope'" in missing.json()["error"]
        huge = client.post("/v2/models/fraud/infer", content=b"x" * 5000)
        assert huge.status_code == 413
        # the server lives on
        assert client.get("/v2/health/live").status_code == 200


def test_tritonclient_with_its_default_binary_tensors(world, running) -> None:
    import tritonclient.http as triton

    server = server_for(world)
    with running(create_app(server)) as srv:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{srv.port}")
        assert client.is_server_live() and client.is_model_ready("fraud")
        assert client.get_model_metadata("fraud")["platform"] == "lightgbm"
        x = np.array([[1.0, 50.0, 80.0], [2.0, 500.0, 300.0], [0.0, 0.0, 1.0]])
        inp = triton.InferInput("features", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)  # binary by default
        result = client.infer("fraud", [inp], outputs=[triton.InferRequestedOutput("score")])
        np.testing.assert_allclose(
            result.as_numpy("score"), world.registry.load("fraud", 1).predict(x)
        )
        client.close()


def test_hot_swap_under_load_fails_nothing(world, running, wait_until) -> None:
    server = server_for(world)
    model2, train2 = world.train(seed=2, trees=40)
    world.registry.register("fraud", model2, training_set=train2)
    stop = threading.Event()
    seen: list[str] = []
    failures: list[str] = []
    rounds = [0] * 4  # requests each hammer has finished
    with running(create_app(server)) as srv:

        def hammer(n: int) -> None:
            with httpx.Client(base_url=srv.url) as client:
                i = 0
                while not stop.is_set():
                    r = client.post(
                        "/v1/routes/fraud/predict", json={"rows": [world.rows[i % len(world.rows)]]}
                    )
                    i += 1
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        seen.append(r.json()["version"])
                    rounds[n] += 1

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            try:
                for n in range(4):
                    pool.submit(hammer, n)
                wait_until(
                    lambda: len(seen) >= 20 or failures,
                    lambda: f"answers before the swap ({len(seen)} so far)",
                )
                world.registry.set_alias("fraud", "champion", 2, reason="better")
                wait_until(
                    lambda: server.routes["fraud"].current.version == "fraud@2",
                    "the route to swap",
                    timeout=20,
                )
                # A request in flight at the swap may still be answered by the old version; the
                # next one each hammer sends cannot. Enough answers after the first from the new
                # version that the check on what follows it has some to look at.
                swapped = list(rounds)
                wait_until(
                    lambda: (
                        failures
                        or (
                            all(r >= s + 2 for r, s in zip(rounds, swapped, strict=True))
                            and "fraud@2" in seen
                            and len(seen) - seen.index("fraud@2") > 60
                        )
                    ),
                    lambda: f"answers after the swap (requests per hammer {rounds})",
                )
            finally:
                stop.set()
    assert not failures
    assert seen[0] == "fraud@1" and seen[-1] == "fraud@2"
    assert seen.index("fraud@2") > 0 and "fraud@1" not in seen[seen.index("fraud@2") + 50 :]


def test_a_version_that_fails_to_load_never_takes_traffic(world, running) -> None:
    server = server_for(world)
    model2, train2 = world.train(seed=3)
    v2 = world.registry.register("fraud", model2, training_set=train2)
    artifact = world.tmp / "artifacts" / v2.artifact[:2] / v2.artifact
    artifact.write_bytes(b"corrupted")
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        world.registry.set_alias("fraud", "champion", 2, reason="bad one")
        r = client.post("/v1/routes/fraud/reload")
        assert r.status_code == 409
        assert r.json()["serving"] == "fraud@1" and "corrupt" in r.json()["error"]
        ok = client.post("/v1/routes/fraud/predict", json={"rows": world.rows[:1]})
        assert ok.status_code == 200 and ok.json()["version"] == "fraud@1"
        routes = client.get("/v1/routes").json()
        assert routes[0]["last_error"] and routes[0]["serving"] == "fraud@1"


def test_fast_path_for_strict_deadlines(world, running) -> None:
    small, train = world.train(seed=4, trees=3)
    world.registry.register("fraud_small", small, training_set=train)
    server = server_for(
        world, fast_path=FastPathConfig(model="fraud_small@1", features=["card"], below_ms=20)
    )
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        strict = client.post(
            "/v1/routes/fraud/predict",
            json={"rows": world.rows[:2]},
            headers={"x-keel-deadline-ms": "5"},
        )
        relaxed = client.post(
            "/v1/routes/fraud/predict",
            json={"rows": world.rows[:2]},
            headers={"x-keel-deadline-ms": "500"},
        )
        assert strict.json()["version"] == "fraud_small@1"
        assert relaxed.json()["version"] == "fraud@1"
        bad = client.post(
            "/v1/routes/fraud/predict",
            json={"rows": world.rows[:1]},
            headers={"x-keel-deadline-ms": "soon"},
        )
        assert bad.status_code == 400


@pytest.mark.slow
def test_text_embedding_route(world, running) -> None:
    cfg = RouteConfig(name="embed", model="builtin:all-MiniLM-L6-v2", max_batch_size=16)
    server = InferenceServer([cfg])
    server.load_all()
    texts = ["wireless headphones", "bluetooth earbuds", "a vegetarian cookbook"]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:

        def one(t: str) -> np.ndarray:
            r = client.post(
                "/v2/models/embed/infer",
                json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]},
            )
            assert r.status_code == 200, r.text
            return np.array(r.json()["outputs"][0]["data"]).reshape(1, 384)[0]

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            vectors = list(pool.map(one, texts))
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_a_text_route_runs_the_runtime_its_config_names(tmp_path, monkeypatch) -> None:
    """runtime = "onnx-int8": the same route, served by ONNX Runtime with int8 matrix
    products, answering what the torch route answers (cosine >= 0.99)."""
    import asyncio

    from keel.serving.routes import Tensors

    monkeypatch.setenv("KEEL_CACHE_DIR", str(tmp_path))
    texts = np.array([b"wireless headphones", b"a vegetarian cookbook", b"track my order"])
    answers = {}
    for runtime in ("auto", "onnx-int8"):
        cfg = RouteConfig(name="embed", model="builtin:all-MiniLM-L6-v2", runtime=runtime)
        server = InferenceServer([cfg])
        server.load_all()
        assert server.routes["embed"].current.runtime.platform == (
            "pytorch_transformers" if runtime == "auto" else "onnxruntime_onnx"
        )

        async def embed(server: InferenceServer = server) -> np.ndarray:
            await server.start()
            try:
                answer = await server.infer("embed", Tensors({"text": texts}, len(texts)))
            finally:
                await server.stop()
            return answer.outputs["embedding"]

        answers[runtime] = asyncio.run(embed())
    assert ((answers["auto"] * answers["onnx-int8"]).sum(1) >= 0.99).all()
