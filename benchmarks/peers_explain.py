"""The ``explain`` section of ``make bench-peers``: Keel's explainers beside the ``shap`` package.

One LightGBM model for both sides: trained here on synthetic rows (a binary target of
interacting, correlated features, some values missing), saved as a LightGBM text model file
and loaded from that file by both Keel and shap, under the same lightgbm version.

What is timed (the explainers built once, kept warm, one thread each)
    TreeSHAP: Keel's ``TreeExplainer`` (its fast TreeSHAP tables) against
    ``shap.TreeExplainer(booster)`` (which calls LightGBM's own ``pred_contrib``, on
    ``--explain-shap-threads`` OpenMP threads), on a batch of rows in one call (rows per second,
    median of ``--explain-repeat``) and on single rows (p50 of one call per row, as an
    explain endpoint is called). Both give exact path-dependent TreeSHAP values of the raw
    margin; the note gives the largest difference over the batch.
    Kernel SHAP: Keel's ``KernelExplainer`` against ``shap.KernelExplainer`` on the same
    model function (the booster's raw margin on one thread), the same background rows
    (equal weights) and the same number of coalitions: by default all ``2**m - 2`` of them,
    where both compute exact Shapley values and must agree to rounding; shap is asked for
    the plain least squares Keel solves (``l1_reg=False``). Single rows (p50) and one batch
    call (milliseconds per row; shap explains a batch row by row, Keel in one model call).

No goal ratios: bench_explain states its goals against predict and against building a
shap explainer per request, not against a warm shap explainer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from keel.explain import KernelExplainer, TreeExplainer
from peers_common import Row, peer_python, run_peer

SECTION = "explain"
# lightgbm pinned to the version in Keel's venv: both sides read the same model file.
PINS = ["shap==0.51.0", "lightgbm==4.7.0", "numpy==2.4.6", "pyarrow==26.0.1"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("explain (Keel's explainers beside shap)")
    g.add_argument("--explain-features", type=int, default=10, help="model features")
    g.add_argument("--explain-trees", type=int, default=300, help="boosting rounds")
    g.add_argument("--explain-leaves", type=int, default=31, help="leaves per tree")
    g.add_argument("--explain-train", type=int, default=20_000, help="training rows")
    g.add_argument(
        "--explain-batch", type=int, default=10_000, help="rows of the batch (÷10 with --quick)"
    )
    g.add_argument(
        "--explain-single",
        type=int,
        default=1_000,
        help="rows explained one at a time (÷10 with --quick)",
    )
    g.add_argument(
        "--explain-kernel-rows", type=int, default=20, help="rows for Kernel SHAP (÷4 with --quick)"
    )
    g.add_argument("--explain-background", type=int, default=20, help="Kernel SHAP background rows")
    g.add_argument(
        "--explain-nsamples",
        type=int,
        default=None,
        help="Kernel SHAP coalitions per row (default: all 2**features - 2, exact)",
    )
    g.add_argument("--explain-repeat", type=int, default=3, help="repeats of the batch call")
    g.add_argument(
        "--explain-shap-threads",
        type=int,
        default=1,
        help="OpenMP threads of LightGBM's pred_contrib under shap.TreeExplainer (Keel: 1)",
    )


def _data(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``m`` features (pairs correlated, 5% of one feature missing) and a binary
    target with interactions, so the trees split on several features per path."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m))
    x[:, 1::2] += 0.5 * x[:, 0::2][:, : x[:, 1::2].shape[1]]
    logit = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + 0.5 * x[:, 3] - 0.3 * x[:, 4:].sum(axis=1)
    y = (logit + rng.logistic(size=n) > 0).astype(np.float64)
    x[rng.random(n) < 0.05, 2] = np.nan
    return x, y


def _train(args: argparse.Namespace, path: Path, names: list[str]) -> lightgbm.Booster:
    """Train the model, save it as a text model file, and load it back from the file."""
    x, y = _data(args.explain_train, args.explain_features, seed=0)
    params = {
        "objective": "binary",
        "num_leaves": args.explain_leaves,
        "learning_rate": 0.05,
        "min_data_in_leaf": 20,
        "verbosity": -1,
        "num_threads": 2,
        "seed": 0,
    }
    data = lightgbm.Dataset(x, y, feature_name=names)
    booster = lightgbm.train(params, data, num_boost_round=args.explain_trees)
    booster.save_model(str(path))
    return lightgbm.Booster(model_file=str(path))


def _per_row(fn: Callable[[np.ndarray], Any], x: np.ndarray) -> list[float]:
    """Milliseconds of ``fn`` on each row of ``x`` alone (after one warm call)."""
    fn(x[:1])
    times = []
    for i in range(len(x)):
        t0 = time.perf_counter()
        fn(x[i : i + 1])
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _p(times: list[float], q: float) -> float:
    return float(np.percentile(times, q))


def _write(path: Path, x: np.ndarray, names: list[str]) -> None:
    pq.write_table(pa.table({n: x[:, j] for j, n in enumerate(names)}), path)


def run(args: argparse.Namespace) -> list[Row]:
    """Train the model, time Keel here and shap in its venv, and return the rows."""
    div = 10 if args.quick else 1
    m = args.explain_features
    names = [f"f{j}" for j in range(m)]
    n_batch = max(args.explain_batch // div, 100)
    n_single = max(args.explain_single // div, 20)
    n_kernel = max(args.explain_kernel_rows // (4 if args.quick else 1), 2)
    nsamples = args.explain_nsamples or 2**m - 2
    python = peer_python("shap", PINS)
    with tempfile.TemporaryDirectory(prefix="keel-peers-explain-") as d:
        tmp = Path(d)
        model_path = tmp / "model.txt"
        t = time.perf_counter()
        booster = _train(args, model_path, names)
        x, _ = _data(n_batch, m, seed=1)
        pool, _ = _data(10_000, m, seed=2)
        background = pool[np.random.default_rng(3).choice(len(pool), args.explain_background)]
        _write(tmp / "rows.parquet", x, names)
        _write(tmp / "background.parquet", background, names)
        print(
            f"    LightGBM {lightgbm.__version__}: {booster.num_trees()} trees of up to "
            f"{args.explain_leaves} leaves over {m} features, trained in "
            f"{time.perf_counter() - t:.1f} s",
            flush=True,
        )

        # Keel, first: the peer runs after, alone on the machine.
        t0 = time.perf_counter()
        tree = TreeExplainer(booster)
        keel_build_ms = (time.perf_counter() - t0) * 1e3
        tree.explain(x[:16])  # warm (numba may still compile on first call)
        batch = []
        for _ in range(args.explain_repeat):
            t0 = time.perf_counter()
            keel_tree = tree.explain(x).contributions
            batch.append(time.perf_counter() - t0)
        keel_batch_s = statistics.median(batch)
        keel_single = _per_row(tree.explain, x[:n_single])

        def f(rows: np.ndarray) -> np.ndarray:
            return booster.predict(rows, raw_score=True, num_threads=1)

        kx = x[:n_kernel]
        kernel = KernelExplainer(f, background, names, samples=nsamples, output="raw")
        keel_kernel_single = _per_row(kernel.explain, kx)
        t0 = time.perf_counter()
        keel_kernel = kernel.explain(kx).contributions
        keel_kernel_batch_s = time.perf_counter() - t0
        # Both sides send the model the same rows per explanation: its cost is a floor that
        # neither explainer can go under, and the part of the figures a busy machine moves.
        block = np.where(kernel.mask_[:, None, :], kx[0], background[None, :, :]).reshape(-1, m)
        evals = []
        for _ in range(5):
            t0 = time.perf_counter()
            f(block)
            evals.append((time.perf_counter() - t0) * 1e3)
        model_ms = statistics.median(evals)
        print(
            f"    Keel: TreeSHAP batch {keel_batch_s:.3f} s, one row p50 "
            f"{_p(keel_single, 50):.3f} ms; Kernel SHAP one row p50 "
            f"{_p(keel_kernel_single, 50):.1f} ms ({kernel.coalitions} coalitions)",
            flush=True,
        )

        cfg = {
            "model": str(model_path),
            "rows": str(tmp / "rows.parquet"),
            "background": str(tmp / "background.parquet"),
            "out": str(tmp),
            "repeat": args.explain_repeat,
            "single": n_single,
            "kernel_rows": n_kernel,
            "nsamples": nsamples,
        }
        (tmp / "shap.json").write_text(json.dumps(cfg))
        # shap.TreeExplainer hands a LightGBM booster to LightGBM's own pred_contrib, which
        # runs on OpenMP's threads; Keel's tables run on one, so by default so does shap.
        threads = {"OMP_NUM_THREADS": str(args.explain_shap_threads)}
        res = run_peer(python, "shap_explain.py", str(tmp / "shap.json"), env=threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shap_tree = np.load(tmp / "shap_tree.npy")
            shap_kernel = np.load(tmp / "shap_kernel.npy")
    print(
        f"    shap {res['version']}: TreeSHAP batch {res['tree_batch_s']:.3f} s, one row p50 "
        f"{_p(res['tree_single_ms'], 50):.3f} ms; Kernel SHAP one row p50 "
        f"{_p(res['kernel_single_ms'], 50):.1f} ms",
        flush=True,
    )
    assert res["lightgbm"] == lightgbm.__version__, "both sides must read the model alike"
    tree_gap = float(np.max(np.abs(keel_tree - shap_tree)))
    kernel_gap = float(np.max(np.abs(keel_kernel - shap_kernel.reshape(keel_kernel.shape))))
    scale = float(np.mean(np.abs(keel_kernel)))
    model = (
        f"same LightGBM {lightgbm.__version__} text model ({booster.num_trees()} trees, "
        f"{args.explain_leaves} leaves, {m} features)"
    )
    tree_peer = f"shap {res['version']} TreeExplainer"
    kernel_peer = f"shap {res['version']} KernelExplainer"
    exact = "all, exact" if nsamples >= 2**m - 2 else "sampled"
    kernel_setup = (
        f"{kernel.coalitions} coalitions ({exact}) × {args.explain_background} background rows, "
        f"booster raw margin on 1 thread both sides, shap l1_reg=False"
    )
    return [
        Row(
            SECTION,
            f"TreeSHAP, batch of {n_batch:,} rows",
            "rows/s",
            n_batch / keel_batch_s,
            tree_peer,
            n_batch / res["tree_batch_s"],
            better="higher",
            note=(
                f"{model}; max |Keel − shap| {tree_gap:.1e}; explainer built in "
                f"{keel_build_ms:.0f} ms (Keel's tables) vs {res['tree_build_ms']:.0f} ms; "
                f"Keel on 1 thread, shap (LightGBM's pred_contrib underneath) on "
                f"{args.explain_shap_threads}"
            ),
        ),
        Row(
            SECTION,
            "TreeSHAP, one row, p50",
            "ms",
            _p(keel_single, 50),
            tree_peer,
            _p(res["tree_single_ms"], 50),
            note=(
                f"{n_single:,} rows one call each, explainers kept warm; p99 Keel "
                f"{_p(keel_single, 99):.3f} ms, shap {_p(res['tree_single_ms'], 99):.3f} ms"
            ),
        ),
        Row(
            SECTION,
            "Kernel SHAP, one row, p50",
            "ms",
            _p(keel_kernel_single, 50),
            kernel_peer,
            _p(res["kernel_single_ms"], 50),
            note=(
                f"{kernel_setup}; {n_kernel} rows one call each; max |Keel − shap| "
                f"{kernel_gap:.1e} (mean |phi| {scale:.2f}); the model alone on the "
                f"{len(block):,} rows one explanation sends: {model_ms:.0f} ms"
            ),
        ),
        Row(
            SECTION,
            f"Kernel SHAP, batch of {n_kernel} rows",
            "ms per row",
            keel_kernel_batch_s * 1e3 / n_kernel,
            kernel_peer,
            res["kernel_batch_s"] * 1e3 / n_kernel,
            note=(
                f"{kernel_setup}; one call for all rows on each side; the model alone: "
                f"{model_ms:.0f} ms a row"
            ),
        ),
    ]
