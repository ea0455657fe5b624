"""Serving benchmarks: the all-MiniLM-L6-v2 route and a LightGBM route (30 features, 200
trees), each as configured (micro-batched) and served one request per forward pass.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_serving.py [--only
embed|runtimes|gbm]`` (``runtimes``: the embed route on torch, onnx and onnx-int8 side by side).
Starts ``keel serve`` in a subprocess and drives it with Keel's lean load generator from the
same machine (``keel bench`` does the same for any configured route).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

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


def shadow_overhead(
    proj: Project, seconds: float, concurrency: int, rate: float, segments: int = 5
) -> None:
    """The primary's latency at one paced load, alone and with a 100% shadow, in one run.

    The time under each setting is cut into ``segments`` that alternate (alone, shadow, ...,
    alone), so a burst of other work on the machine lands on both settings rather than on
    whichever ran at that moment; each setting's percentiles are over all its segments."""
    from keel.serving.client import call
    from keel.serving.loadgen import run_load

    shadow = {"model": "gbm@challenger", "sample": 1.0, "compare": "abs"}
    lat: dict[str, list[np.ndarray]] = {"alone": [], "with shadow": []}
    p99s: dict[str, list[float]] = {"alone": [], "with shadow": []}
    with served(proj, "gbm") as (port, cfg):
        path, bodies = requests_for(proj, cfg, port)
        run_load("127.0.0.1", port, path, bodies, concurrency=2, seconds=1.0)  # warm up
        # Start the candidate (and its process) before measuring, as a running shadow is.
        post(port, "/v1/routes/gbm/traffic", {"shadow": shadow})
        run_load("127.0.0.1", port, path, bodies, concurrency=2, seconds=2.0)
        plan = ["alone", "with shadow"] * segments + ["alone"]
        # the alone time is split over one more segment, so both settings get `seconds`
        length = {"alone": seconds / (segments + 1), "with shadow": seconds / segments}
        for label in plan:
            post(port, "/v1/routes/gbm/traffic", {"shadow": shadow if label != "alone" else None})
            r = run_load(
                "127.0.0.1",
                port,
                path,
                bodies,
                concurrency=concurrency,
                seconds=length[label],
                rate=rate,
            )
            lat[label].append(r.latencies_ms)
            p99s[label].append(r.pct(99))
            if label == "with shadow":
                status = call(f"http://127.0.0.1:{port}", "/v1/routes/gbm/traffic")["shadow"]
    print(
        f"shadow at 100% on route gbm, {rate:,.0f} req/s paced over {concurrency} connections, "
        f"{seconds:g} s per setting in {segments} alternating segments:"
    )
    p99 = {}
    for label, parts in lat.items():
        pooled = np.concatenate(parts)
        p99[label] = float(np.percentile(pooled, 99))
        print(
            f"  {label:12s} p50 {np.percentile(pooled, 50):5.2f} ms  p99 {p99[label]:5.2f} ms"
            f"  (segment p99s {', '.join(f'{x:.2f}' for x in p99s[label])})"
        )
    added = p99["with shadow"] / p99["alone"] - 1
    print(
        f"  added to the primary's p99: {added:+.1%} ({p99['with shadow'] - p99['alone']:+.2f} ms);"
        f" shadow samples compared in the last segment's state: {status['samples']}"
    )


def shadow_cpu(proj: Project, copies: int = 5000, rate: float = 1000) -> None:
    """CPU seconds the shadow takes from the server's process, per copy: measured on the
    runner's thread (Linux /proc), copies offered at ``rate`` per second, for the designs
    compared in BENCHMARKS.md. Unlike latency, this hardly moves with other load."""
    import os

    from keel.config import RouteConfig, ShadowConfig
    from keel.serving import InferenceServer
    from keel.serving.routes import Tensors
    from keel.serving.shadowing import ShadowRunner

    def thread_cpu(tid: int) -> float:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    print(f"shadow CPU in the server's process, {rate:,.0f} copies/s of one row:")
    x = np.random.default_rng(0).normal(size=(1, 30))
    for isolate, gather_s in ((False, 0.0), (False, 0.02), (True, 0.0), (True, 0.02)):
        cfg = RouteConfig(
            name="gbm", model="gbm@champion", shadow=ShadowConfig(model="gbm@challenger")
        )
        server = InferenceServer([cfg], registry=proj.registry, log_=proj.log)
        server.load_all()
        route = server.routes["gbm"]
        route.shadow_runner.close()  # replaced by one with the settings measured
        runner = route.shadow_runner = ShadowRunner(
            route, None, server.snapshot, registry=proj.registry, isolate=isolate, gather_s=gather_s
        )
        outputs = route.current.runtime.predict({"features": x})
        runner.offer(Tensors({"features": x}, 1), outputs, 1.0)  # starts the candidate
        while not runner.idle:
            time.sleep(0.01)
        items = [Tensors({"features": x}, 1) for _ in range(copies)]
        before, start = thread_cpu(runner._thread.native_id), time.perf_counter()
        for i, item in enumerate(items):
            runner.offer(item, outputs, 1.0)
            time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        while not runner.idle:
            time.sleep(0.001)
        used = thread_cpu(runner._thread.native_id) - before
        where = "in its own process" if runner.isolated else "on the shadow thread"
        print(
            f"  candidate {where:20s}, copies gathered {gather_s * 1000:3.0f} ms: "
            f"{used / copies * 1e6:5.0f} µs per copy ({runner.dropped} dropped)"
        )
        runner.close()


def runtimes(proj: Project, seconds: float, levels: tuple[int, ...] = (4, 8, 16, 32)) -> None:
    """The same embed route on torch, ONNX Runtime and ONNX Runtime int8, side by side."""
    import msgspec

    from keel.serving.loadgen import run_load

    names = {"embed": "torch", "embed-onnx": "onnx", "embed-int8": "onnx-int8"}
    with served(proj, "embed") as (port, cfg):
        for route, runtime in names.items():
            if route != cfg.name:  # the same route, another runtime, added at run time
                post(
                    port,
                    "/v1/routes",
                    {**msgspec.to_builtins(cfg), "name": route, "runtime": runtime},
                )
        path, bodies = requests_for(proj, cfg, port)
        results: dict[str, dict[int, Any]] = {}
        for route in names:
            route_path = path.replace("/embed/", f"/{route}/")
            run_load("127.0.0.1", port, route_path, bodies, concurrency=4, seconds=1.0)
            results[route] = {
                level: run_load(
                    "127.0.0.1", port, route_path, bodies, concurrency=level, seconds=seconds
                )
                for level in levels
            }
    print("the embed route by runtime (max_batch_size 16, max_wait_ms 10, 2 threads):")
    print(f"  {'conns':>5} | " + " | ".join(f"{n:>9} req/s  p99 ms" for n in names.values()))
    for level in levels:
        cells = [results[r][level] for r in names]
        print(f"  {level:5d} | " + " | ".join(f"{c.rps:15.0f} {c.pct(99):7.1f}" for c in cells))
    for bound in (50.0, 100.0):
        best = {
            r: max((x.rps for x in results[r].values() if x.pct(99) < bound), default=0.0)
            for r in names
        }
        base = best["embed"] or float("nan")
        print(
            f"  best req/s at p99 < {bound:g} ms: "
            + ", ".join(f"{names[r]} {best[r]:.0f} ({best[r] / base:.2f}x)" for r in names)
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
    ap.add_argument("--only", choices=["embed", "runtimes", "gbm", "shadow", "shadow-cpu"])
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
        if args.only in (None, "runtimes"):
            runtimes(proj, args.seconds)
        if args.only in (None, "gbm"):
            results = run_bench(proj, "gbm", [1, 8, 16, 32, 64], args.seconds)
            show("route gbm (LightGBM 30 features x 200 trees, one row per request):", results)
        if args.only in (None, "shadow"):
            shadow_overhead(proj, args.seconds, concurrency=4, rate=1000)
        if args.only in (None, "shadow-cpu"):
            shadow_cpu(proj)


if __name__ == "__main__":
    main()
