"""Explanations: exact TreeSHAP on the fraud model against predict and against ``shap``;
Kernel SHAP on a small torch model against its inference time and an exact reference; and the
fraud model's surrogates — latency per row with their fidelity beside it. ``shap`` is measured
in the same run, on the same rows.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_explain.py [--users 3000]
[--days 14] [--rows 1000]``. Every figure is per request of one row (the way an explain
endpoint is called), median and p99 over ``--rows`` rows of the fraud model's training set.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench_training import shop_project
from keel.explain import KernelExplainer, TreeExplainer, fit_surrogate, kmeans_background
from keel.runtimes import LightGBMRuntime
from keel.training.dataset import matrix


def per_row(fn: Callable[[np.ndarray], Any], x: np.ndarray) -> tuple[float, float]:
    """Median and p99 milliseconds of ``fn`` on each row of ``x`` alone."""
    fn(x[:1])  # warm
    times = []
    for i in range(len(x)):
        start = time.perf_counter()
        fn(x[i : i + 1])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), float(np.percentile(times, 99))


def fraud(users: int, days: float, rows: int) -> None:
    import shap

    with tempfile.TemporaryDirectory() as tmp:
        project = shop_project(Path(tmp), users, days)
        result = project.train("fraud")
        data = result.data
        x_all = matrix(data.table, data.names)
        runtime = LightGBMRuntime(project.registry.load("fraud", result.version.version))
    x = x_all[np.random.default_rng(0).choice(len(x_all), min(rows, len(x_all)), replace=False)]
    print(
        f"fraud model {result.version.ref}: LightGBM, {len(data.names)} features, "
        f"{runtime.booster.num_trees()} trees; {len(x):,} rows explained one at a time"
    )
    name = runtime.inputs[0].name
    start = time.perf_counter()
    keel_tree = TreeExplainer(runtime)
    tables_ms = (time.perf_counter() - start) * 1000
    forest = keel_tree.forest
    if forest is not None:
        print(
            f"  Keel's {keel_tree.algorithm} TreeSHAP tables: {forest.table.nbytes / 2**20:.1f} "
            f"MiB over {len(forest.leaf_depth):,} leaves (up to {forest.leaf_depth.max()} "
            f"features a path), built in {tables_ms:.0f} ms"
        )
    start = time.perf_counter()
    theirs = shap.TreeExplainer(runtime.booster)
    shap_setup = (time.perf_counter() - start) * 1000
    booster = runtime.booster
    figures = {
        "predict": per_row(lambda r: runtime.predict({name: r}), x),
        "Keel TreeSHAP": per_row(keel_tree.explain, x),
        "LightGBM's pred_contrib": per_row(
            lambda r: booster.predict(r, pred_contrib=True, num_threads=1), x
        ),
        "shap.TreeExplainer(model) per request": per_row(
            lambda r: shap.TreeExplainer(booster).shap_values(r), x[:50]
        ),
        "shap.TreeExplainer built once, per row": per_row(theirs.shap_values, x),
    }
    # Both give the same values (what the unit tests assert to 1e-6), here on every row.
    ours = keel_tree.explain(x).contributions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(theirs.shap_values(x))
    ref = ref[-1] if ref.ndim == 3 else ref
    predict = figures["predict"][0]
    for label, (median, p99) in figures.items():
        print(
            f"  {label:40s} median {median:8.3f} ms  p99 {p99:8.3f} ms  "
            f"{median / predict:6.1f}× predict"
        )
    keel_ms = figures["Keel TreeSHAP"][0]
    native = figures["LightGBM's pred_contrib"][0]
    per_request = figures["shap.TreeExplainer(model) per request"][0]
    warm = figures["shap.TreeExplainer built once, per row"][0]
    print(
        f"  Keel / predict {keel_ms / predict:.2f}× (goal ≤ 3×); LightGBM's pred_contrib / "
        f"Keel {native / keel_ms:.2f}×; shap.TreeExplainer per "
        f"request / Keel {per_request / keel_ms:.0f}× (goal ≥ 10×); kept warm, shap's own "
        f"call / Keel {warm / keel_ms:.2f}× (building it once took {shap_setup:.1f} ms); "
        f"largest |Keel - shap| {np.max(np.abs(ours - ref)):.2e}"
    )
    surrogates(runtime, keel_tree, x_all, x)


def surrogates(runtime: Any, exact: TreeExplainer, x_all: np.ndarray, x: np.ndarray) -> None:
    target = exact.explain(x_all).outputs
    for kind in ("tree", "linear"):
        start = time.perf_counter()
        s = fit_surrogate(x_all, target, exact.features, kind=kind, reference=exact)
        fit_s = time.perf_counter() - start
        explainer = s.explainer()
        median, p99 = per_row(explainer.explain, x)
        f = s.fidelity
        print(
            f"  surrogate {kind:6s} median {median:6.3f} ms  p99 {p99:6.3f} ms per row (goal "
            f"p99 ≤ 1 ms); fidelity on {int(f['rows']):,} held-out rows: R² {f['r2']:.3f}, "
            f"attribution rank correlation {f.get('rank_correlation', float('nan')):.3f}; "
            f"fitted in {fit_s:.2f} s"
        )


def kernel(features: int, background: int) -> None:
    """Kernel SHAP on a small torch MLP: cost against inference, error against exact."""
    import shap
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4_000, features))
    y = (x[:, 0] * x[:, 1] + np.sin(x[:, 2]) + 0.5 * x[:, 3] > 0).astype(np.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(features, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(xt).reshape(-1), yt).backward()
        opt.step()
    net.eval()

    def f(rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = net(torch.as_tensor(rows, dtype=torch.float32)).reshape(-1)
            return torch.sigmoid(out).double().numpy()

    bg, w = kmeans_background(x, k=background)
    probe = x[rng.choice(len(x), 20, replace=False)]
    full = 2**features - 2
    exact = KernelExplainer(f, bg, [f"f{i}" for i in range(features)], weights=w, samples=full)
    truth = exact.explain(probe).contributions
    scale = float(np.mean(np.abs(truth)))
    infer, _ = per_row(f, probe)
    print(
        f"Kernel SHAP, torch MLP ({features} features, {background} k-means background rows): "
        f"inference {infer:.3f} ms a row; exact reference: all {full} coalitions"
    )
    for samples in (64, 256, full):
        ex = KernelExplainer(f, bg, exact.features, weights=w, samples=samples)
        median, _ = per_row(ex.explain, probe)
        err = float(np.mean(np.abs(ex.explain(probe).contributions - truth)))
        print(
            f"  Keel, {samples:4d} coalitions: {median:8.2f} ms an explanation "
            f"({median / infer:7.0f}× inference, {ex.cost(1):,} evaluations); mean |error| "
            f"{err / scale:.1%} of mean |phi|"
        )
    theirs = shap.KernelExplainer(f, shap.kmeans(x, background))
    for samples in (256, full):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            median, _ = per_row(
                lambda r, s=samples: theirs.shap_values(r, nsamples=s, silent=True), probe[:5]
            )
            got = np.asarray(theirs.shap_values(probe, nsamples=samples, silent=True))
        err = float(np.mean(np.abs(got.reshape(truth.shape) - truth)))
        print(
            f"  shap.KernelExplainer, nsamples {samples:4d}: {median:8.2f} ms an explanation "
            f"({median / infer:7.0f}× inference); mean |error| {err / scale:.1%} of mean |phi| "
            "(its own k-means background)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=float, default=14)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--background", type=int, default=20)
    args = parser.parse_args()
    # (shap warns on every LightGBM classifier it is handed, and on its own deprecations.)
    warnings.simplefilter("ignore")
    fraud(args.users, args.days, args.rows)
    kernel(args.features, args.background)


if __name__ == "__main__":
    main()
