"""The HTML monitoring report: self-contained, escaped, one plot per drifted feature."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from keel.errors import UnavailableError, ValidationError
from keel.monitoring.report import write_report

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

FEATURES = {"amount": "numeric", "country": "categorical", "embedding": "vector", "age": "numeric"}
STATISTIC = {"numeric": "ks", "categorical": "chi2", "vector": "mmd"}
LEVELS = {"amount": 0.031, "country": 14.2, "embedding": 0.0042, "age": 0.029}
DIM = 8


def _entry(name: str, kind: str, drifted: bool, rng: np.random.Generator) -> dict:
    level = LEVELS.get(name, 0.03)
    value = level * (rng.uniform(3, 40) if drifted else rng.uniform(0.2, 0.8))
    return {
        "feature": name,
        "kind": kind,
        "statistic": STATISTIC[kind],
        "value": value,
        "threshold": level,
        "p_value": 1e-12 if drifted else 0.4,
        "psi": 0.4 if drifted else 0.01,
        "wasserstein": 3.2 if kind == "numeric" else None,
        "jensen_shannon": 0.1 if kind != "vector" else None,
        "drifted": drifted,
    }


def make_history(
    drifted: tuple[str, ...] = ("amount", "embedding"),
    features: dict[str, str] = FEATURES,
    windows: int = 10,
    drift_from: int = 6,
) -> list[dict]:
    """Ten hourly windows: ``drifted`` features drift from window 6, the prediction from 8,
    the performance estimate crosses its threshold at 7, labels arrive for windows 1–4 only."""
    rng = np.random.default_rng(1)
    history = []
    for w in range(1, windows + 1):
        late = w >= drift_from
        alerts = [f"drift:{n}" for n in features if late and n in drifted]
        estimated = 0.13 + 0.01 * max(0, w - 4) + (0.03 if w >= 7 else 0.0)
        if w >= 8:
            alerts.append("prediction")
        if estimated > 0.18:
            alerts.append("performance")
        history.append(
            {
                "route": "fraud",
                "version": "fraud@1" if w < 9 else "fraud@2",
                "window": w,
                "start": f"2026-11-20T{w:02d}:00:00+00:00",
                "end": f"2026-11-20T{w + 1:02d}:00:00+00:00",
                "rows": 2000 + 10 * w,
                "features": [_entry(n, k, late and n in drifted, rng) for n, k in features.items()],
                "prediction": _entry("score", "numeric", w >= 8, rng),
                "performance": {
                    "metric": "logloss",
                    "estimated": estimated,
                    "threshold": 0.18,
                    "reference": 0.12,
                    "alert": estimated > 0.18,
                    "realized": estimated + 0.01 if w <= 4 else None,
                    "labelled": 1500 if w <= 4 else 0,
                },
                "staleness": {
                    "user_activity:spend_1h": {"p50": 1.2, "p99": 30.0 * w, "max": 41.0 * w},
                    "merchant:risk_7d": {"p50": 60.0, "p99": 3600.0, "max": 7200.0},
                },
                "skew": {
                    "top_entity_share": 0.02 + 0.01 * w,
                    "entities": 1800,
                    "versions": {"fraud@1": 0.9, "fraud@2": 0.1},
                    "expected": {"fraud@1": 0.9, "fraud@2": 0.1},
                    "training_serving": {
                        "amount": {"compared": 200, "mismatched": 3 if late else 0, "max_abs": 0.5}
                    },
                },
                "alerts": alerts,
            }
        )
    return history


def make_tables(names: dict[str, str] = FEATURES) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(2)

    def table(n: int, shift: float) -> pa.Table:
        cols = {}
        for name, kind in names.items():
            if kind == "numeric":
                cols[name] = rng.lognormal(3 + shift, 1, n)
            elif kind == "categorical":
                p = [0.5, 0.3, 0.1, 0.1] if shift == 0 else [0.2, 0.2, 0.2, 0.4]
                cols[name] = pa.array(rng.choice(["DE", "FR", "US", "<i>NL</i>"], n, p=p))
            else:
                vectors = rng.normal(shift, 1, (n, DIM)).astype(np.float32)
                cols[name] = pa.FixedSizeListArray.from_arrays(vectors.ravel(), DIM)
        cols["score"] = rng.beta(1 + 3 * shift, 8, n)
        return pa.table(cols)

    return table(20_000, 0.0), table(2_000, 0.5)


CALIBRATION = {
    name: {
        "statistic": STATISTIC[kind],
        "baseline_mean": LEVELS[name] / 3,
        "baseline_std": LEVELS[name] / 10,
        "level": LEVELS[name],
        "window_rows": 2000,
        "false_alert_rate": 0.01,
    }
    for name, kind in FEATURES.items()
}


def section(html: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', html, re.S)
    assert match, f"no section {name!r}"
    return match.group(1)


def plots(html: str, name: str) -> int:
    return section(html, name).count("<img ")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    reference, current = make_tables()
    path = tmp_path_factory.mktemp("report") / "out" / "fraud.html"
    written = write_report(
        path,
        route="fraud",
        model="fraud",
        history=make_history(),
        reference=reference,
        current=current,
        calibration=CALIBRATION,
    )
    return written, written.read_text("utf-8")


def test_written_atomically_where_asked(report: tuple[Path, str]) -> None:
    path, html = report
    assert path.name == "fraud.html" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["fraud.html"]
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")


def test_self_contained(report: tuple[Path, str]) -> None:
    _, html = report
    assert not re.search(r"https?://|(?:src|href)\s*=\s*[\"']?//|@import|url\(", html)
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', html))


def test_header_and_verdict(report: tuple[Path, str]) -> None:
    _, html = report
    verdict = re.search(r'<div class="verdict alert" id="verdict">(.*?)</div>', html, re.S)
    assert verdict, "the latest window has alerts: the verdict must say so"
    assert "drifted: amount, embedding" in verdict.group(1)
    assert "performance alert" in verdict.group(1)
    assert "country" not in verdict.group(1)
    head = section(
        html.replace("<header", "<section").replace("</header>", "</section>"), "summary"
    )
    assert "fraud@1, fraud@2" in head and "10 windows (1–10)" in head
    assert "2026-11-20 01:00+00:00" in head and "2026-11-20 11:00+00:00" in head


def test_one_plot_per_drifted_feature(report: tuple[Path, str]) -> None:
    _, html = report
    assert plots(html, "drift") == 2
    assert 'alt="amount"' in section(html, "drift") and 'alt="embedding"' in section(html, "drift")
    assert "Never drifted: age, country." in section(html, "drift")
    # Drifted in the latest window, plus the prediction column.
    assert plots(html, "distributions") == 3
    assert all(
        f'alt="{n}"' in section(html, "distributions") for n in ("amount", "embedding", "score")
    )
    assert plots(html, "prediction") == plots(html, "performance") == 1
    assert plots(html, "staleness") == plots(html, "skew") == 1


def test_timeline_and_tables(report: tuple[Path, str]) -> None:
    _, html = report
    timeline = section(html, "timeline")
    assert timeline.count('<tr class="alert">') == 5
    assert '<span class="tag">drift:amount</span>' in timeline
    assert "last realized at window 4 (1500 labelled)" in section(html, "performance")
    skew = section(html, "skew")
    assert "fraud@2" in skew and '<tr class="alert"><td>amount</td>' in skew
    assert "user_activity:spend_1h" in section(html, "staleness")


def test_calibration_levels_shown(report: tuple[Path, str]) -> None:
    _, html = report
    table = section(html, "calibration")
    for name, c in CALIBRATION.items():
        assert f"<td>{name}</td>" in table
        assert f"<b>{c['level']:.4g}</b>" in table


@pytest.mark.parametrize("name", ["amount", "country", "embedding"])
def test_distribution_of_each_kind(tmp_path: Path, name: str) -> None:
    reference, current = make_tables()
    path = write_report(
        tmp_path / "r.html",
        route="fraud",
        model="fraud",
        history=make_history(drifted=(name,)),
        reference=reference,
        current=current,
    )
    html = section(path.read_text("utf-8"), "distributions")
    assert html.count("<img ") == 2 and f'alt="{name}"' in html
    assert "cannot plot" not in html and "not plotted" not in html


def test_feature_names_are_escaped(tmp_path: Path) -> None:
    evil = {"<b>x</b>": "numeric", "price $": "categorical", "_hidden": "numeric"}
    reference, current = make_tables(evil)
    path = write_report(
        tmp_path / "r.html",
        route="<script>alert(1)</script>",
        model="m",
        history=make_history(drifted=tuple(evil), features=evil),
        reference=reference,
        current=current,
        calibration={"<b>x</b>": {"statistic": "ks", "level": 0.03}},
    )
    html = path.read_text("utf-8")
    assert "<b>x</b>" not in html and "<script>alert" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in section(html, "calibration")
    assert "drifted: &lt;b&gt;x&lt;/b&gt;, price $, _hidden" in html
    assert plots(html, "drift") == 3 and plots(html, "distributions") == 4


def test_missing_parts_say_so(tmp_path: Path) -> None:
    history = [
        {"window": w, "start": None, "end": None, "rows": 0, "features": [], "alerts": []}
        for w in (1, 2)
    ]
    path = write_report(tmp_path / "r.html", route="fraud", model="fraud", history=history)
    html = path.read_text("utf-8")
    assert 'class="verdict ok"' in html
    assert "No feature drifted in any window." in html
    assert "No prediction drift was recorded" in html
    assert "No performance estimate was recorded" in html
    assert "No staleness was recorded" in html
    assert "No skew was recorded" in html
    assert "No calibration was given." in html
    assert "No reference table was given" in html
    assert "<img " not in html


def test_sparse_records_render(tmp_path: Path) -> None:
    """Records with None or absent values (an older monitor, a window with no labels yet)
    render with a dash instead of failing."""
    sparse = [
        {
            "window": w,
            "features": [
                {"feature": "amount", "kind": "numeric", "value": v, "drifted": w == 3},
                {"feature": "country", "kind": "categorical", "value": None, "threshold": None},
            ],
            "prediction": None,
            "performance": {"metric": "logloss", "estimated": None, "alert": False},
            "staleness": {"user:spend": {"p50": 1.0}},
            "skew": {"top_entity_share": None, "versions": {"m@1": 1.0}},
            "alerts": ["drift:amount"] if w == 3 else [],
        }
        for w, v in ((1, 0.01), (2, None), (3, 0.4))
    ]
    html = write_report(tmp_path / "r.html", route="r", model="m", history=sparse).read_text()
    assert "drifted: amount" in html and plots(html, "drift") == 1
    assert "estimated logloss —" in html and "No prediction drift was recorded" in html
    assert "<td>m@1</td>" in section(html, "skew")


def test_missing_columns_and_current_table(tmp_path: Path) -> None:
    reference, current = make_tables()
    path = write_report(
        tmp_path / "r.html",
        route="fraud",
        model="fraud",
        history=make_history(),
        reference=reference.drop_columns(["amount"]),
        current=current,
    )
    dist = section(path.read_text("utf-8"), "distributions")
    assert "amount: no column in the reference table." in dist and dist.count("<img ") == 2
    path = write_report(
        tmp_path / "r.html",
        route="fraud",
        model="fraud",
        history=make_history(),
        reference=reference,
    )
    assert "No current window table was given" in path.read_text("utf-8")


def test_empty_history_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no monitored windows yet: run `keel monitor` first"):
        write_report(tmp_path / "r.html", route="fraud", model="fraud", history=[])
    assert not list(tmp_path.iterdir())


def test_missing_extra_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(UnavailableError, match=r"keel-ml\[monitor\]"):
        write_report(tmp_path / "r.html", route="fraud", model="fraud", history=make_history())
