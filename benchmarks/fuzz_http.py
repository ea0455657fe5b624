"""Fuzz the inference server with schemathesis against its own OpenAPI document.

A demo shop's fraud route (LightGBM, joined card features) is served over HTTP on 127.0.0.1;
schemathesis draws ``--cases`` requests spread over every documented operation (valid and
invalid bodies, headers and path parameters). Reported: answers by status class, any 5xx
(the 503 that sheds a deadline the route cannot meet, with Retry-After, is counted apart), the
cases per second, and whether the server still answers a normal prediction afterwards.

    .venv/bin/python benchmarks/fuzz_http.py            # 10,000 cases
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from bench_training import shop_project
from keel.demo.http import serving
from keel.serving import InferenceServer
from keel.serving.openapi import fuzzing_document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = shop_project(Path(tmp), users=500, days=14)
        project.train("fraud", alias="champion")
        cfg = next(r for r in project.settings.routes if r.name == "fraud")
        server = InferenceServer(
            [cfg], registry=project.registry, features=project.features, log_=project.log
        )
        server.load_all()
        with serving(server) as port:
            fuzz(f"http://127.0.0.1:{port}", args.cases)


def _fuzz_operation(
    op: Any, url: str, examples: int, statuses: collections.Counter[int], failures: list[str]
) -> None:
    @given(case=op.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        response = case.call(base_url=url, timeout=30)
        statuses[response.status_code] += 1
        shed = response.status_code == 503 and "retry-after" in response.headers
        if response.status_code >= 500 and not shed and len(failures) < 20:
            failures.append(f"{response.status_code} {case.as_curl_command()}")

    run()


def fuzz(url: str, cases: int) -> None:
    schema = schemathesis.openapi.from_dict(fuzzing_document(["fraud"]))
    operations = [op.ok() for op in schema.get_all_operations()]
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    started = time.perf_counter()
    # Hypothesis stops early on an operation with few distinct requests (a health check), so
    # rounds go on, with fresh draws, until the cases add up.
    while (done := sum(statuses.values())) < cases:
        per_op = -(-(cases - done) // len(operations))
        for op in operations:
            _fuzz_operation(op, url, per_op, statuses, failures)
    seconds = time.perf_counter() - started
    total = sum(statuses.values())
    by_class = collections.Counter(f"{s // 100}xx" for s in statuses.elements())
    shed = statuses[503]
    errors = sum(n for s, n in statuses.items() if s >= 500) - shed
    print(
        f"{total:,} cases over {len(operations)} operations in {seconds:.0f} s "
        f"({total / seconds:,.0f} cases/s)"
    )
    print("answers: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_class.items())))
    print("statuses: " + ", ".join(f"{k} {v:,}" for k, v in sorted(statuses.items())))
    print(f"5xx other than a shed deadline: {errors}; shed deadlines (503 + Retry-After): {shed}")
    for f in failures:
        print("  " + f)
    row = {"card_id": 1, "user_id": 1, "payment_id": 1, "amount": 20.0}
    after = httpx.post(f"{url}/v1/routes/fraud/predict", json={"rows": [row]}, timeout=30)
    live = httpx.get(f"{url}/v2/health/ready", timeout=30)
    print(
        f"afterwards: predict {after.status_code} ({after.json().get('version')}), "
        f"ready {live.status_code}"
    )


if __name__ == "__main__":
    main()
