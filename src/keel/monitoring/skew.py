"""Request skew and staleness of one window of a prediction log.

- entity concentration (the busiest entity's share, how many entities) and each version's
  share of the traffic, beside the split the route is configured with;
- training/serving skew: a sample of the window's rows rebuilt offline, point in time, as of
  the instant each was served, compared feature by feature with what was served;
- the staleness of each served feature (p50, p99, max).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.prediction_log import KEY_PREFIX, STALE_PREFIX

__all__ = ["concentration", "staleness", "training_serving"]

SKEW_ROWS = 200  # rows per window rebuilt offline for the training/serving comparison
SKEW_TOLERANCE = 1e-6


def concentration(window: pa.Table) -> dict[str, Any]:
    """The busiest entity's share of the window, the number of entities, and each version's
    share."""
    out: dict[str, Any] = {}
    keys = [c for c in window.column_names if c.startswith(KEY_PREFIX)]
    if keys:
        counts = pc.value_counts(window[keys[0]].drop_null())
        if len(counts):
            top = max(c["counts"].as_py() for c in counts)
            out["top_entity_share"] = top / window.num_rows
            out["entities"] = len(counts)
    versions = pc.value_counts(window["version"])
    out["versions"] = {v["values"].as_py(): v["counts"].as_py() / window.num_rows for v in versions}
    return out


def training_serving(
    window: pa.Table, features: Any, refs: list[str], watched: list[str]
) -> dict[str, Any]:
    """The served features (of ``watched``) of some rows against the same entities' features
    rebuilt offline by ``features`` as of the moment they were served."""
    keys = [c for c in window.column_names if c.startswith(KEY_PREFIX)]
    if features is None or not refs or not keys:
        return {}
    served = [n for n in features.columns(refs) if n in watched and n in window.column_names]
    if not served:
        return {}
    rows = window.slice(0, min(SKEW_ROWS, window.num_rows))
    labels: dict[str, Any] = {"ts": rows["ts"]}
    for view, _ in features.resolve(refs):
        jk = view.entity.join_key
        column = rows[KEY_PREFIX + jk] if KEY_PREFIX + jk in rows.column_names else None
        if column is None or column.null_count:
            return {}
        source = features.log.topic(view.source.topic)
        labels[jk] = column.cast(source.schema.field(jk).type)
    offline = features.training_set(pa.table(labels), refs)
    out = {}
    for name in served:
        a = rows[name].to_numpy(zero_copy_only=False).astype(np.float64)
        b = offline[name].to_numpy(zero_copy_only=False).astype(np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0.0, np.abs(a - b))
        bad = ~both_nan & ~(diff <= SKEW_TOLERANCE * (1 + np.abs(b)))
        out[name] = {
            "compared": len(a),
            "mismatched": int(bad.sum()),
            "max_abs": float(np.nanmax(diff)) if len(diff) else 0.0,
        }
    return out


def staleness(window: pa.Table) -> dict[str, dict[str, float]]:
    """Each served feature's staleness in the window: p50, p99 and max, in seconds."""
    out = {}
    for name in window.column_names:
        if not name.startswith(STALE_PREFIX):
            continue
        values = window[name].to_numpy(zero_copy_only=False).astype(np.float64)
        values = values[~np.isnan(values)]
        if len(values):
            p50, p99 = np.quantile(values, [0.5, 0.99])
            out[name[len(STALE_PREFIX) :]] = {
                "p50": float(p50),
                "p99": float(p99),
                "max": float(values.max()),
            }
    return out
