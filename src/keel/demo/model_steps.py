"""Demo steps over models: registry, serving, traffic."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from keel.clock import FastClock
from keel.demo.http import serving
from keel.demo.result import DemoResult
from keel.project import Project


def show_registry(console: Console, project: Project, train: pa.Table, result: DemoResult) -> None:
    """Train a real fraud model on the point-in-time set, register it, show its lineage,
    and rebuild its training set to check the hash."""
    import lightgbm
    from sklearn.metrics import roc_auc_score

    console.print(
        "[bold]8. Registry[/]: a LightGBM fraud model trained on that set, "
        "registered with its lineage"
    )
    columns = [
        c
        for c in train.column_names
        if ("__" in c and pa.types.is_integer(train.schema.field(c).type))
        or ("__" in c and pa.types.is_floating(train.schema.field(c).type))
    ]
    columns.append("amount")
    x = np.column_stack(
        [train[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in columns]
    )
    y = train["is_fraud"].to_numpy(zero_copy_only=False).astype(int)
    cut = int(len(y) * 0.7)  # the set is sorted by time: train on the past, test on the rest
    params = {
        # Regularized, so its scores say how sure it is (what estimating its loss relies on).
        "n_estimators": 150,
        "learning_rate": 0.05,
        "num_leaves": 7,
        "min_child_samples": 40,
        "reg_lambda": 10.0,
        "verbose": -1,
        "random_state": 7,
    }
    model = lightgbm.LGBMClassifier(**params).fit(x[:cut], y[:cut], feature_name=columns)
    auc = (
        float(roc_auc_score(y[cut:], model.booster_.predict(x[cut:])))
        if 0 < y[cut:].sum() < len(y[cut:])
        else float("nan")
    )
    registry = project.registry
    version = registry.register(
        "fraud",
        model,
        training_set=train,
        params=params,
        metrics={"test_auc": auc, "train_rows": cut, "test_rows": len(y) - cut},
        description="card fraud on card and user features",
        code_dir=str(project.settings.project_dir),
    )
    registry.set_alias("fraud", "champion", version.version, reason="first model")
    result.model_ref = version.ref
    lin = registry.lineage("fraud", version.version)
    ts = lin["training_set"]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "model",
        f"{version.ref} ({version.format}, {version.artifact_size:,} bytes, "
        f"sha256 {version.artifact[:12]}…) ← champion",
    )
    table.add_row("metrics", f"test AUC {auc:.3f} on {len(y) - cut:,} later payments")
    for view, info in ts["views"].items():
        table.add_row(
            "features",
            f"{view} fingerprint {info['fingerprint'][:12]} ({len(info['features'])} features)",
        )
    table.add_row(
        "data",
        f"{ts['rows']:,} rows, sha256 {ts['sha256'][:12]}…, "
        f"{ts['time_range'][0][:16]} → {ts['time_range'][1][:16]}",
    )
    offsets = "; ".join(
        f"{t}: " + ", ".join(f"p{p}<{o:,}" for p, o in sorted(offs.items()))
        for t, offs in ts["offsets"].items()
    )
    table.add_row("log offsets", offsets)
    code = lin["code"]
    table.add_row(
        "code",
        f"commit {code['git_commit'][:12]}{' (dirty)' if code['dirty'] else ''}"
        if code.get("git_commit")
        else f"source sha256 {code['source_sha256'][:12]}… ({code['files']} files, not in git)",
    )
    pkgs = lin["environment"]["packages"]
    table.add_row(
        "environment",
        f"python {lin['environment']['python']}, "
        + ", ".join(f"{k} {pkgs[k]}" for k in ("lightgbm", "duckdb", "pyarrow") if k in pkgs),
    )
    console.print(table)
    start = time.perf_counter()
    report = registry.reproduce("fraud", version.version, project.features)
    result.reproduced = report.matches
    verdict = "[green]matches[/]" if report.matches else "[red]DOES NOT MATCH[/]"
    console.print(
        f"   reproduce: rebuilt {report.rows:,} rows from the offline store in "
        f"{time.perf_counter() - start:.2f} s — sha256 {verdict} the recorded one"
    )


def show_serving(
    console: Console, project: Project, train: pa.Table, result: DemoResult, *, quick: bool
) -> None:
    """Bench the MiniLM route against one-request-per-pass serving, then serve the fraud
    route with joined features and hot-swap a retrained version under load."""
    import threading

    from keel.cli.serve import bench_table, build_server, run_bench
    from keel.cli.serve import requests_for as request_bodies
    from keel.serving.loadgen import run_load

    console.print(
        "[bold]9. Serving[/]: routes from keel.toml, micro-batched, over the Open "
        "Inference Protocol"
    )
    levels, seconds = ([1, 8], 1.0) if quick else ([1, 8, 16, 32], 2.5)
    with console.status("   keel bench embed: all-MiniLM-L6-v2, batched and unbatched…"):
        bench = run_bench(project, "embed", levels, seconds)
    console.print(bench_table("embed", bench))
    result.bench_peak = max(r.rps for r in bench["batched"].values())

    # The clock runs 14,400 times faster: the shadow's 24-hour window passes in 6 seconds.
    server = build_server(project, ["fraud"], clock=FastClock(14_400))
    with serving(server) as port:
        cfg = next(r for r in project.settings.routes if r.name == "fraud")
        path, bodies = request_bodies(project, cfg, port)
        load_s = 3.0 if quick else 6.0
        outcome: dict[str, Any] = {}
        loader = threading.Thread(
            target=lambda: outcome.update(
                load=run_load("127.0.0.1", port, path, bodies, concurrency=8, seconds=load_s)
            )
        )
        loader.start()
        time.sleep(load_s / 3)
        # Retrain with more trees on the same point-in-time set, register, promote.
        model = _fit_fraud(
            train, server.routes["fraud"].current.runtime.feature_names, random_state=8
        )
        registry = project.registry
        v2 = registry.register(
            "fraud",
            model,
            training_set=train,
            parent=1,
            params=model.get_params(),
            description="retrained, 200 trees",
        )
        registry.set_alias("fraud", "champion", v2.version, reason="retrained")
        deadline = time.monotonic() + 30
        while server.routes["fraud"].current.version != v2.ref and time.monotonic() < deadline:
            time.sleep(0.05)
        loader.join()
        load = outcome["load"]
        result.swap_errors = load.errors
        result.swapped_to = server.routes["fraud"].current.version
        colour = "green" if load.errors == 0 and result.swapped_to == v2.ref else "red"
        console.print(
            f"   fraud route (card + user features joined per micro-batch): {load.requests:,} "
            f"requests in {load.seconds:.1f} s at {load.rps:,.0f} req/s, p99 "
            f"{load.pct(99):.1f} ms; hot swap fraud@1 → {result.swapped_to} under load with "
            f"[{colour}]{load.errors} failed requests[/]"
        )
        _traffic(console, project, server, port, path, bodies, train, result, quick=quick)


def _traffic(
    console: Console,
    project: Project,
    server: Any,
    port: int,
    path: str,
    bodies: list[bytes],
    train: pa.Table,
    result: DemoResult,
    *,
    quick: bool,
) -> None:
    """Shadow a retrained candidate on live traffic, watch the comparison converge, and let
    the controller promote it (which hot-swaps the route)."""
    import threading

    from keel.config import ShadowConfig
    from keel.controller import Controller
    from keel.serving.loadgen import run_load

    console.print(
        "[bold]10. Traffic[/]: a retrained candidate shadows the champion on live "
        "requests; the controller promotes it when the comparison converges"
    )
    registry = project.registry
    # The champion's recipe with a few more boosting rounds, as a routine retrain is: close
    # to the champion (identical when the extra rounds find nothing to split). A re-sampled
    # retrain on so few frauds can land far away, and then the controller rightly rejects it.
    model = _fit_fraud(
        train,
        server.routes["fraud"].current.runtime.feature_names,
        n_estimators=205,
        random_state=8,
    )
    candidate = registry.register(
        "fraud",
        model,
        training_set=train,
        parent=int(server.routes["fraud"].current.version.split("@")[1]),
        params=model.get_params(),
        description="retrain with 205 rounds",
    )
    registry.set_alias("fraud", "challenger", candidate.version, reason="candidate")
    server.set_traffic(
        "fraud",
        shadow=ShadowConfig(
            model="fraud@challenger",
            sample=1.0,
            compare="abs",
            tolerance=0.02,
            window_s=86_400,
            min_samples=200,
        ),
    )
    stop = threading.Event()
    controller = threading.Thread(
        target=Controller(server, registry, interval_s=0.25).run, args=(stop,), daemon=True
    )
    controller.start()
    outcome: dict[str, Any] = {}
    load_s = 8.0
    loader = threading.Thread(
        target=lambda: outcome.update(
            load=run_load("127.0.0.1", port, path, bodies, concurrency=4, seconds=load_s)
        )
    )
    loader.start()
    table = Table(title=f"shadow {candidate.ref} vs the champion (|score difference|)")
    for col in ("clock (of 24 h)", "comparisons", "mean", "95% CI", "latency", "status"):
        table.add_column(col, justify="right")
    started = time.monotonic()
    while time.monotonic() - started < load_s + 1:
        time.sleep(1.5)
        st = server.traffic("fraud")["shadow"]
        if st is None:
            break
        ci = st["ci95"]
        table.add_row(
            f"{st['elapsed_s'] / 3600:4.1f} h",
            f"{st['samples']:,}",
            "—" if st["discrepancy"] is None else f"{st['discrepancy']:.2e}",
            "—" if not ci else f"{ci[0]:.2e}–{ci[1]:.2e}",
            "—" if st["latency_ratio"] is None else f"{st['latency_ratio']:.2f}x",
            st["status"],
        )
        if st["status"] != "comparing":
            break
    loader.join()
    stop.set()
    controller.join(5)
    console.print(table)
    decisions = server.traffic("fraud")["decisions"]
    load = outcome["load"]
    result.promoted_to = server.routes["fraud"].current.version
    result.traffic_errors = load.errors
    if decisions:
        console.print(
            f"   decision: [bold]{decisions[-1]['action']}[/] — {decisions[-1]['reason']}"
        )
    colour = "green" if result.promoted_to == candidate.ref and load.errors == 0 else "red"
    console.print(
        f"   fraud route now serves [{colour}]{result.promoted_to}[/]; {load.requests:,} "
        f"requests during the comparison, [{colour}]{load.errors} failed[/]"
    )


def _fit_fraud(train: pa.Table, columns: list[str], **params: Any) -> Any:
    """A LightGBM fraud model retrained on the whole point-in-time set."""
    import lightgbm

    x = np.column_stack(
        [train[c].to_numpy(zero_copy_only=False).astype(np.float64) for c in columns]
    )
    y = train["is_fraud"].to_numpy(zero_copy_only=False).astype(int)
    base = {
        "n_estimators": 200,
        "learning_rate": 0.05,
        "num_leaves": 7,
        "min_child_samples": 40,
        "reg_lambda": 10.0,
        "verbose": -1,
    }
    return lightgbm.LGBMClassifier(**{**base, **params}).fit(x, y, feature_name=columns)
