"""The scipy side of the ``drift`` section of ``make bench-peers``; runs in scipy's own venv.

``scipy_ks_loop.py REFERENCE.parquet CURRENT.parquet ALPHA REPEAT`` runs the plain loop a
user would write: ``scipy.stats.ks_2samp`` on each column of the reference against the same
column of the current table, a column flagged when its p-value is below ``ALPHA``. The
columns are turned into numpy arrays before the clock starts (both sides get their data
in memory); the loop is timed ``REPEAT`` times and the median kept. The last line of stdout
is one JSON object: seconds, each column's statistic and p-value, and the flagged columns.
"""

from __future__ import annotations

import importlib.metadata
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import ks_2samp


def main(ref_path: str, cur_path: str, alpha: float, repeat: int) -> dict[str, Any]:
    ref_table, cur_table = pq.read_table(ref_path), pq.read_table(cur_path)
    names = ref_table.column_names
    ref = {n: ref_table.column(n).to_numpy() for n in names}
    cur = {n: cur_table.column(n).to_numpy() for n in names}
    seconds: list[float] = []
    stats: dict[str, float] = {}
    pvalues: dict[str, float] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        for n in names:
            res = ks_2samp(ref[n], cur[n])
            stats[n], pvalues[n] = float(res.statistic), float(res.pvalue)
        seconds.append(time.perf_counter() - t0)
    return {
        "version": importlib.metadata.version("scipy"),
        "numpy": np.__version__,
        "seconds": statistics.median(seconds),
        "rows": ref_table.num_rows,
        "statistic": stats,
        "pvalue": pvalues,
        "flagged": [n for n in names if pvalues[n] < alpha],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))))
