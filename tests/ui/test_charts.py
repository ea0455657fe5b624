"""The console's charts: inline SVG a screen reader can name and a person can read without
colour, each with its numbers as a table."""

from __future__ import annotations

import math
import re

from keel.ui.charts import Band, Bar, Series, bar_chart, line_chart, number
from keel.ui.graph import Node, graph


def test_a_line_chart_is_an_image_with_a_title_a_description_and_its_data() -> None:
    svg = line_chart(
        title="loss <per> window",
        x_label="window",
        y_label="logloss",
        series=[
            Series("estimated", [(0, 0.1), (1, None), (2, 0.3)], marker=True),
            Series("threshold", [(0, 0.2), (2, 0.2)], style="threshold"),
        ],
        bands=[Band("95% interval", [(0, 0.05, 0.15), (2, 0.2, 0.4)])],
        summary="crossed once",
    )
    assert 'role="img"' in svg and re.search(r'aria-labelledby="(chart-\d+)-t \1-d"', svg)
    assert "<title id=" in svg and ">crossed once</desc>" in svg
    assert "loss &lt;per&gt; window" in svg  # text is escaped
    assert svg.count('data-series="estimated"') == 2  # a gap draws no point
    assert 'class="band"' in svg and "stroke-dasharray" not in svg  # styles come from CSS
    rows = re.findall(r"<tr><th scope=\"row\">", svg)
    assert len(rows) == 3  # one row per x, every series and band a column
    assert "0.05 – 0.15" in svg


def test_an_empty_chart_says_so() -> None:
    svg = line_chart(title="nothing", x_label="x", y_label="y", series=[])
    assert "nothing to draw yet" in svg and "<svg" not in svg


def test_bars_carry_their_sign_in_words_and_position() -> None:
    svg = bar_chart(
        title="why", bars=[Bar("amount", 2.5), Bar("age", -0.5)], value_label="contribution"
    )
    assert 'data-bars="2"' in svg
    assert re.search(r'class="bar up" data-label="amount".*>\+2\.5<', svg)
    assert re.search(r'class="bar down" data-label="age".*>-0\.5<', svg)


def test_a_graph_draws_each_node_once_with_its_links() -> None:
    svg = graph(
        title="lineage",
        nodes=[
            Node("v1", "view", 0, ["card", "fingerprint abc"], href="/features#view-card"),
            Node("v2", "view", 0, ["user"]),
            Node("ts", "training-set", 1, ["training set, 10 rows"]),
        ],
        edges=[("v1", "ts"), ("v2", "ts"), ("v2", "missing")],
    )
    assert svg.count('class="lineage-node" data-kind="view"') == 2
    assert svg.count('class="edge"') == 2  # an edge to no node is left out
    assert '<a href="/features#view-card"' in svg
    assert svg.count('<li data-kind="') == 3  # the text alternative lists every node


def test_numbers_read_as_a_person_writes_them() -> None:
    assert [number(v) for v in (None, math.nan, math.inf, 0.0, 12345.6, 3e-5)] == [
        "—",
        "—",
        "∞",
        "0",
        "12,346",
        "3.00e-05",
    ]
