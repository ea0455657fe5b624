"""A small left-to-right graph as inline SVG: lineage (feature views → training set → version
→ parent). Nodes sit in columns; each is a box of a few short lines, a link where it leads
somewhere, and carries its full detail as a tooltip and in the list that follows the drawing.

Example
-------
>>> svg = graph(
...     title="lineage",
...     nodes=[Node("a", "view", 0, ["card"]), Node("b", "version", 1, ["fraud@1"])],
...     edges=[("a", "b")],
... )
>>> svg.count('class="lineage-node"'), 'role="img"' in svg
(2, True)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup

__all__ = ["Node", "graph"]

_ids = itertools.count()
BOX_W, GAP, LINE_H, PAD = 200, 56, 16, 8
MAX_CHARS = 27


@dataclass(frozen=True, slots=True)
class Node:
    """``kind`` names what it is (``view``, ``training-set``, ``version``, ``parent``);
    ``column`` where it stands, from the left; ``lines`` what its box says."""

    id: str
    kind: str
    column: int
    lines: Sequence[str]
    href: str | None = None
    detail: str = ""
    tags: Sequence[str] = field(default_factory=tuple)


def _fit(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def graph(
    *, title: str, nodes: Sequence[Node], edges: Sequence[tuple[str, str]], summary: str = ""
) -> Markup:
    """The graph of ``nodes`` joined by ``edges`` (``(from id, to id)``), and a list of the
    nodes in reading order as its text alternative."""
    chart_id = f"graph-{next(_ids)}"
    if not nodes:
        return Markup('<p class="empty">{}: nothing recorded.</p>').format(title)
    columns: dict[int, list[Node]] = {}
    for n in nodes:
        columns.setdefault(n.column, []).append(n)
    heights = {n.id: LINE_H * len(n.lines) + 2 * PAD for n in nodes}
    col_height = {
        c: sum(heights[n.id] for n in ns) + PAD * 2 * (len(ns) - 1) for c, ns in columns.items()
    }
    total_h = max(col_height.values()) + 2 * PAD
    width = (max(columns) + 1) * (BOX_W + GAP) - GAP + 2 * PAD
    where: dict[str, tuple[float, float, float]] = {}  # id -> x, y, height
    for c, ns in columns.items():
        y = PAD + (total_h - 2 * PAD - col_height[c]) / 2
        for n in ns:
            where[n.id] = (PAD + c * (BOX_W + GAP), y, heights[n.id])
            y += heights[n.id] + 2 * PAD
    parts = [
        Markup(
            '<svg viewBox="0 0 {w} {h}" role="img" aria-labelledby="{id}-t {id}-d" '
            'class="chart graph">'
        ).format(w=width, h=total_h, id=chart_id),
        Markup('<title id="{}-t">{}</title>').format(chart_id, title),
        Markup('<desc id="{}-d">{}</desc>').format(chart_id, summary or title),
        Markup(
            '<defs><marker id="{}-arrow" viewBox="0 0 10 10" refX="10" refY="5" '
            'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
            '<path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>'
        ).format(chart_id),
    ]
    for a, b in edges:
        if a not in where or b not in where:
            continue
        ax, ay, ah = where[a]
        bx, by, bh = where[b]
        x1, y1, x2, y2 = ax + BOX_W, ay + ah / 2, bx, by + bh / 2
        mid = (x1 + x2) / 2
        parts.append(
            Markup(
                '<path class="edge" d="M{:.1f},{:.1f} C{:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f}" '
                'fill="none" marker-end="url(#{}-arrow)"/>'
            ).format(x1, y1, mid, y1, mid, y2, x2 - 1, y2, chart_id)
        )
    for n in nodes:
        x, y, h = where[n.id]
        text = Markup("").join(
            Markup('<text x="{:.1f}" y="{:.1f}" class="{}">{}</text>').format(
                x + PAD, y + PAD + LINE_H * (i + 1) - 4, "head" if i == 0 else "", _fit(line)
            )
            for i, line in enumerate(n.lines)
        )
        box = Markup(
            '<g class="lineage-node" data-kind="{kind}" data-id="{id}">'
            '<rect x="{x:.1f}" y="{y:.1f}" width="{w}" height="{h}" rx="6" class="node {kind}"/>'
            "{text}<title>{detail}</title></g>"
        ).format(
            kind=n.kind,
            id=n.id,
            x=x,
            y=y,
            w=BOX_W,
            h=h,
            text=text,
            detail=n.detail or " · ".join(n.lines),
        )
        if n.href:
            box = Markup('<a href="{}" aria-label="{}">{}</a>').format(
                n.href, n.detail or " ".join(n.lines), box
            )
        parts.append(box)
    parts.append(Markup("</svg>"))
    listing = Markup("").join(
        Markup('<li data-kind="{}"><strong>{}</strong>: {}</li>').format(
            n.kind, n.kind.replace("-", " "), n.detail or " · ".join(n.lines)
        )
        for n in sorted(nodes, key=lambda n: n.column)
    )
    return Markup(
        '<figure class="figure wide" id="{id}"><figcaption>{title}</figcaption>'
        '<div class="scroll">{svg}</div><details class="data"><summary>As a list '
        "({n} nodes)</summary><ol>{listing}</ol></details></figure>"
    ).format(id=chart_id, title=title, svg=Markup("").join(parts), n=len(nodes), listing=listing)
