"""The fraud route's fast path while its main route runs at its peak.

A route serving fraud@champion (13 features joined per micro-batch) with a fast path of
fraud_small@champion (a 20-tree model on the card view's features) reading its own replica of
that view. The fast path answers from a process of its own (``keel serve --fast-port``, here
``--fast-only`` started beside the main server) and, for comparison, inside the main server
(a request whose deadline is below ``below_ms``). Measured in one run: the fast path alone at
``--rate`` requests/s; the main route alone at its peak (``--concurrency`` connections, as fast
as answers come); then both at once. The two load generators run in their own processes,
beside the servers, on the same machine.

Run: ``.venv/bin/python benchmarks/bench_fast_path.py [--users 2000] [--rate 1000]
[--concurrency 32] [--seconds 10]``. Goal (issue: performance against the peers): fast-path
p99 <= 2 ms at 1,000 requests/s while the main route runs at its peak.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_training import shop_project
from keel.cli.serve import requests_for, served
from keel.project import Project
from keel.serving.loadgen import run_load
from keel.training import LightGBM

STRICT = {"x-keel-deadline-ms": "5"}
FAST_ROUTE = """
[[routes]]
name = "fraud-fast"
model = "fraud@champion"
features = ["card_payments", "user_activity"]
max_batch_size = 64
max_wait_ms = 5

[routes.fast_path]
model = "fraud_small@champion"
features = ["card_payments"]
below_ms = 10
"""


def _load(args: tuple[int, str, list[bytes], int, float, dict[str, str], float | None]) -> Any:
    port, path, bodies, concurrency, seconds, headers, rate = args
    return run_load(
        "127.0.0.1",
        port,
        path,
        bodies,
        concurrency=concurrency,
        seconds=seconds,
        headers=headers,
        rate=rate,
    )


def line(label: str, r: Any) -> str:
    return (
        f"  {label:52s} {r.rps:7.0f} req/s  p50 {r.pct(50):7.2f} ms  "
        f"p99 {r.pct(99):7.2f} ms  errors {r.errors}"
    )


def in_process(project: Any, bodies: list[bytes], n: int = 2_000) -> tuple[float, float]:
    """Median and p99 ms of the fast path's own answer (its thread, its replica's lookup, the
    small model), without HTTP."""
    import asyncio
    import json

    import numpy as np

    from keel.config import FastPathConfig
    from keel.serving.fast_path import FastPath
    from keel.serving.routes import Rows, load

    deployed = load("fraud_small@champion", project.registry, device="cpu")
    config = FastPathConfig(model="fraud_small@champion", features=["card_payments"])
    fast = FastPath("fraud", config, deployed, project.features)
    payloads = [Rows(json.loads(b)["rows"], 1) for b in bodies]

    async def run() -> list[float]:
        times = []
        for i in range(n):
            start = time.perf_counter()
            await fast.answer(payloads[i % len(payloads)])
            times.append((time.perf_counter() - start) * 1000)
        return times

    times = asyncio.run(run())[100:]
    fast.close()
    return float(np.median(times)), float(np.percentile(times, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--days", type=float, default=14.0)
    ap.add_argument("--rate", type=float, default=1_000.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = shop_project(Path(tmp), args.users, args.days)
        project.train("fraud", alias="champion")
        declared = project.model("fraud")
        small = dataclasses.replace(
            declared,
            name="fraud_small",
            features=["card_payments"],
            trainer=LightGBM(params={"num_iterations": 20, "num_leaves": 7}, seed=7),
        )
        project.train(small, alias="champion")
        # The route with its fast path, declared in keel.toml: `keel serve --fast-port`
        # serves the fast path from a process of its own.
        config = Path(project.settings.project_dir) / "keel.toml"
        config.write_text(config.read_text() + FAST_ROUTE)
        project = Project.load(config)
        with served(project, "fraud-fast") as (port, cfg), fast_server(config) as fast_port:
            path, bodies = requests_for(project, cfg, port)
            # The main route's requests, and the same rows sent to the fast path's own port.
            main_load = (port, path, bodies, args.concurrency, args.seconds, {}, None)
            shared = (port, path, bodies, 16, args.seconds, STRICT, args.rate)
            own = (fast_port, path, bodies, 16, args.seconds, {}, args.rate)
            for warm in (main_load, shared, own):
                _load((*warm[:3], 4, 2.0, warm[5], None))
            print(
                f"fraud route ({len(bodies)} distinct rows); fast path fraud_small@champion "
                f"on its own replica of card_payments; {args.seconds:g} s per measure"
            )
            median, p99 = in_process(project, bodies)
            print(
                f"  {'the fast path in process, no HTTP':52s} {'':13s}  p50 {median:7.2f} ms  "
                f"p99 {p99:7.2f} ms"
            )
            alone = _load(own)
            print(line(f"fast path's own process alone, paced at {args.rate:g}/s", alone))
            peak = _load(main_load)
            print(line(f"main route alone, {args.concurrency} connections", peak))
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                both = pool.map(_load, [own, main_load])
                print(line("fast path's own process, main route at its peak", both[0]))
                print(line("main route, with the fast path beside it", both[1]))
                inside = pool.map(_load, [shared, main_load])
                print(line("fast path in the main server, main at its peak", inside[0]))
            print(
                "  fast-path p99 under the main route's peak: own process "
                f"{both[0].pct(99):.2f} ms, inside the main server {inside[0].pct(99):.2f} ms "
                f"(goal <= 2 ms at {args.rate:g}/s; alone {alone.pct(99):.2f} ms)"
            )


@contextlib.contextmanager
def fast_server(config: Path) -> Iterator[int]:
    """``keel serve --fast-only`` for the fraud-fast route: yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "keel", "-c", str(config), "serve", "--fast-only"]
    proc = subprocess.Popen(
        [*cmd, "--route", "fraud-fast", "--port", str(port)], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("keel serve --fast-only did not start") from None
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
