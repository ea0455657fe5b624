"""Malformed requests that once reached a 500 answer 400 naming what was wrong, and the Open
Inference Protocol's version paths serve the version they name."""

from __future__ import annotations

import httpx
import numpy as np

from keel.config import CanaryConfig
from keel.serving import create_app


def _tensor(rows: int = 2, **spec) -> dict:
    doc = {
        "name": "features",
        "datatype": "FP64",
        "shape": [rows, 3],
        "data": [[1.0, 50.0, 20.0]] * rows,
    }
    return {"inputs": [{**doc, **spec}]}


def test_malformed_headers_and_bodies_answer_400_naming_the_fault(
    fraud_server, world, running
) -> None:
    server = fraud_server()
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        rows = {"rows": world.rows[:2]}
        r = client.post("/v1/routes/fraud/predict", json=rows, headers={"x-keel-priority": "hi"})
        assert r.status_code == 400 and "x-keel-priority" in r.json()["error"], r.text
        ok = client.post("/v1/routes/fraud/predict", json=rows, headers={"x-keel-priority": "3"})
        assert ok.status_code == 200, ok.text

        for body in (b"", b"{not json", b"[1, 2]", b'{"action": "maybe"}'):
            r = client.post("/v1/routes/fraud/decisions", content=body)
            assert r.status_code == 400, (body, r.text)
            assert "JSON" in r.json()["error"] or "'action'" in r.json()["error"]

        infer = "/v2/models/fraud/infer"
        cases = [
            (_tensor(datatype={"a": 1}), "datatype"),
            (_tensor(datatype=["FP64"]), "datatype"),
            (_tensor(datatype="FP99"), "FP99"),
            (_tensor(shape="2x3"), "shape"),
            (_tensor(shape=[-1, 3]), "shape"),
            (_tensor(parameters={"binary_data_size": "ten"}), "binary_data_size"),
            (_tensor(parameters=[1]), "parameters"),
            (_tensor(data=[[1, 2, 3], [4, 5]]), "not FP64"),
            (_tensor(data=["a", "b", "c", "d", "e", "f"]), "not FP64"),
            ({**_tensor(), "outputs": [{"name": 3}]}, "outputs"),
            ({**_tensor(), "parameters": "binary"}, "parameters"),
        ]
        for doc, words in cases:
            r = client.post(infer, json=doc)
            assert r.status_code == 400 and words in r.json()["error"], (doc, r.text)
        bad_len = client.post(
            infer,
            json=_tensor(),
            headers={"inference-header-content-length": "many"},
        )
        assert bad_len.status_code == 400 and "many" in bad_len.json()["error"]
        assert client.get("/v2/health/live").status_code == 200


def test_version_paths_serve_the_version_they_name(fraud_server, world, running) -> None:
    model, train = world.train(seed=2, trees=5)
    world.registry.register("fraud", model, training_set=train)
    server = fraud_server(canary=CanaryConfig(model="fraud@2", percent=1))
    x = np.array([[1.0, 50.0, 20.0], [3.0, 400.0, 250.0]])
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        for version, served in (("1", "fraud@1"), ("fraud@1", "fraud@1"), ("2", "fraud@2")):
            base = f"/v2/models/fraud/versions/{version}"
            r = client.post(f"{base}/infer", json=_tensor(data=x.tolist()))
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == served
            score = next(o for o in r.json()["outputs"] if o["name"] == "score")["data"]
            expected = world.registry.load("fraud", int(served[-1])).predict(x)
            np.testing.assert_allclose(score, expected, rtol=1e-9)
            assert client.get(base).json()["versions"] == [served]
            assert client.get(f"{base}/ready").json()["ready"] is True
        # Without an entity key (x-keel-key) the unversioned path serves the primary.
        plain = client.post("/v2/models/fraud/infer", json=_tensor(data=x.tolist()))
        assert plain.json()["model_version"] == "fraud@1"
        for path in ("/infer", "", "/ready"):
            url = f"/v2/models/fraud/versions/7{path}"
            r = client.post(url, json=_tensor()) if path == "/infer" else client.get(url)
            assert r.status_code == 404, (url, r.text)
            assert "'7'" in r.json()["error"] and "fraud@1, fraud@2" in r.json()["error"]


def test_an_unexpected_error_is_a_generic_500_and_unknown_paths_answer_json(
    fraud_server, world, running, monkeypatch
) -> None:
    server = fraud_server()

    def broken(name):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server, "traffic", broken)
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        r = client.get("/v1/routes/fraud/traffic")
        assert r.status_code == 500 and r.json() == {"error": "internal error"}
        assert client.get("/v2/health/live").status_code == 200
        missing = client.get("/v9/nothing")
        assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
        wrong = client.delete("/v1/routes")
        assert wrong.status_code == 405 and "error" in wrong.json()
