"""``keel monitor report``: one self-contained HTML file from a route's monitored windows.

The report shows, for a route, the at-a-glance verdict of the latest window, the alerts per
window, each drifted feature's statistic over time against its alert level, a tree model's
global feature importance per window (and whose share moved after the first drift), prediction
drift, estimated versus realized performance, feature staleness, skew, the calibration
(baseline and chosen levels) and reference-versus-current distributions of what drifted.

Plots are drawn with matplotlib's object API (a ``Figure`` on an Agg canvas, never pyplot), so
rendering changes no global state and is safe from several threads; they are embedded as
base64 PNG, so the file opens offline and can be mailed or attached to a ticket as is.
matplotlib and Jinja2 are the optional ``monitor`` extra and are imported only when a report is
written.
"""

from __future__ import annotations

import base64
import io
import math
import numbers
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.errors import UnavailableError, ValidationError

__all__ = ["write_report"]

MAX_DISTRIBUTIONS = 12
MAX_TRENDS = 24
MAX_STALENESS_LINES = 8
MAX_IMPORTANCE_LINES = 10
MAX_MOVERS = 3
MAX_TIMELINE_ROWS = 100
MAX_CATEGORIES = 10
PCA_ROWS = 5_000
TAIL = 0.005  # each tail of the reference left out of the histogram range
DPI = 110

REF_COLOR, CUR_COLOR, ALERT_COLOR, LINE_COLOR = "#4c72b0", "#dd8452", "#c0392b", "#2f3e4e"


@dataclass(frozen=True, slots=True)
class _Plot:
    title: str
    src: str
    note: str = ""


def write_report(
    path: str | os.PathLike[str],
    *,
    route: str,
    model: str,
    history: list[dict],
    reference: pa.Table | None = None,
    current: pa.Table | None = None,
    calibration: dict[str, dict] | None = None,
    title: str | None = None,
) -> Path:
    """Write the monitoring report of ``route`` to ``path`` and return its path.

    Parameters
    ----------
    path : where the HTML file goes; parent folders are created, the write is atomic.
    route, model : named in the header.
    history : the monitor's window records, oldest first (one dict per window).
    reference, current : Arrow tables of the watched columns (the training set and the
        latest window as served), for the distribution plots; either missing skips them.
    calibration : per feature, the statistic's baseline and the chosen alert level.
    title : the page title; ``"Keel monitor — <route>"`` by default.

    Raises
    ------
    ValidationError : ``history`` is empty.
    UnavailableError : matplotlib or Jinja2 (the ``monitor`` extra) is not installed.
    """
    if not history:
        raise ValidationError("no monitored windows yet: run `keel monitor` first")
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            raise ValidationError(
                f"history[{i}] must be a window record (dict), not {type(record).__name__}"
            )
    template = _template()
    html = template.render(
        title=title or f"Keel monitor — {route}",
        route=route,
        model=model,
        generated=datetime.now(UTC).isoformat(sep=" ", timespec="seconds"),
        **_context(history, reference, current, calibration or {}),
    )
    return _write_atomic(Path(path), html)


def _template() -> Any:
    try:
        import jinja2
        import matplotlib.figure  # noqa: F401  (checked here so a missing extra fails early)
    except ImportError as exc:
        raise UnavailableError(
            f"the monitoring report needs matplotlib and Jinja2 ({exc.name} is missing): "
            "pip install 'keel-ml[monitor]'"
        ) from exc
    # Lenient undefined: a record from an older monitor missing a key shows "—", not a crash.
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["when"] = _when
    env.filters["pct"] = _pct
    source = resources.files("keel.monitoring").joinpath("report.html.j2").read_text("utf-8")
    return env.from_string(source)


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- what the template shows ------------------------------------------------------------------


def _context(
    history: list[dict],
    reference: pa.Table | None,
    current: pa.Table | None,
    calibration: dict[str, dict],
) -> dict[str, Any]:
    windows = [h.get("window", i) for i, h in enumerate(history)]
    latest = history[-1]
    drifted_now = [f["feature"] for f in latest.get("features") or [] if f.get("drifted")]
    prediction, performance = latest.get("prediction"), latest.get("performance")
    versions = list(dict.fromkeys(h["version"] for h in history if h.get("version")))
    timeline = [dict(h, window=w) for w, h in zip(windows, history, strict=True)]
    ever = list(
        dict.fromkeys(
            f["feature"] for h in history for f in h.get("features") or [] if f.get("drifted")
        )
    )
    quiet = sorted(
        {f["feature"] for h in history for f in h.get("features") or []} - set(ever), key=str
    )
    trends = [_trend_plot(name, windows, _series(history, name)) for name in ever[:MAX_TRENDS]]
    predictions = [h.get("prediction") for h in history]
    prediction_plot = (
        _trend_plot(f"prediction: {_name(predictions)}", windows, predictions)
        if any(predictions)
        else None
    )
    return {
        "versions": versions,
        "first_window": windows[0],
        "last_window": windows[-1],
        "n_windows": len(history),
        "start": history[0].get("start"),
        "end": latest.get("end"),
        "latest": {
            "window": windows[-1],
            "drifted": drifted_now,
            "prediction": prediction,
            "performance": performance,
            "alerts": list(latest.get("alerts") or []),
            "other_alerts": [
                a
                for a in latest.get("alerts") or []
                if not str(a).startswith("drift:") and a not in ("prediction", "performance")
            ],
        },
        "timeline": timeline[-MAX_TIMELINE_ROWS:],
        "timeline_omitted": max(0, len(timeline) - MAX_TIMELINE_ROWS),
        "trends": trends,
        "trends_omitted": ever[MAX_TRENDS:],
        "quiet": quiet,
        "importance": _importance(windows, history),
        "prediction_plot": prediction_plot,
        "performance_plot": _performance_plot(windows, history),
        "staleness": _staleness(windows, history),
        "skew": _skew(windows, history),
        "calibration": [dict(c, feature=name) for name, c in calibration.items()],
        "distributions": _distributions(latest, reference, current),
    }


def _series(history: list[dict], name: str) -> list[dict | None]:
    by_window = [{f["feature"]: f for f in h.get("features") or []} for h in history]
    return [entries.get(name) for entries in by_window]


def _name(entries: Sequence[dict | None]) -> str:
    return next(str(e.get("feature", "prediction")) for e in entries if e)


def _importance(windows: list[Any], history: list[dict]) -> dict[str, Any] | None:
    """Per window, the mean |contribution| of the features most important in the latest
    reference; the latest window against that reference; and the features whose share of
    the total importance moved most from before the first drifted window to after it."""
    with_importance = [(w, h) for w, h in zip(windows, history, strict=True) if h.get("importance")]
    if not with_importance:
        return None
    window, latest = with_importance[-1]
    imp = latest["importance"]
    reference, current = imp.get("reference") or {}, imp.get("features") or {}
    ranked = sorted(
        dict.fromkeys([*reference, *current]),
        key=lambda k: -reference[k] if _finite(reference.get(k)) else 1.0,
    )
    top = ranked[:MAX_IMPORTANCE_LINES]
    ref_share, cur_share = _shares_of(reference), _shares_of(current)
    rows = [
        {
            "feature": k,
            "reference": reference.get(k),
            "latest": current.get(k),
            "change": current[k] - reference[k]
            if _finite(current.get(k)) and _finite(reference.get(k))
            else None,
            "reference_share": ref_share.get(k),
            "latest_share": cur_share.get(k),
        }
        for k in top
    ]
    lines = {
        k: [((h.get("importance") or {}).get("features") or {}).get(k) for h in history]
        for k in top
    }
    levels = {
        k: [((h.get("importance") or {}).get("reference") or {}).get(k) for h in history]
        for k in top
    }
    # Drifted as the rest of the report has it: the first window with alerts.
    first = next((i for i, h in enumerate(history) if h.get("alerts")), None)
    drifted = windows[first] if first is not None else None
    unit = {"raw": "raw output"}.get(imp.get("output"), imp.get("output") or "model output")
    return {
        "window": window,
        "method": imp.get("method") or "tree",
        "unit": unit,
        "plot": _importance_plot(windows, lines, levels, drifted, ylabel=f"mean |SHAP| ({unit})"),
        "rows": rows,
        "omitted": len(ranked) - len(top),
        "drifted": drifted,
        "movers": _movers(history, first),
    }


def _shares_of(importance: dict[str, Any]) -> dict[str, float]:
    values = {k: v for k, v in importance.items() if _finite(v)}
    total = sum(values.values())
    return {k: v / total for k, v in values.items()} if total > 0 else {}


def _movers(history: list[dict], first: int | None) -> list[dict[str, Any]]:
    """The features whose share of total importance moved most from before the first drifted
    window (``history[first]``) to it and after: mean shares over the windows of its version,
    against the reference's shares when no window of that version came before it."""
    if first is None:
        return []
    version = history[first].get("version")
    same = [
        (i, h["importance"])
        for i, h in enumerate(history)
        if h.get("importance") and h.get("version") == version
    ]
    after = [_shares_of(imp.get("features") or {}) for i, imp in same if i >= first]
    before = [_shares_of(imp.get("features") or {}) for i, imp in same if i < first]
    if not after:
        return []
    if not before:
        reference = next(imp for i, imp in same if i >= first).get("reference") or {}
        before = [_shares_of(reference)]
    names = list(dict.fromkeys(k for shares in before + after for k in shares))
    moved: list[dict[str, Any]] = [
        {
            "feature": k,
            "before": sum(s.get(k, 0.0) for s in before) / len(before),
            "after": sum(s.get(k, 0.0) for s in after) / len(after),
        }
        for k in names
    ]
    moved = [m for m in moved if abs(m["after"] - m["before"]) > 1e-9]
    moved.sort(key=lambda m: -abs(m["after"] - m["before"]))
    return moved[:MAX_MOVERS]


def _staleness(windows: list[Any], history: list[dict]) -> dict[str, Any] | None:
    keys = list(dict.fromkeys(k for h in history for k in h.get("staleness") or {}))
    if not keys:
        return None
    latest = next(h["staleness"] for h in reversed(history) if h.get("staleness"))
    # Plot the stalest few: they are the ones that explain a late or wrong prediction.
    p99 = {k: latest.get(k, {}).get("p99") for k in keys}
    ranked = sorted(keys, key=lambda k: -p99[k] if _finite(p99[k]) else 1.0)
    lines = {
        k: [(h.get("staleness") or {}).get(k, {}).get("p99") for h in history]
        for k in ranked[:MAX_STALENESS_LINES]
    }
    return {
        "plot": _lines_plot("staleness p99", windows, lines, ylabel="seconds"),
        "omitted": len(keys) - len(lines),
        "latest": [dict(latest[k], feature=k) for k in ranked if k in latest],
    }


def _skew(windows: list[Any], history: list[dict]) -> dict[str, Any] | None:
    with_skew = [(w, h["skew"]) for w, h in zip(windows, history, strict=True) if h.get("skew")]
    if not with_skew:
        return None
    window, skew = with_skew[-1]
    shares, expected = skew.get("versions") or {}, skew.get("expected") or {}
    versions = [
        {"version": v, "share": shares.get(v), "expected": expected.get(v)}
        for v in dict.fromkeys([*shares, *expected])
    ]
    mismatches = [dict(m, feature=name) for name, m in (skew.get("training_serving") or {}).items()]
    top = {"top entity share": [(h.get("skew") or {}).get("top_entity_share") for h in history]}
    return {
        "window": window,
        "top_entity_share": skew.get("top_entity_share"),
        "entities": skew.get("entities"),
        "versions": versions,
        "mismatches": mismatches,
        "plot": _lines_plot("top entity share", windows, top, ylabel="share of rows")
        if len(with_skew) > 1
        else None,
    }


def _distributions(
    latest: dict, reference: pa.Table | None, current: pa.Table | None
) -> dict[str, Any]:
    kinds = {f["feature"]: f.get("kind") for f in latest.get("features") or []}
    names = [f["feature"] for f in latest.get("features") or [] if f.get("drifted")]
    if latest.get("prediction"):
        kinds.setdefault(latest["prediction"]["feature"], latest["prediction"].get("kind"))
        names.append(latest["prediction"]["feature"])
    names = list(dict.fromkeys(names))
    out: dict[str, Any] = {
        "plots": [],
        "skipped": [],
        "omitted": names[MAX_DISTRIBUTIONS:],
        "limit": MAX_DISTRIBUTIONS,
    }
    if reference is None or current is None:
        out["missing"] = "reference" if reference is None else "current window"
        return out
    out["missing"] = None
    for name in names[:MAX_DISTRIBUTIONS]:
        absent = [
            w
            for w, t in (("reference", reference), ("current", current))
            if name not in t.column_names
        ]
        if absent:
            out["skipped"].append((name, f"no column in the {' or '.join(absent)} table"))
            continue
        plot = _distribution_plot(name, kinds.get(name), reference[name], current[name])
        (out["plots"] if isinstance(plot, _Plot) else out["skipped"]).append(plot)
    return out


# -- plots ------------------------------------------------------------------------------------


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25, lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _encode(fig: Any, title: str, note: str = "") -> _Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return _Plot(title, "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), note)


def _text(s: object) -> str:
    # Names come from users' data: a lone "$" would otherwise start matplotlib mathtext.
    return str(s).replace("$", r"\$")


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _windows_axis(ax: Any, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("window", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(_text(title), fontsize=9, loc="left")


def _log_if_wide(ax: Any, values: Sequence[float]) -> None:
    """Log-scale the y axis when the values are positive and span over 20x, as a
    statistic does when it jumps from its noise floor to a drift."""
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")


def _trend_plot(name: str, windows: list[Any], entries: list[dict | None]) -> _Plot:
    points = [
        (w, e) for w, e in zip(windows, entries, strict=True) if e and _finite(e.get("value"))
    ]
    levels = [(w, e["threshold"]) for w, e in points if _finite(e.get("threshold"))]
    statistic = next((e.get("statistic") for _, e in reversed(points)), None) or "statistic"
    fig, (ax,) = _figure(4.4, 2.5)
    if points:
        ax.plot(
            [w for w, _ in points],
            [e["value"] for _, e in points],
            marker="o",
            ms=3,
            color=LINE_COLOR,
            lw=1.2,
            label=statistic,
        )
        hot = [(w, e["value"]) for w, e in points if e.get("drifted")]
        if hot:
            ax.scatter(*zip(*hot, strict=True), color=ALERT_COLOR, s=22, zorder=3, label="drifted")
    if levels:
        ax.plot(
            *zip(*levels, strict=True),
            ls="--",
            lw=1,
            color=ALERT_COLOR,
            drawstyle="steps-mid",
            label="threshold",
        )
    _log_if_wide(ax, [e["value"] for _, e in points] + [t for _, t in levels])
    _windows_axis(ax, name, statistic)
    if points or levels:
        ax.legend(fontsize=7, loc="best", frameon=False)
    return _encode(fig, name)


def _performance_plot(windows: list[Any], history: list[dict]) -> _Plot | None:
    perf = [
        (w, h["performance"]) for w, h in zip(windows, history, strict=True) if h.get("performance")
    ]
    if not perf:
        return None
    metric = perf[-1][1].get("metric") or "loss"
    fig, (ax,) = _figure(7.0, 2.8)
    plotted: list[float] = []
    for key, style in (
        ("estimated", {"color": LINE_COLOR, "marker": "o", "ms": 3}),
        ("realized", {"color": CUR_COLOR, "marker": "s", "ms": 3}),
        ("threshold", {"color": ALERT_COLOR, "ls": "--", "drawstyle": "steps-mid"}),
        ("reference", {"color": "#888888", "ls": ":"}),
    ):
        xy = [(w, p[key]) for w, p in perf if _finite(p.get(key))]
        if xy:
            ax.plot(*zip(*xy, strict=True), lw=1.2, label=key, **style)
            plotted += [v for _, v in xy]
    # A window of missed frauds or a broken feed can cost 100x the healthy loss: on a log
    # scale the estimate crossing its threshold stays visible beside it.
    _log_if_wide(ax, plotted)
    hot = [(w, p["estimated"]) for w, p in perf if p.get("alert") and _finite(p.get("estimated"))]
    if hot:
        ax.scatter(*zip(*hot, strict=True), color=ALERT_COLOR, s=24, zorder=3, label="alert")
    _windows_axis(ax, f"{metric}: estimated vs realized", metric)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", frameon=False)
    realized = [(w, p) for w, p in perf if _finite(p.get("realized"))]
    note = (
        f"last realized at window {realized[-1][0]} ({realized[-1][1].get('labelled')} labelled)"
        if realized
        else "no labels have arrived yet: only the estimate is shown"
    )
    return _encode(fig, f"{metric} over windows", note)


def _lines_plot(
    title: str, windows: list[Any], lines: dict[str, list[Any]], *, ylabel: str
) -> _Plot:
    fig, (ax,) = _figure(7.0, 2.6)
    handles, labels, values = [], [], []
    for label, ys in lines.items():
        xy = [(w, y) for w, y in zip(windows, ys, strict=True) if _finite(y)]
        if xy:
            (line,) = ax.plot(*zip(*xy, strict=True), marker="o", ms=2.5, lw=1.1)
            handles.append(line)
            labels.append(_text(label))
            values += [y for _, y in xy]
    _log_if_wide(ax, values)
    _windows_axis(ax, title, ylabel)
    if handles:
        # Labels passed explicitly so a name starting with "_" is not hidden from the legend.
        ax.legend(handles, labels, fontsize=7, loc="best", frameon=False)
    return _encode(fig, title)


def _importance_plot(
    windows: list[Any],
    lines: dict[str, list[Any]],
    levels: dict[str, list[Any]],
    drifted: Any,
    *,
    ylabel: str,
) -> _Plot:
    """Each feature's importance per window (solid) and its reference's (dotted, same
    colour); a vertical line at the first drifted window."""
    title = "feature importance per window"
    fig, (ax,) = _figure(7.0, 3.0)
    handles, labels, values = [], [], []
    for label, ys in lines.items():
        xy = [(w, y) for w, y in zip(windows, ys, strict=True) if _finite(y)]
        if not xy:
            continue
        (line,) = ax.plot(*zip(*xy, strict=True), marker="o", ms=2.5, lw=1.1)
        ref = [(w, y) for w, y in zip(windows, levels[label], strict=True) if _finite(y)]
        if ref:
            ax.plot(
                *zip(*ref, strict=True), ls=":", lw=1, color=line.get_color(), drawstyle="steps-mid"
            )
        handles.append(line)
        labels.append(_text(label))
        values += [y for _, y in xy + ref]
    if _finite(drifted):
        ax.axvline(drifted, color=ALERT_COLOR, ls="--", lw=1)
    _log_if_wide(ax, values)
    _windows_axis(ax, title, ylabel)
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best", frameon=False)
    note = "dotted: the reference's importance" + (
        f"; dashed red: the first drifted window ({drifted})" if drifted is not None else ""
    )
    return _encode(fig, title, note)


def _distribution_plot(
    name: str, kind: str | None, ref: pa.ChunkedArray, cur: pa.ChunkedArray
) -> _Plot | tuple[str, str]:
    kind = _kind_of(ref.type, kind)
    if kind is None or _kind_of(cur.type, kind) != kind:
        return (name, f"cannot plot a {ref.type} column against a {cur.type} one")
    if kind == "categorical":
        return _categorical_plot(name, ref, cur)
    if kind == "numeric":
        a, b = _floats(ref), _floats(cur)
        fig, (ax,) = _figure(5.0, 2.8)
        note = _histogram(ax, a, b, xlabel=name)
        ax.set_title(_text(name), fontsize=9, loc="left")
        return _encode(fig, name, note)
    return _vector_plot(name, ref, cur)


def _vector_plot(name: str, ref: pa.ChunkedArray, cur: pa.ChunkedArray) -> _Plot | tuple[str, str]:
    a, b = _vectors(ref), _vectors(cur)
    if a is None or b is None or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        return (name, "vectors are empty or of unequal length: not plotted")
    sample = a[np.random.default_rng(0).permutation(len(a))[:PCA_ROWS]]
    mean = sample.mean(axis=0)
    axis = np.linalg.svd(sample - mean, full_matrices=False)[2][0]
    fig, axes = _figure(9.0, 2.8, ncols=2)
    notes = [
        _histogram(axes[0], np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1), xlabel="norm"),
        _histogram(axes[1], (a - mean) @ axis, (b - mean) @ axis, xlabel="first principal axis"),
    ]
    axes[0].set_title(_text(f"{name}: row norms"), fontsize=9, loc="left")
    axes[1].set_title(_text(f"{name}: reference PC 1"), fontsize=9, loc="left")
    return _encode(fig, name, " · ".join(n for n in notes if n))


def _kind_of(dtype: pa.DataType, hint: str | None) -> str | None:
    if pa.types.is_fixed_size_list(dtype) or pa.types.is_list(dtype):
        return "vector"
    if pa.types.is_boolean(dtype) or pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "categorical"
    if pa.types.is_dictionary(dtype):
        return "categorical"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "categorical" if hint == "categorical" else "numeric"
    return None


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    values = col.cast(pa.float64()).to_numpy()
    return values[np.isfinite(values)]


def _vectors(col: pa.ChunkedArray) -> np.ndarray | None:
    arr = col.combine_chunks().drop_null()
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
    else:
        lengths = set(pc.list_value_length(arr).to_pylist())
        if len(lengths) > 1:
            return None
        size = lengths.pop() if lengths else 0
    flat = arr.flatten().cast(pa.float64()).to_numpy(zero_copy_only=False)
    values = flat.reshape(len(arr), size)
    return values[np.isfinite(values).all(axis=1)]


def _histogram(ax: Any, ref: np.ndarray, cur: np.ndarray, *, xlabel: str) -> str:
    """Overlay the two samples' shares per bin on bins spanning the reference's central
    99%; return a note on how much of each sample fell outside (not drawn)."""
    if not len(ref) or not len(cur):
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        return "no finite values to plot"
    lo, hi = (float(q) for q in np.quantile(ref, [TAIL, 1 - TAIL]))
    if hi <= lo:
        pad = max(abs(lo), 1.0) * 0.05
        lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, 31)
    outside = []
    for values, color, label in ((ref, REF_COLOR, "reference"), (cur, CUR_COLOR, "current")):
        inside = values[(values >= lo) & (values <= hi)]
        shares = np.histogram(inside, edges)[0] / len(values)
        ax.stairs(shares, edges, fill=True, alpha=0.35, color=color, label=label)
        ax.stairs(shares, edges, color=color, lw=1.1)
        outside.append(1 - len(inside) / len(values))
    ax.set_xlabel(_text(xlabel), fontsize=8)
    ax.set_ylabel("share of rows", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    if max(outside) < 0.0005:
        return ""
    return (
        f"outside the reference's {100 * TAIL:g}–{100 * (1 - TAIL):g}% range, not drawn: "
        f"reference {100 * outside[0]:.1f}%, current {100 * outside[1]:.1f}%"
    )


def _categorical_plot(name: str, ref: pa.ChunkedArray, cur: pa.ChunkedArray) -> _Plot:
    ref_shares, cur_shares = _shares(ref), _shares(cur)
    both = set(ref_shares) | set(cur_shares)
    ranked = sorted(both, key=lambda k: (-(ref_shares.get(k, 0) + cur_shares.get(k, 0)), k))
    shown = ranked[:MAX_CATEGORIES]
    labels = [_text(k if len(k) <= 24 else k[:23] + "…") for k in shown]
    top: list[str | None] = list(shown)
    note = ""
    if len(ranked) > len(top):
        top.append(None)
        labels.append("(other)")
        note = f"{len(ranked) - MAX_CATEGORIES} less frequent categories grouped as (other)"

    def share(shares: dict[str, float], k: str | None) -> float:
        return shares.get(k, 0.0) if k is not None else 1 - sum(shares.get(t, 0.0) for t in shown)

    fig, (ax,) = _figure(5.0, 0.9 + 0.28 * len(top))
    pos = np.arange(len(top))
    ax.barh(pos - 0.2, [share(ref_shares, k) for k in top], 0.4, color=REF_COLOR, label="reference")
    ax.barh(pos + 0.2, [share(cur_shares, k) for k in top], 0.4, color=CUR_COLOR, label="current")
    ax.set_yticks(pos, labels)
    ax.invert_yaxis()
    ax.set_xlabel("share of rows", fontsize=8)
    ax.set_title(_text(name), fontsize=9, loc="left")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return _encode(fig, name, note)


def _shares(col: pa.ChunkedArray) -> dict[str, float]:
    counts = pc.value_counts(col.cast(pa.string()) if not pa.types.is_string(col.type) else col)
    total = len(col) or 1
    return {
        "(null)" if v is None else str(v): c / total
        for v, c in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }


# -- formatting -------------------------------------------------------------------------------


def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool | str):
        return str(v)
    if isinstance(v, numbers.Integral):
        return f"{v:,}"
    if isinstance(v, numbers.Real) and math.isfinite(v):
        # Exponents only for the small numbers (p-values); seconds and counts read plainly.
        return f"{v:,.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"
    if isinstance(v, numbers.Real):
        return str(v)
    return "—"


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if _finite(v) else "—"


def _when(v: Any) -> str:
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v)
        except ValueError:
            return v
    if isinstance(v, datetime):
        return v.isoformat(sep=" ", timespec="minutes")
    return "—"
