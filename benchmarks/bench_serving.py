"""Serving benchmarks: the all-MiniLM-L6-v2 route and a LightGBM route (30 features, 200
trees), each as configured (micro-batched) and served one request per forward pass.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_serving.py [--only embed|gbm]``.
Starts ``keel serve`` in a subprocess and drives it with Keel's lean load generator from the
same machine (``keel bench`` does the same for any configured route).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from keel.cli.serve import post, requests_for, run_bench, served
from keel.project import Project, init_project

ROUTES = """
[[routes]]
name = "embed"
model = "builtin:all-MiniLM-L6-v2"
max_batch_size = {embed_batch}
max_wait_ms = 10
threads = 2

[[routes]]
name = "gbm"
model = "gbm@champion"
max_batch_size = 256
max_wait_ms = 2
"""


def offline(n: int = 10) -> None:
    import torch

    from keel.cli.serve import WORDS
    from keel.embeddings import MiniLM

    torch.set_num_threads(2)
    model = MiniLM(batch_size=256)
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, 15)) for _ in range(32)]
    model(sentences[:2])
    print("offline all-MiniLM-L6-v2, 2 torch threads, 15-word sentences:")
    for b in (1, 4, 8, 16):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            model(sentences[:b])
            times.append(time.perf_counter() - t)
        med = float(np.median(times))
        print(f"  batch {b:2d}: {med * 1000:6.1f} ms  {b / med:6.0f} sentences/s")


def setup(root: Path, embed_batch: int) -> Project:
    import lightgbm

    init_project(root, name="bench", force=True)
    # Only the routes measured here (the example project declares its own).
    (root / "keel.toml").write_text('name = "bench"\n' + ROUTES.format(embed_batch=embed_batch))
    proj = Project.load(root / "keel.toml")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 30))
    y = (x[:, :5].sum(axis=1) + rng.normal(size=5000) > 0).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=200, num_leaves=31, verbose=-1).fit(x, y)
    v = proj.registry.register("gbm", model)
    proj.registry.set_alias("gbm", "champion", v.version)
    other = lightgbm.LGBMClassifier(
        n_estimators=200, num_leaves=31, subsample=0.8, subsample_freq=1, verbose=-1, random_state=3
    ).fit(x, y)
    c = proj.registry.register("gbm", other)
    proj.registry.set_alias("gbm", "challenger", c.version)
    return proj


def shadow_overhead(proj: Project, seconds: float, concurrency: int, rate: float) -> None:
    """The primary's latency at one paced load, alone and with a 100% shadow, in one run."""
    from keel.serving.loadgen import run_load

    with served(proj, "gbm") as (port, cfg):
        path, bodies = requests_for(proj, cfg, port)
        run_load("127.0.0.1", port, path, bodies, concurrency=2, seconds=1.0)  # warm up
        rows = []
        for label in ("alone", "with shadow", "alone again"):
            if label == "with shadow":
                post(
                    port,
                    "/v1/routes/gbm/traffic",
                    {"shadow": {"model": "gbm@challenger", "sample": 1.0, "compare": "abs"}},
                )
            if label == "alone again":
                post(port, "/v1/routes/gbm/traffic", {"shadow": None})
            rows.append(
                (
                    label,
                    run_load(
                        "127.0.0.1",
                        port,
                        path,
                        bodies,
                        concurrency=concurrency,
                        seconds=seconds,
                        rate=rate,
                    ),
                )
            )
    print(f"shadow at 100% on route gbm, {rate:,.0f} req/s paced over {concurrency} connections:")
    for label, r in rows:
        print(
            f"  {label:12s} {r.rps:7.0f} req/s  p50 {r.pct(50):5.2f} ms  p99 {r.pct(99):5.2f} ms"
            + (f"  ({r.errors} errors)" if r.errors else "")
        )


def show(title: str, results: dict) -> None:
    print(title)
    print(
        f"  {'conns':>5} | {'batched req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'unbatched req/s':>15} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for level in results["batched"]:
        a, b = results["batched"][level], results["unbatched"][level]
        print(
            f"  {level:5d} | {a.rps:13.0f} {a.pct(50):7.1f} {a.pct(99):7.1f} | "
            f"{b.rps:15.0f} {b.pct(50):7.1f} {b.pct(99):7.1f}"
            + (f"   ({a.errors + b.errors} errors)" if a.errors + b.errors else "")
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=["embed", "gbm", "shadow"])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--embed-batch", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        proj = setup(Path(d), args.embed_batch)
        if args.only in (None, "embed"):
            offline()
            results = run_bench(proj, "embed", [1, 4, 8, 16, 24, 32, 48], args.seconds)
            show(
                "route embed (MiniLM, max_batch_size "
                f"{args.embed_batch}, max_wait_ms 10) vs one request per forward pass:",
                results,
            )
        if args.only in (None, "gbm"):
            results = run_bench(proj, "gbm", [1, 8, 16, 32, 64], args.seconds)
            show("route gbm (LightGBM 30 features x 200 trees, one row per request):", results)
        if args.only in (None, "shadow"):
            shadow_overhead(proj, args.seconds, concurrency=4, rate=1000)


if __name__ == "__main__":
    main()
