"""The monitor page: a route's monitored windows over time — each feature's drift statistic
against its alert level, the output's drift, and the estimated loss against its threshold
beside the realized loss once the labels are in (``keel monitor status``, drawn)."""

from __future__ import annotations

import math
from typing import Any

from keel.controller.operator import route_config
from keel.errors import ValidationError
from keel.monitoring.events import history, times_level
from keel.ui.charts import Series, line_chart, number
from keel.ui.text import stamp

__all__ = ["monitor_page", "monitored_routes"]

#: Windows drawn (the newest).
WINDOWS = 120


def monitored_routes(state: Any) -> list[str]:
    return [r.name for r in state.project.settings.routes if r.monitor is not None]


def monitor_page(state: Any, route: str) -> dict[str, Any]:
    cfg = route_config(state.project, route)
    if cfg.monitor is None:
        raise ValidationError(
            f"route {route!r} is not monitored: add a [routes.monitor] block to keel.toml"
        )
    windows = history(state.project.log, route)[-WINDOWS:]
    if not windows:
        return {"route": route, "windows": [], "charts": None}
    xs = [float(w["window"]) for w in windows]
    labels = [f"window {w['window']} ({stamp(w['end'])[5:16]})" for w in windows]
    charts: dict[str, Any] = {"performance": _performance(route, windows, xs, labels)}
    preds = [w.get("prediction") for w in windows]
    if any(preds):
        charts["output"] = _check_chart(
            f"{route}: drift of the model's output, window by window",
            "output",
            preds,
            xs,
            labels,
        )
    names = [f["feature"] for f in windows[-1]["features"]]
    by_name = {
        n: [next((f for f in w["features"] if f["feature"] == n), None) for w in windows]
        for n in names
    }
    worst = {
        n: max((times_level(c) for c in cs if c is not None), default=0.0)
        for n, cs in by_name.items()
    }
    charts["features"] = [
        {
            "name": n,
            "worst": "missing" if math.isinf(worst[n]) else f"{worst[n]:.1f}× its level",
            "drifted": worst[n] > 1,
            "chart": _check_chart(
                f"{n}: {_statistic(by_name[n])} against its alert level",
                n,
                by_name[n],
                xs,
                labels,
                small=True,
            ),
        }
        for n in sorted(names, key=lambda n: -worst[n])
    ]
    rows = []
    for w in reversed(windows):
        perf = w.get("performance") or {}
        drifted = [f for f in w["features"] if f.get("drifted")]
        rows.append(
            {
                "window": w["window"],
                "end": stamp(w["end"]),
                "rows": w["rows"],
                "version": w.get("version"),
                "alerts": _short_alerts(w.get("alerts") or _alerts_of(w)),
                "drifted": len(drifted),
                "features": len(w["features"]),
                "estimated": number(perf.get("estimated")),
                "realized": number(perf.get("realized")),
                "perf_alert": bool(perf.get("alert")),
            }
        )
    return {"route": route, "windows": rows, "charts": charts, "count": len(windows)}


def _short_alerts(alerts: list[str]) -> list[str]:
    """A window's alerts as read: drifted features by their short names."""
    drift = [a.split(":", 1)[1].split("__")[-1] for a in alerts if a.startswith("drift:")]
    out = [f"drift: {', '.join(drift)}"] if drift else []
    return out + [a for a in alerts if not a.startswith("drift:")]


def _statistic(checks: list[dict[str, Any] | None]) -> str:
    last = next((c for c in reversed(checks) if c is not None), None)
    return "statistic" if last is None else str(last.get("statistic", "statistic"))


def _alerts_of(w: dict[str, Any]) -> list[str]:
    out = [f"drift:{f['feature']}" for f in w["features"] if f.get("drifted")]
    if (w.get("prediction") or {}).get("drifted"):
        out.append("prediction")
    if (w.get("performance") or {}).get("alert"):
        out.append("performance")
    return out


def _performance(
    route: str, windows: list[dict[str, Any]], xs: list[float], labels: list[str]
) -> Any:
    perf = [w.get("performance") or {} for w in windows]
    if not any(perf):
        return None
    metric = next((p["metric"] for p in perf if p), "loss")
    estimated = [p.get("estimated") for p in perf]
    realized = [p.get("realized") for p in perf]
    alerts = sum(bool(p.get("alert")) for p in perf)
    settled = sum(r is not None for r in realized)
    return line_chart(
        title=f"{route}: estimated {metric} against its threshold, and realized {metric} once "
        "the labels arrived",
        x_label="window",
        y_label=metric,
        series=[
            Series("estimated", list(zip(xs, estimated, strict=True)), marker=True, labels=labels),
            Series(
                "threshold",
                list(zip(xs, [p.get("threshold") for p in perf], strict=True)),
                style="threshold",
                labels=labels,
            ),
            Series(
                "realized",
                list(zip(xs, realized, strict=True)),
                style="s2",
                marker=True,
                labels=labels,
            ),
        ],
        x_format=lambda v: f"{v:.0f}",
        summary=f"{len(windows)} windows; the estimated {metric} crossed its threshold in "
        f"{alerts}; realized {metric} is known for {settled}",
    )


def _check_chart(
    title: str,
    name: str,
    checks: list[dict[str, Any] | None],
    xs: list[float],
    labels: list[str],
    small: bool = False,
) -> Any:
    values = [None if c is None else c.get("value") for c in checks]
    levels = [None if c is None else c.get("threshold") for c in checks]
    drifted = sum(bool(c and c.get("drifted")) for c in checks)
    missing = sum(c is not None and c.get("value") is None for c in checks)
    summary = f"over its level (drifted) in {drifted} of {len(checks)} windows"
    if missing:
        summary += f"; missing from {missing}"
    return line_chart(
        title=title,
        x_label="window",
        y_label="statistic",
        series=[
            Series(name, list(zip(xs, values, strict=True)), marker=not small, labels=labels),
            Series("alert level", list(zip(xs, levels, strict=True)), style="threshold"),
        ],
        x_format=lambda v: f"{v:.0f}",
        width=480 if small else 720,
        height=180 if small else 240,
        summary=summary,
    )
