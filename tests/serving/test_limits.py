"""What one request may ask: rows per request, keys per feature lookup, body size and the time
a client may take to send it — each refused with a status and the setting's name."""

from __future__ import annotations

import socket
import time

import httpx

from keel.config import AuthConfig, ServeConfig, TokenConfig
from keel.features.http import create_app as feature_app
from keel.serving import create_app
from keel.serving.auth import hash_token, new_token

LIMITS = ServeConfig(max_rows=8, max_keys=5, max_body_bytes=64_000, body_timeout_s=0.5)


def test_rows_per_request_and_a_slow_body_are_limited(fraud_server, world, running) -> None:
    with (
        running(create_app(fraud_server(), limits=LIMITS)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        ok = client.post("/v1/routes/fraud/predict", json={"rows": world.rows[:8]})
        assert ok.status_code == 200, ok.text
        for path in ("/v1/routes/fraud/predict", "/v1/routes/fraud/explain"):
            r = client.post(path, json={"rows": world.rows[:9]})
            assert r.status_code == 413 and "serve.max_rows" in r.json()["error"], r.text
        tensor = {
            "inputs": [
                {"name": "features", "datatype": "FP64", "shape": [9, 3], "data": [0.0] * 27}
            ]
        }
        r = client.post("/v2/models/fraud/infer", json=tensor)
        assert r.status_code == 413 and "at most 8 rows" in r.json()["error"]
        big = client.post("/v1/routes/fraud/predict", content=b" " * 70_000)
        assert big.status_code == 413 and "serve.max_body_bytes" in big.json()["error"]

        # A client that announces a body and sends it too slowly is answered 408.
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(
                b"POST /v1/routes/fraud/predict HTTP/1.1\r\nhost: x\r\n"
                b'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"rows"'
            )
            started = time.monotonic()
            sock.settimeout(10)
            answer = sock.recv(4096).decode()
            waited = time.monotonic() - started
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "serve.body_timeout_s" in answer and 0.4 < waited < 5
        assert client.get("/v2/health/live").status_code == 200


def test_feature_lookups_are_limited_and_take_a_data_token(world, running) -> None:
    secret = new_token()
    auth = AuthConfig(
        tokens=[TokenConfig(name="app", role="client", hash=hash_token(secret))],
        data_token=True,
    )
    app = feature_app(world.features, follow=False, auth=auth, limits=LIMITS)
    with running(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        body = {"features": ["card"], "keys": [1, 2, 3]}
        anonymous = client.post("/v1/features", json=body)
        assert anonymous.status_code == 401 and "client" in anonymous.json()["error"]
        bearer = {"authorization": f"Bearer {secret}"}
        ok = client.post("/v1/features", json=body, headers=bearer)
        assert ok.status_code == 200 and len(ok.json()["rows"]) == 3
        many = client.post(
            "/v1/features", json={"features": ["card"], "keys": list(range(6))}, headers=bearer
        )
        assert many.status_code == 413 and "serve.max_keys" in many.json()["error"]
        assert client.get("/healthz").status_code == 200
