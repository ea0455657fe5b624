"""Evidently's side of the ``drift`` section of ``make bench-peers``; runs in its own venv.

``evidently_drift.py CONFIG.json`` reads the reference and current tables (Parquet, the first
``rows`` rows of each) into pandas, then times what a user of Evidently runs: both
``Dataset.from_pandas`` calls (every column declared numerical) and ``Report.run`` of a
``DataDriftPreset`` with the method and threshold given (``ks``: ``scipy.stats.ks_2samp``,
drift when the p-value is at most the threshold). Reading the files is not timed. The last
line of stdout is one JSON object: seconds, each column's p-value (the preset's
``ValueDrift`` metrics), the flagged columns and the method the preset used; or ``error``
when Evidently ran out of the memory it was allowed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import resource
import sys
import time
from typing import Any

# Evidently's telemetry is only in its UI service, but the switch costs nothing and keeps
# this run on loopback whatever a version does.
os.environ.setdefault("DO_NOT_TRACK", "1")

import pyarrow.parquet as pq
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset


def main(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("mem_gib"):
        # A cap on the address space: past it Evidently fails with MemoryError instead of
        # pushing the shared machine into the kernel's OOM killer.
        cap = int(cfg["mem_gib"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    rows = cfg["rows"]
    ref = pq.read_table(cfg["reference"]).slice(0, rows).to_pandas()
    cur = pq.read_table(cfg["current"]).slice(0, rows).to_pandas()
    names = list(ref.columns)
    try:
        t0 = time.perf_counter()
        definition = DataDefinition(numerical_columns=names)
        current = Dataset.from_pandas(cur, data_definition=definition)
        reference = Dataset.from_pandas(ref, data_definition=definition)
        preset = DataDriftPreset(method=cfg["method"], threshold=cfg["threshold"])
        snapshot = Report([preset]).run(current, reference)
        seconds = time.perf_counter() - t0
    except MemoryError:
        return {"error": "MemoryError"}
    pvalues: dict[str, float] = {}
    methods: set[str] = set()
    drifted_count = None
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            pvalues[config["column"]] = float(metric["value"])
            methods.add(str(config.get("method")))
        elif config["type"].endswith(":DriftedColumnsCount"):
            drifted_count = int(metric["value"]["count"])
    return {
        "version": importlib.metadata.version("evidently"),
        "pandas": importlib.metadata.version("pandas"),
        "seconds": seconds,
        "rows": len(ref),
        "pvalue": pvalues,
        # Evidently's rule for a p-value test: drift when p <= threshold.
        "flagged": [n for n in names if pvalues.get(n, 1.0) <= cfg["threshold"]],
        "drifted_count": drifted_count,
        "methods": sorted(methods),
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(main(json.load(f))))
