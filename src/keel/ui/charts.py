"""Charts as inline SVG, drawn on the server: no charting library, nothing to fetch.

Each chart is a ``<figure>`` whose ``<svg role="img">`` carries a ``<title>`` and a ``<desc>``
(its ``aria-labelledby``), and whose figure also holds the chart's data as a table, so a
screen reader, a text browser and a test read the same numbers a person sees. Series differ
by dash pattern and marker as well as colour; colours come from the stylesheet (classes
``s0``, ``s1``…, ``threshold``, ``band``), so the SVG carries no inline style.

Example
-------
>>> svg = line_chart(
...     title="latency",
...     x_label="time",
...     y_label="ms",
...     series=[Series("p99", [(0, 1.0), (1, 2.0)], marker=True)],
... )
>>> 'role="img"' in svg and svg.count('class="point s0"') == 2
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup

__all__ = ["Band", "Bar", "Series", "bar_chart", "line_chart", "number"]

_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class Series:
    """One line: ``points`` are ``(x, y)``, ``y`` None for a gap. ``style`` is a stylesheet
    class (``s0``… by position when empty; ``threshold`` for a level, drawn dashed)."""

    name: str
    points: Sequence[tuple[float, float | None]]
    style: str = ""
    marker: bool = False
    #: Each point's own label in the data table and its tooltip (default: the x value).
    labels: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Band:
    """A shaded interval around a line (a confidence interval): ``(x, low, high)``."""

    name: str
    points: Sequence[tuple[float, float, float]]


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float


def number(value: float | None, digits: int = 3) -> str:
    """A number for a person: ``—`` for none, ``1.23k``-free plain notation, small values in
    scientific notation.

    >>> number(0.000123), number(1234.5), number(None), number(0.25)
    ('1.23e-04', '1,234', '—', '0.25')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    magnitude = abs(value)
    if magnitude and magnitude < 10 ** -(digits - 1):
        return f"{value:.{digits - 1}e}"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


class _Frame:
    """Plot area and scales of a chart."""

    left, right, top, bottom = 64, 16, 12, 40

    def __init__(
        self, width: int, height: int, xs: Sequence[float], ys: Sequence[float], log_y: bool
    ) -> None:
        self.width, self.height = width, height
        self.log_y = log_y and all(y > 0 for y in ys)
        self.x0, self.x1 = _span(xs)
        lo, hi = _span([math.log10(y) for y in ys] if self.log_y else ys)
        if not self.log_y:
            lo = min(lo, 0.0) if lo >= 0 and hi > 0 and lo < hi * 0.5 else lo
        pad = (hi - lo) * 0.06
        self.y0, self.y1 = lo - (pad if lo != 0 else 0), hi + pad

    def x(self, v: float) -> float:
        inner = self.width - self.left - self.right
        return self.left + (v - self.x0) / (self.x1 - self.x0) * inner

    def y(self, v: float) -> float:
        inner = self.height - self.top - self.bottom
        value = math.log10(v) if self.log_y else v
        return self.top + (1 - (value - self.y0) / (self.y1 - self.y0)) * inner

    def y_ticks(self) -> list[float]:
        if self.log_y:
            return [10**e for e in range(math.floor(self.y0), math.ceil(self.y1) + 1)]
        return _ticks(self.y0, self.y1)


def _span(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if lo == hi:
        return (lo - 1, hi + 1) if lo == 0 else (lo - abs(lo) * 0.5, hi + abs(hi) * 0.5)
    return lo, hi


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _path(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(points))


def line_chart(
    *,
    title: str,
    x_label: str,
    y_label: str,
    series: Sequence[Series],
    bands: Sequence[Band] = (),
    x_format: Callable[[float], str] = number,
    y_format: Callable[[float], str] = number,
    log_y: bool = False,
    width: int = 720,
    height: int = 260,
    summary: str = "",
    table: bool = True,
) -> Markup:
    """A line chart of ``series`` (with shaded ``bands``) and its data table.

    ``summary`` is the chart's description for assistive technology (what it shows and
    what to read from it); ``title`` is its visible caption."""
    chart_id = f"chart-{next(_ids)}"
    xs = [x for s in series for x, _ in s.points] + [x for b in bands for x, _, _ in b.points]
    ys = [y for s in series for _, y in s.points if y is not None]
    ys += [v for b in bands for _, lo, hi in b.points for v in (lo, hi) if math.isfinite(v)]
    if not xs:
        return Markup('<p class="empty">{}: nothing to draw yet.</p>').format(title)
    frame = _Frame(width, height, xs, ys or [0.0, 1.0], log_y)
    parts = [
        Markup(
            '<svg viewBox="0 0 {w} {h}" role="img" aria-labelledby="{id}-t {id}-d" '
            'class="chart" data-points="{n}" preserveAspectRatio="xMidYMid meet">'
        ).format(w=width, h=height, id=chart_id, n=max((len(s.points) for s in series), default=0)),
        Markup('<title id="{}-t">{}</title>').format(chart_id, title),
        Markup('<desc id="{}-d">{}</desc>').format(chart_id, summary or title),
    ]
    parts.append(_axes(frame, x_label, y_label, x_format, y_format))
    for band in bands:
        inside = [(x, lo, hi) for x, lo, hi in band.points if math.isfinite(lo + hi)]
        if len(inside) < 2:
            continue
        top = [(frame.x(x), frame.y(_clip(frame, hi))) for x, _, hi in inside]
        low = [(frame.x(x), frame.y(_clip(frame, lo))) for x, lo, _ in reversed(inside)]
        parts.append(
            Markup('<path class="band" d="{} Z"><title>{}</title></path>').format(
                _path(top + low), band.name
            )
        )
    for i, s in enumerate(series):
        style = s.style or f"s{i % 6}"
        segment: list[tuple[float, float]] = []
        segments: list[list[tuple[float, float]]] = [segment]
        for x, y in s.points:
            if y is None or not math.isfinite(y) or (frame.log_y and y <= 0):
                segment = []
                segments.append(segment)
                continue
            segment.append((frame.x(x), frame.y(y)))
        for seg in segments:
            if len(seg) > 1:
                parts.append(
                    Markup('<path class="line {}" d="{}" fill="none"/>').format(style, _path(seg))
                )
        if s.marker or all(len(seg) < 2 for seg in segments):
            for j, (x, y) in enumerate(s.points):
                if y is None or not math.isfinite(y) or (frame.log_y and y <= 0):
                    continue
                label = s.labels[j] if j < len(s.labels) else x_format(x)
                parts.append(
                    Markup(
                        '<circle class="point {}" data-series="{}" cx="{:.1f}" cy="{:.1f}" '
                        'r="3.5"><title>{}: {} {}</title></circle>'
                    ).format(style, s.name, frame.x(x), frame.y(y), label, s.name, y_format(y))
                )
    parts.append(Markup("</svg>"))
    legend = Markup("").join(
        Markup('<li><span class="key {}" aria-hidden="true"></span>{}</li>').format(
            s.style or f"s{i % 6}", s.name
        )
        for i, s in enumerate(series)
    ) + Markup("").join(
        Markup('<li><span class="key band" aria-hidden="true"></span>{}</li>').format(b.name)
        for b in bands
    )
    figure = Markup(
        '<figure class="figure" id="{id}"><figcaption>{title}</figcaption>{svg}'
        '<ul class="legend">{legend}</ul>{table}</figure>'
    )
    return figure.format(
        id=chart_id,
        title=title,
        svg=Markup("").join(parts),
        legend=legend,
        table=_table(x_label, series, bands, x_format, y_format) if table else Markup(""),
    )


def _clip(frame: _Frame, v: float) -> float:
    """A band edge kept inside the plot (an interval may reach far past the lines)."""
    lo = 10**frame.y0 if frame.log_y else frame.y0
    hi = 10**frame.y1 if frame.log_y else frame.y1
    return min(max(v, lo), hi)


def _axes(
    frame: _Frame,
    x_label: str,
    y_label: str,
    x_format: Callable[[float], str],
    y_format: Callable[[float], str],
) -> Markup:
    w, h = frame.width, frame.height
    bottom = h - frame.bottom
    out = [
        Markup('<g class="axes" aria-hidden="true">'),
        Markup('<line x1="{l}" y1="{b}" x2="{r}" y2="{b}"/>').format(
            l=frame.left, b=bottom, r=w - frame.right
        ),
        Markup('<line x1="{l}" y1="{t}" x2="{l}" y2="{b}"/>').format(
            l=frame.left, t=frame.top, b=bottom
        ),
    ]
    for t in frame.y_ticks():
        y = frame.y(t)
        if frame.top - 0.5 <= y <= bottom + 0.5:
            out.append(
                Markup(
                    '<line class="grid" x1="{l}" y1="{y:.1f}" x2="{r}" y2="{y:.1f}"/>'
                    '<text x="{tx}" y="{ty:.1f}" text-anchor="end">{label}</text>'
                ).format(
                    l=frame.left,
                    r=w - frame.right,
                    y=y,
                    tx=frame.left - 6,
                    ty=y + 4,
                    label=y_format(t),
                )
            )
    span = frame.x1 - frame.x0
    for i in range(5):
        v = frame.x0 + span * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(
            Markup('<text x="{x:.1f}" y="{y}" text-anchor="{a}">{label}</text>').format(
                x=frame.x(v), y=bottom + 16, a=anchor, label=x_format(v)
            )
        )
    out.append(
        Markup('<text class="label" x="{x}" y="{y}" text-anchor="middle">{t}</text>').format(
            x=(frame.left + w - frame.right) / 2, y=h - 4, t=x_label
        )
    )
    out.append(
        Markup(
            '<text class="label" x="12" y="{y}" text-anchor="middle" '
            'transform="rotate(-90 12 {y})">{t}</text>'
        ).format(y=(frame.top + bottom) / 2, t=y_label)
    )
    out.append(Markup("</g>"))
    return Markup("").join(out)


def _table(
    x_label: str,
    series: Sequence[Series],
    bands: Sequence[Band],
    x_format: Callable[[float], str],
    y_format: Callable[[float], str],
) -> Markup:
    rows: dict[float, dict[str, str]] = {}
    labels: dict[float, str] = {}
    for s in series:
        for j, (x, y) in enumerate(s.points):
            rows.setdefault(x, {})[s.name] = "—" if y is None else y_format(y)
            if j < len(s.labels):
                labels[x] = s.labels[j]
    for b in bands:
        for x, lo, hi in b.points:
            rows.setdefault(x, {})[b.name] = f"{y_format(lo)} – {y_format(hi)}"
    names = [s.name for s in series] + [b.name for b in bands]
    head = Markup("").join(Markup('<th scope="col">{}</th>').format(n) for n in names)
    body = Markup("").join(
        Markup('<tr><th scope="row">{}</th>{}</tr>').format(
            labels.get(x, x_format(x)),
            Markup("").join(Markup("<td>{}</td>").format(rows[x].get(n, "—")) for n in names),
        )
        for x in sorted(rows)
    )
    return Markup(
        '<details class="data"><summary>Data table ({n} rows)</summary><div class="scroll">'
        '<table><thead><tr><th scope="col">{x}</th>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div></details>"
    ).format(n=len(rows), x=x_label, head=head, body=body)


def bar_chart(
    *,
    title: str,
    bars: Sequence[Bar],
    value_label: str,
    summary: str = "",
    width: int = 960,
    value_format: Callable[[float], str] = number,
) -> Markup:
    """Horizontal bars from a zero line: positive to the right (class ``up``), negative to
    the left (``down``), each labelled with its signed value, so the sign never rests on
    colour alone."""
    chart_id = f"chart-{next(_ids)}"
    if not bars:
        return Markup('<p class="empty">{}: nothing to draw.</p>').format(title)
    # Labels right-aligned before the zero line: as wide as the longest (about 7 units a
    # character at the 12-unit font), within half the chart.
    row, value_w = 26, 80
    label_w = min(width // 2, 7 * max(len(b.label) for b in bars) + 12)
    height = row * len(bars) + 24
    largest = max(abs(b.value) for b in bars) or 1.0
    negative = any(b.value < 0 for b in bars)
    plot_l = label_w + 8
    plot_r = width - value_w
    zero = (plot_l + plot_r) / 2 if negative else plot_l
    half = (plot_r - plot_l) / 2 if negative else plot_r - plot_l
    parts = [
        Markup(
            '<svg viewBox="0 0 {w} {h}" role="img" aria-labelledby="{id}-t {id}-d" class="chart '
            'bars" data-bars="{n}">'
        ).format(w=width, h=height, id=chart_id, n=len(bars)),
        Markup('<title id="{}-t">{}</title>').format(chart_id, title),
        Markup('<desc id="{}-d">{}</desc>').format(chart_id, summary or title),
        Markup('<line class="zero" x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{y}"/>').format(
            x=zero, y=height - 16
        ),
    ]
    for i, b in enumerate(bars):
        y = 8 + i * row
        length = abs(b.value) / largest * half
        x = zero if b.value >= 0 else zero - length
        kind = "up" if b.value >= 0 else "down"
        parts.append(
            Markup(
                '<g class="bar {kind}" data-label="{label}"><text class="name" x="{lx}" '
                'y="{ty}" text-anchor="end">{label}</text><rect x="{x:.1f}" y="{y}" '
                'width="{wd:.1f}" height="{hh}"/><text class="value" x="{vx}" y="{ty}">'
                "{value}</text><title>{label}: {value}</title></g>"
            ).format(
                kind=kind,
                label=b.label,
                lx=label_w,
                ty=y + 14,
                x=x,
                y=y,
                wd=max(length, 1.0),
                hh=row - 8,
                vx=plot_r + 6,
                value=("+" if b.value > 0 else "") + value_format(b.value),
            )
        )
    parts.append(
        Markup('<text class="label" x="{x:.1f}" y="{y}" text-anchor="middle">{t}</text>').format(
            x=(plot_l + plot_r) / 2, y=height - 2, t=value_label
        )
    )
    parts.append(Markup("</svg>"))
    body = Markup("").join(
        Markup('<tr><th scope="row">{}</th><td>{}</td></tr>').format(
            b.label, ("+" if b.value > 0 else "") + value_format(b.value)
        )
        for b in bars
    )
    return Markup(
        '<figure class="figure" id="{id}"><figcaption>{title}</figcaption>{svg}'
        '<details class="data"><summary>Data table ({n} rows)</summary><table><thead><tr>'
        '<th scope="col">feature</th><th scope="col">{v}</th></tr></thead><tbody>{body}'
        "</tbody></table></details></figure>"
    ).format(
        id=chart_id,
        title=title,
        svg=Markup("").join(parts),
        n=len(bars),
        v=value_label,
        body=body,
    )
