"""shap's side of the ``explain`` section of ``make bench-peers``; runs in shap's own venv.

``shap_explain.py CONFIG.json`` loads the LightGBM text model the harness trained and the rows
it wrote (Parquet), then times, the same way the harness times Keel:

* ``shap.TreeExplainer(booster).shap_values`` on the whole batch (median of ``repeat``) and
  on each of the first ``single`` rows alone (the explainer built once, kept warm);
* ``shap.KernelExplainer(f, background).shap_values(row, nsamples=..., l1_reg=False)`` on
  each of the first ``kernel_rows`` rows alone and on all of them in one call, where ``f``
  is the booster's raw margin on one thread and the background the harness's rows (equal
  weights). ``l1_reg=False``: the plain weighted least squares, as Keel solves it (shap's
  default first selects features with LARS).

Values go back as ``.npy`` files for the harness to compare; the last line of stdout is one
JSON object with the timings.
"""

from __future__ import annotations

import importlib.metadata
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pyarrow.parquet as pq
import shap


def matrix(path: str) -> np.ndarray:
    return np.column_stack([c.to_numpy() for c in pq.read_table(path).columns]).astype(np.float64)


def values(out: Any) -> np.ndarray:
    """shap's values as (rows, features): the positive class of a binary model."""
    arr = np.asarray(out)
    return arr[-1] if arr.ndim == 3 else arr


def per_row(fn: Any, x: np.ndarray) -> list[float]:
    """Milliseconds of ``fn`` on each row of ``x`` alone (after one warm call)."""
    fn(x[:1])
    times = []
    for i in range(len(x)):
        t0 = time.perf_counter()
        fn(x[i : i + 1])
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def main(cfg: dict[str, Any]) -> dict[str, Any]:
    out = Path(cfg["out"])
    booster = lightgbm.Booster(model_file=cfg["model"])
    x = matrix(cfg["rows"])
    background = matrix(cfg["background"])

    t0 = time.perf_counter()
    tree = shap.TreeExplainer(booster)
    build_ms = (time.perf_counter() - t0) * 1e3
    tree.shap_values(x[:16])  # warm
    batch = []
    for _ in range(cfg["repeat"]):
        t0 = time.perf_counter()
        tree_values = values(tree.shap_values(x))
        batch.append(time.perf_counter() - t0)
    np.save(out / "shap_tree.npy", tree_values)
    single = per_row(tree.shap_values, x[: cfg["single"]])

    def f(rows: np.ndarray) -> np.ndarray:
        return booster.predict(rows, raw_score=True, num_threads=1)

    kx = x[: cfg["kernel_rows"]]
    kernel = shap.KernelExplainer(f, background)
    opts = {"nsamples": cfg["nsamples"], "l1_reg": False, "silent": True}
    kernel_single = per_row(lambda r: kernel.shap_values(r, **opts), kx)
    t0 = time.perf_counter()
    kernel_values = values(kernel.shap_values(kx, **opts))
    kernel_batch = time.perf_counter() - t0
    np.save(out / "shap_kernel.npy", kernel_values)
    return {
        "version": importlib.metadata.version("shap"),
        "lightgbm": importlib.metadata.version("lightgbm"),
        "tree_build_ms": build_ms,
        "tree_batch_s": statistics.median(batch),
        "tree_single_ms": single,
        "kernel_single_ms": kernel_single,
        "kernel_batch_s": kernel_batch,
        "kernel_expected": float(np.ravel(kernel.expected_value)[-1]),
    }


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # shap warns about its own deprecations on every call
    with open(sys.argv[1]) as fh:
        print(json.dumps(main(json.load(fh))))
