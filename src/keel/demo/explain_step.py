"""Demo step: why the fraud route flagged a payment. The route's explain endpoint splits the
riskiest payments' scores into their features' contributions, as served (exact TreeSHAP);
the registered surrogate shows what a faster explanation costs in fidelity, and Kernel SHAP
what a model-agnostic one costs in model evaluations."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from keel.clock import ManualClock
from keel.demo.http import serving
from keel.demo.result import DemoResult
from keel.project import Project
from keel.shop import PAYMENTS

#: Payments scored to find the riskiest, and the decisions explained.
SCORED = 400
EXPLAINED = 3
TOP = 3


def show_explanations(console: Console, project: Project, result: DemoResult) -> None:
    from keel.serving import InferenceServer
    from keel.serving.client import call

    cfg = next((r for r in project.settings.routes if r.name == "fraud"), None)
    payments = _last_payments(project, SCORED)
    if cfg is None or not payments:
        return
    console.print(
        "[bold]15. Explanations[/]: why the route flagged a payment — each feature's share of "
        "its score, as served (POST /v1/routes/fraud/explain, keel explain fraud)"
    )
    # Features are looked up as of the last payment, as they were when it was scored.
    clock = ManualClock(max(p.pop("ts") for p in payments))
    server = InferenceServer(
        [cfg],
        registry=project.registry,
        features=project.features,
        log_=project.log,
        clock=clock,
        features_at=clock.now,
    )
    server.load_all()
    route = server.routes["fraud"]
    with serving(server) as port:
        url = f"http://127.0.0.1:{port}"
        scores = call(url, "/v1/routes/fraud/predict", {"rows": payments})["predictions"]["score"]
        order = np.argsort(scores)[::-1][:EXPLAINED]
        rows = [payments[i] for i in order]
        exact = call(url, "/v1/routes/fraud/explain", {"rows": rows, "top": TOP})
        _decisions(console, exact, rows)
        result.explain_version = exact["version"]
        result.explain_top = [list(e["contributions"]) for e in exact["explanations"]]
        raw = np.array([e["output"] for e in exact["explanations"]])
        sums = np.array(
            [
                e["base_value"] + sum(e["contributions"].values())
                for e in call(url, "/v1/routes/fraud/explain", {"rows": rows})["explanations"]
            ]
        )
        served = np.array([scores[i] for i in order])
        result.explain_additive = bool(
            np.allclose(sums, raw, atol=1e-9) and np.allclose(_sigmoid(raw), served, atol=1e-9)
        )
        if "surrogate" in server.explanations.methods(route):
            surrogate = call(
                url, "/v1/routes/fraud/explain", {"rows": rows, "method": "surrogate", "top": 1}
            )
            fidelity = surrogate["details"]["fidelity"]
            result.surrogate_model = surrogate["details"]["model"]
            result.surrogate_r2 = fidelity["r2"]
            result.surrogate_rank = fidelity.get("rank_correlation")
            same_top = sum(
                next(iter(s["contributions"])) == e[0]
                for s, e in zip(surrogate["explanations"], result.explain_top, strict=True)
            )
            result.surrogate_same_top = same_top
        kernel = call(
            url, "/v1/routes/fraud/explain", {"rows": rows[:1], "method": "kernel", "top": 1}
        )
        result.kernel_evaluations = kernel["evaluations"]
        timings = _timings(server, route, payments[:200])
    result.explain_ms = timings
    lines = [
        f"   cost per payment: predict {timings['predict']:.3f} ms, exact TreeSHAP "
        f"{timings['tree']:.3f} ms ({timings['tree'] / timings['predict']:.1f}× predict)"
    ]
    if "surrogate" in timings:
        rank = result.surrogate_rank
        lines.append(
            f"   surrogate {result.surrogate_model} (a 60-tree fit on {result.explain_version}'s "
            f"outputs): {timings['surrogate']:.3f} ms, R² {result.surrogate_r2:.3f} on held-out "
            f"payments, attribution rank correlation "
            f"{'—' if rank is None else f'{rank:.2f}'}; same top feature for "
            f"{result.surrogate_same_top} of {len(rows)} decisions"
        )
    lines.append(
        f"   Kernel SHAP (model-agnostic, for torch or ONNX models): {kernel['evaluations']:,} "
        f"model evaluations for one payment, {timings['kernel']:.1f} ms "
        f"({timings['kernel'] / timings['predict']:,.0f}× predict)"
    )
    for line in lines:
        console.print(line)


def _last_payments(project: Project, n: int) -> list[dict[str, Any]]:
    log = project.log
    try:
        ends = log.end_offsets(PAYMENTS.name)
    except Exception:
        return []
    got: list[dict[str, Any]] = []
    for p, end in enumerate(ends):
        got += log.read(PAYMENTS.name, p, max(0, end - n), n).to_pylist()
    got.sort(key=lambda r: r["ts"])
    keep = ("payment_id", "card_id", "user_id", "amount")
    return [{**{k: r[k] for k in keep}, "ts": r["ts"].timestamp()} for r in got[-n:]]


def _decisions(console: Console, answer: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    table = Table(box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1))
    table.title = (
        f"   the {len(rows)} riskiest of the last {SCORED} payments, {answer['version']} "
        "(contributions in log-odds; + pushes toward fraud)"
    )
    for col in ("payment", "amount", "score", "top contributions (feature = value: share)"):
        table.add_column(col, justify="left" if col.startswith("top") else "right")
    for row, e in zip(rows, answer["explanations"], strict=True):
        parts = []
        for feature, value in e["contributions"].items():
            shown = e["values"].get(feature)
            colour = "red" if value > 0 else "green"
            parts.append(
                f"{feature.split('__')[-1]} = {'—' if shown is None else f'{shown:g}'}: "
                f"[{colour}]{value:+.2f}[/]"
            )
        table.add_row(
            str(row["payment_id"]),
            f"{row['amount']:.2f}",
            f"{_sigmoid(e['output']):.3f}",
            "; ".join(parts),
        )
    console.print(table)


def _timings(server: Any, route: Any, payments: list[dict[str, Any]]) -> dict[str, float]:
    """Median milliseconds per payment, one payment at a time, of predict and of each
    explanation, in this process (the features joined once, beforehand)."""
    from keel.serving.routes import rows_to_tensors

    deployed = route.current
    runtime = deployed.runtime
    tensors, _ = rows_to_tensors(route, runtime, payments, server.features, route.config.features)
    x = tensors.arrays[runtime.inputs[0].name]
    name = runtime.inputs[0].name
    out: dict[str, float] = {"predict": _median_ms(lambda r: runtime.predict({name: r}), x)}
    explanations = server.explanations
    tree = explanations.prepare(route, "tree").result(120).explainer
    out["tree"] = _median_ms(tree.explain, x)
    if "surrogate" in explanations.methods(route):
        surrogate = explanations.prepare(route, "surrogate").result(300).explainer
        out["surrogate"] = _median_ms(surrogate.explain, x)
    kernel = explanations.prepare(route, "kernel").result(300).explainer
    out["kernel"] = _median_ms(kernel.explain, x[:5])
    return out


def _median_ms(fn: Any, x: np.ndarray) -> float:
    times = []
    for i in range(len(x)):
        start = time.perf_counter()
        fn(x[i : i + 1])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _sigmoid(v: Any) -> Any:
    return 1 / (1 + np.exp(-np.asarray(v, dtype=np.float64)))
