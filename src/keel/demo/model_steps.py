"""Demo steps over models: registry, serving, traffic."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from keel.clock import FastClock
from keel.demo.http import serving
from keel.demo.result import DemoResult
from keel.features.definitions import format_duration
from keel.project import Project
from keel.training import Model, TrainResult


def show_training(console: Console, project: Project, result: DemoResult) -> TrainResult:
    """`keel train fraud`: the declared model's point-in-time set, fitted on the past,
    evaluated on the later holdout, registered with its lineage."""
    from keel.cli.train import progress_bars
    from keel.demo.data_steps import show_consistency, training_rows_table

    model = project.model("fraud")
    assert isinstance(model, Model)
    console.print(
        "[bold]7. Training[/]: [cyan]keel train fraud[/] — the model declared in "
        "definitions.py, on a point-in-time set, evaluated on later payments"
    )
    settle, split = model.label.settle, model.split
    console.print(
        f"   each payment joined with its label on {model.label.topic} by "
        f"{model.label.id}; payments younger than {format_duration(settle)} left out (their "
        f"label may not be in), and the first {format_duration(split.warmup)} (windows not "
        f"yet full); holdout: the last {format_duration(split.holdout)}"
    )
    with progress_bars(console) as report:
        trained = project.train(model, alias="champion", progress=report)
    data = trained.data
    result.training_seconds = trained.seconds["training set"]
    result.training_rows = data.table.num_rows
    result.holdout_auc = trained.metrics["auc"]
    fraud = int(data.y.sum())
    console.print(
        f"   {data.table.num_rows:,} rows × {len(data.names)} features ({fraud:,} fraud) in "
        f"{trained.seconds['training set']:.2f} s, computed by DuckDB"
    )
    console.print(training_rows_table(data.table))
    show_consistency(console, project.features, data.table, result)
    console.print(
        f"   fit {int(data.train.sum()):,} payments in {trained.seconds['fit']:.2f} s; "
        f"holdout ({int(data.holdout.sum()):,} later payments): "
        + ", ".join(f"{k} [bold]{v:.3f}[/]" for k, v in trained.metrics.items())
    )
    return trained


def show_registry(
    console: Console, project: Project, trained: TrainResult, result: DemoResult
) -> None:
    """The version's lineage, and both reproductions: its data and the model itself."""
    from keel.training import reproduce_model

    console.print("[bold]8. Registry[/]: the version with its lineage, and reproduced from it")
    version = trained.version
    registry = project.registry
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
    training = lin["training"]
    table.add_row(
        "trainer",
        f"{training['trainer']['kind']}, seed {training['seed']}, code fingerprint "
        f"{training['code_fingerprint'][:12]}; {len(version.params)} hyperparameters read back "
        f"from the model (num_trees {version.params.get('num_trees')}, num_leaves "
        f"{version.params.get('num_leaves')}, min_data_in_leaf "
        f"{version.params.get('min_data_in_leaf')})",
    )
    hold = training["split"]["holdout_range"]
    table.add_row(
        "metrics",
        f"holdout AUC {trained.metrics['auc']:.3f} on {version.metrics['holdout_rows']:,} "
        f"payments {hold[0][:16]} → {hold[1][:16]}",
    )
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
    with console.status(f"   keel registry reproduce {version.ref} --model: retraining…"):
        rep = reproduce_model(registry, project.features, "fraud", version.version)
    result.reproduced = rep.data_matches
    result.model_identical = rep.identical
    data = "[green]matches[/]" if rep.data_matches else "[red]DOES NOT MATCH[/]"
    same = "[green]byte-identical[/]" if rep.identical else "[red]DIFFERENT[/]"
    console.print(
        f"   reproduce: rebuilt {rep.rows:,} rows from the offline store — sha256 {data} the "
        f"recorded one; retrained the model from its lineage — artifact {same} "
        f"({time.perf_counter() - start:.2f} s)"
    )


def show_serving(console: Console, project: Project, result: DemoResult, *, quick: bool) -> None:
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
    # A routine retrain with more rounds, trained and registered before the load starts;
    # moving the alias under load is the hot swap.
    v2 = _retrain(project, 200).version
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
        registry = project.registry
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
        _traffic(console, project, server, port, path, bodies, result, quick=quick)


def _traffic(
    console: Console,
    project: Project,
    server: Any,
    port: int,
    path: str,
    bodies: list[bytes],
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
    # keel train fraud --shadow: the champion's recipe with a few more boosting rounds, as a
    # routine retrain is — close to the champion (the first 200 trees are the same ones). It
    # lands on fraud@challenger, which the route's shadow follows.
    candidate = _retrain(project, 205, shadow=True).version
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


def _retrain(project: Project, rounds: int, *, shadow: bool = False) -> TrainResult:
    """The declared fraud model with ``rounds`` boosting rounds, trained by Keel as of the
    champion's training time (the same rows: retrains differ by their rounds alone)."""
    from datetime import datetime

    from keel.training import LightGBM

    model = project.model("fraud")
    assert isinstance(model, Model)
    until = datetime.fromisoformat(
        project.registry.lineage("fraud", "champion")["training"]["until"]
    )
    params = {**model.trainer.record()["params"], "num_iterations": rounds}
    trainer = LightGBM(params=params, seed=model.trainer.seed)
    variant = dataclasses.replace(
        model, trainer=trainer, description=f"retrain with {rounds} rounds"
    )
    return project.train(variant, until=until, shadow=shadow)
