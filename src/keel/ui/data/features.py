"""The features page: each view's definition, how far the online store has read its topic,
how stale it is, and a lookup of one entity's online values (``keel features list`` and
``keel features get``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from keel.errors import KeelError, ValidationError
from keel.features.definitions import format_duration
from keel.monitoring.events import history
from keel.ui.text import duration, stamp_ts

__all__ = ["features_page", "lookup"]

GROUP = "keel-features.{}"


def features_page(state: Any) -> dict[str, Any]:
    project = state.project
    store = project.features
    log = project.log
    applied = project.applied_views()
    served = _served_staleness(state)
    now = time.time()
    views = []
    for v in store.views:
        topic = log.topic(v.source.topic)
        ends = log.end_offsets(topic.name)
        done = log.committed(GROUP.format(v.name), topic.name)
        read = sum(min(done.get(p, 0), end) for p, end in enumerate(ends))
        total = sum(ends)
        newest = _newest_read(log, topic, done)
        fp = v.fingerprint
        if v.name not in applied:
            fp_note = "not applied"
        elif applied[v.name]["fingerprint"] != fp:
            fp_note = "changed since apply"
        else:
            fp_note = ""
        views.append(
            {
                "view": v,
                "tile": format_duration(v.tile),
                "ttl": format_duration(v.ttl) if v.ttl else "—",
                "fingerprint": fp,
                "fingerprint_note": fp_note,
                "read": read,
                "total": total,
                "lag": total - read,
                "share": read / total if total else 1.0,
                "newest": None if newest is None else stamp_ts(newest),
                "staleness": None if newest is None else duration(max(0.0, now - newest)),
                "ahead": newest is not None and newest > now,
                "served": served.get(v.name),
                "features": [
                    {
                        "name": f.name,
                        "fn": f.fn,
                        "column": f.column or "*",
                        "window": format_duration(f.window) if f.window else "all time",
                    }
                    for f in v.features
                ],
            }
        )
    return {"views": views, "online_url": store.online.url}


def _newest_read(log: Any, topic: Any, done: dict[int, int]) -> float | None:
    """The event time of the newest record the online store has read, over partitions."""
    newest = None
    for p, offset in done.items():
        if offset <= 0:
            continue
        batch = log.read(topic.name, p, offset - 1, 1)
        if batch.num_rows:
            ts = batch.column(topic.event_time)[0].as_py()
            if isinstance(ts, datetime):
                t = ts.replace(tzinfo=ts.tzinfo or UTC).timestamp()
                newest = t if newest is None else max(newest, t)
    return newest


def _served_staleness(state: Any) -> dict[str, dict[str, Any]]:
    """Per view, how stale its features were when served, in the newest monitored window
    of any route (the worst p50 and p99 of its features)."""
    out: dict[str, dict[str, Any]] = {}
    for r in state.project.settings.routes:
        if r.monitor is None:
            continue
        windows = history(state.project.log, r.name)
        if not windows:
            continue
        for feature, s in (windows[-1].get("staleness") or {}).items():
            view = feature.split("__", 1)[0]
            got = out.setdefault(
                view, {"route": r.name, "window": windows[-1]["window"], "p50": 0.0, "p99": 0.0}
            )
            got["p50"] = max(got["p50"], float(s.get("p50") or 0.0))
            got["p99"] = max(got["p99"], float(s.get("p99") or 0.0))
    for got in out.values():
        got["p50_text"], got["p99_text"] = duration(got["p50"]), duration(got["p99"])
    return out


def lookup(state: Any, view: str, key: str) -> dict[str, Any]:
    """One entity's online values of ``view``, as ``keel features get`` reads them: the
    console's store catches up with the log first."""
    key = key.strip()
    if not key:
        raise ValidationError("give an entity key to look up")
    store = state.project.features
    store.view(view)  # a clear error for an unknown view
    entity: int | str = int(key) if key.lstrip("-").isdigit() else key
    with state.features_lock:
        store.materialize([view])
        result = store.get_online([view], [entity])
    row = result.to_pylist(with_meta=True)[0]
    values = []
    for name in result.values:
        value = row[name]
        if isinstance(value, list):
            value = f"[{len(value)} values]"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        stale = row.get(f"{name}.staleness_s")
        values.append(
            {
                "name": name,
                "value": "—" if value is None else str(value),
                "missing": bool(row.get(f"{name}.missing")),
                "staleness": None if stale is None else duration(stale),
            }
        )
    return {"view": view, "key": key, "rows": values}


def lookup_or_error(state: Any, view: str | None, key: str | None) -> dict[str, Any] | None:
    """:func:`lookup` for a form's values, its error as the result's ``error``."""
    if not view:
        return None
    try:
        return lookup(state, view, key or "")
    except KeelError as exc:
        return {"view": view, "key": key or "", "error": str(exc), "rows": []}
