"""The end-to-end demo behind ``make demo``: everything Keel does so far, on embedded defaults.

Each capability adds a step here, so the demo always shows the whole loop built so far.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from keel.cli.log import stats_table
from keel.clock import FastClock
from keel.config import CONFIG_FILE
from keel.features import FeatureStore
from keel.features.definitions import format_duration
from keel.project import Project, init_project
from keel.shop import EVENTS, LABELS, PAYMENTS, Shop

__all__ = ["DemoResult", "run_demo"]

BATCH = 10_000


@dataclass
class DemoResult:
    project_dir: Path
    appended: dict[str, int] = field(default_factory=dict)
    history_seconds: float = 0.0
    live_seconds: float = 0.0
    read_back: int = 0
    backfill_seconds: float = 0.0
    lookup_ms: float = 0.0
    training_seconds: float = 0.0
    training_rows: int = 0
    consistent: tuple[int, int] = (0, 0)
    model_ref: str = ""
    reproduced: bool = False
    bench_peak: float = 0.0
    swap_errors: int = -1
    swapped_to: str = ""
    promoted_to: str = ""
    traffic_errors: int = -1


def run_demo(
    *,
    days: float = 7.0,
    users: int = 5_000,
    items: int = 2_000,
    live_seconds: float = 3.0,
    live_rate: float = 2_000.0,
    keep: Path | None = None,
    seed: int = 7,
    console: Console | None = None,
    quick: bool = False,
) -> DemoResult:
    """Create an example project and run everything Keel does on it, end to end: the log,
    features online and offline, the registry, and serving. ``quick`` shortens the
    load tests (for the test suite)."""
    console = console or Console()
    with ExitStack() as stack:
        if keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keel-demo-")))
        else:
            root = Path(keep)
        result = _run(root, days, users, items, live_seconds, live_rate, seed, console, quick)
        if keep is None:
            console.print("[dim](the demo project was temporary; pass --keep DIR to keep it)[/]")
        return result


def _run(
    root: Path,
    days: float,
    users: int,
    items: int,
    live_seconds: float,
    live_rate: float,
    seed: int,
    console: Console,
    quick: bool,
) -> DemoResult:
    console.rule("[bold]Keel demo[/]")
    init_project(root, name="shop", force=True)
    project = Project.load(root / CONFIG_FILE)
    console.print(f"[bold]1. Project[/] created in {root}")
    applied = [name for kind, name, _ in project.apply() if kind == "topic"]
    console.print(
        f"   {len(applied)} topics declared in definitions.py, applied to "
        f"[cyan]{project.settings.log_url}[/]"
    )
    log = project.log
    result = DemoResult(project_dir=root)

    now = datetime.now(UTC).replace(microsecond=0)
    shop = Shop(seed=seed, n_users=users, n_items=items, start=now - timedelta(days=days))
    for name, table in shop.catalog().items():
        log.append(name, table)
        result.appended[name] = table.num_rows

    console.print(
        f"[bold]2. History[/]: {days:g} days of a shop with {users:,} users and "
        f"{items:,} items, streamed in time order"
    )
    history = {
        # Labels arrive hours to days after a payment: those not yet known now stay unknown.
        name: table.filter(
            pc.less_equal(table.column("ts"), pa.scalar(now, table.schema.field("ts").type))
        )
        for name, table in shop.history(days=days).items()
    }
    total = sum(t.num_rows for t in history.values())
    start = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("history → log", total=total)
        for chunk in _time_ordered_chunks(history):
            for name, table in chunk.items():
                log.append(name, table)
                result.appended[name] = result.appended.get(name, 0) + table.num_rows
                progress.advance(task, table.num_rows)
    result.history_seconds = time.perf_counter() - start
    console.print(
        f"   {total:,} events in {result.history_seconds:.1f} s "
        f"({total / max(result.history_seconds, 1e-9):,.0f} events/s)"
    )

    features = _features(console, project, result)

    if live_seconds > 0:
        console.print(
            f"[bold]4. Live stream[/]: {live_rate:,.0f} events/s for {live_seconds:g} s, "
            "stamped with the wall clock; the materializer follows every tick"
        )
        start = time.perf_counter()
        live = 0
        with _progress(console) as progress:
            task = progress.add_task("live → log → online", total=int(live_rate * live_seconds))
            for tick in shop.stream(
                rate=live_rate, start=now, realtime=True, tick_s=0.25, duration_s=live_seconds
            ):
                for name, table in tick.items():
                    if table.num_rows:
                        log.append(name, table)
                        result.appended[name] = result.appended.get(name, 0) + table.num_rows
                        if name == EVENTS.name:
                            live += table.num_rows
                            progress.advance(task, table.num_rows)
                features.materialize()
        result.live_seconds = time.perf_counter() - start
        lag = {
            v.name: log.stats(v.source.topic).lag.get(f"keel-features.{v.name}", 0)
            for v in features.views
        }
        console.print(
            f"   {live:,} live shop events in {result.live_seconds:.1f} s; online "
            f"lag now {max(lag.values(), default=0):,} events"
        )

    console.print("[bold]5. Read back[/] with consumer group [cyan]demo-reader[/]")
    consumer = log.consumer("demo-reader", EVENTS.name)
    start = time.perf_counter()
    result.read_back = sum(batch.num_rows for batch in consumer)
    consumer.commit()
    read_s = time.perf_counter() - start
    expected = result.appended.get(EVENTS.name, 0)
    status = "[green]all there[/]" if result.read_back == expected else "[red]MISMATCH[/]"
    console.print(
        f"   {result.read_back:,} of {expected:,} {EVENTS.name} records in "
        f"{read_s:.2f} s — {status}"
    )
    console.print(stats_table(log))
    _lookups(console, features, result)
    train = _training_set(console, features, result)
    _registry(console, project, train, result)
    _serving(console, project, train, result, quick=quick)
    _summary(console, project, result)
    return result


def _features(console: Console, project: Project, result: DemoResult) -> FeatureStore:
    console.print("[bold]3. Features[/]: defined once in definitions.py, served online and offline")
    features = project.features
    for kind, name, _status in project.apply():
        if kind == "feature view":
            view = features.view(name)
            console.print(
                f"   {name:14s} {len(view.features)} features over "
                f"{view.source.topic}, tile {format_duration(view.tile)}, "
                f"fingerprint {view.fingerprint[:12]}"
            )
    start = time.perf_counter()
    with console.status(
        "   landing history as Parquet, embedding item texts with all-MiniLM-L6-v2, materializing…"
    ):
        landed = features.land()
        stats = features.backfill()
    result.backfill_seconds = time.perf_counter() - start
    console.print(f"   landed {sum(landed.values()):,} records in {features.offline.root}")
    for name, st in stats.items():
        rate = st.events / st.seconds if st.seconds else 0
        console.print(
            f"   {name:14s} {st.events:,} events ({st.late:,} late) → "
            f"{features.online.url} at {rate:,.0f} events/s"
        )
    return features


def _lookups(console: Console, features: FeatureStore, result: DemoResult) -> None:
    console.print("[bold]6. Online lookups[/] rolled forward to now, with staleness")
    log = features.log
    recent = log.read(EVENTS.name, 0, max(log.end_offsets(EVENTS.name)[0] - 2_000, 0), 2_000)
    users = [u for u, _ in Counter(recent.column("user_id").to_pylist()).most_common(3)]
    start = time.perf_counter()
    got = features.get_online(["user_activity", "user_taste"], users)
    result.lookup_ms = (time.perf_counter() - start) * 1000
    table = Table(title=f"users: user_activity, user_taste ({result.lookup_ms:.1f} ms lookup)")
    table.add_column("feature")
    for u in users:
        table.add_column(f"user {u}", overflow="fold")
    lookup = features.view("user_taste").source.transform
    for name in got.values:
        cells = []
        for i in range(len(users)):
            value = got.values[name][i]
            if name.endswith("taste_7d"):
                value = _nearest_item(lookup, value, features)
            elif isinstance(value, float | np.floating):
                value = "—" if np.isnan(value) else f"{value:,.2f}"
            stale = got.staleness_s[name][i]
            age = "" if np.isnan(stale) else f" [dim]({_age(stale)})[/]"
            cells.append("missing" if got.missing[name][i] else f"{value}{age}")
        table.add_row(name.split("__", 1)[1], *cells)
    console.print(table)
    pays = log.read(PAYMENTS.name, 0, max(log.end_offsets(PAYMENTS.name)[0] - 300, 0), 300)
    cards = list(dict.fromkeys(pays.column("card_id").to_pylist()[::-1]))[:3]
    got = features.get_online(["card_payments"], cards)
    table = Table(title="cards: card_payments")
    table.add_column("feature")
    for c in cards:
        table.add_column(f"card {c}")
    for name in got.values:
        row = []
        for i in range(len(cards)):
            v = got.values[name][i]
            v = (
                "—"
                if isinstance(v, float) and np.isnan(v)
                else (f"{v:,.2f}" if isinstance(v, float) else v)
            )
            stale = got.staleness_s[name][i]
            row.append(f"{v}" + ("" if np.isnan(stale) else f" [dim]({_age(stale)})[/]"))
        table.add_row(name.split("__", 1)[1], *row)
    console.print(table)


def _nearest_item(lookup: Any, vector: np.ndarray, features: FeatureStore) -> str:
    if vector is None or np.isnan(vector).all() or not len(getattr(lookup, "_vectors", [])):
        return "—"
    sims = lookup._vectors @ (vector / max(np.linalg.norm(vector), 1e-9))
    best = int(np.argmax(sims))
    item = int(lookup._keys[best])
    items = features.log.read("shop.items", 0, 0, 10**6)
    title = items.filter(pc.equal(items["item_id"], item))["title"][0].as_py()
    return f"≈ {title!r} (cos {sims[best]:.2f})"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s old"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m old"
    return f"{seconds / 3600:.1f}h old"


def _training_set(console: Console, features: FeatureStore, result: DemoResult) -> pa.Table:
    console.print(
        "[bold]7. Training set[/], point in time: every labelled payment with its "
        "card's and user's features as they were at the payment"
    )
    log = features.log
    labels = _read_all(log, LABELS.name).select(["payment_id", "is_fraud"])
    pays = _read_all(log, PAYMENTS.name).select(
        ["payment_id", "ts", "card_id", "user_id", "amount"]
    )
    rows = pays.join(labels, "payment_id", join_type="inner").sort_by("ts")
    start = time.perf_counter()
    train = features.training_set(rows, ["card_payments", "user_activity"])
    result.training_seconds = time.perf_counter() - start
    result.training_rows = train.num_rows
    fraud = pc.sum(train["is_fraud"].cast(pa.int64())).as_py() if train.num_rows else 0
    console.print(
        f"   {train.num_rows:,} rows × {train.num_columns} columns ({fraud:,} fraud) "
        f"in {result.training_seconds:.2f} s, computed by DuckDB"
    )
    show = [
        "ts",
        "amount",
        "is_fraud",
        "card_payments__payments_1h",
        "card_payments__max_amount_1d",
        "card_payments__new_devices_1d",
        "user_activity__events_1d",
    ]
    sample = train.filter(train["is_fraud"]).slice(0, 3) if fraud else train.slice(0, 3)
    table = Table(title="a few training rows")
    for col in show:
        table.add_column(col.split("__")[-1])
    for r in sample.select(show).to_pylist():
        table.add_row(
            *[
                f"{v:%m-%d %H:%M}"
                if hasattr(v, "strftime")
                else f"{v:,.2f}"
                if isinstance(v, float)
                else str(v)
                for v in r.values()
            ]
        )
    console.print(table)
    # Same definitions, same numbers: online now equals offline "as of now".
    cards = rows["card_id"].to_pylist()[-50:]
    at = datetime.now(UTC)
    online = features.get_online(["card_payments"], cards, at=at)
    offline = features.training_set(
        pa.table(
            {"card_id": cards, "ts": pa.array([at] * len(cards), pa.timestamp("us", tz="UTC"))}
        ),
        ["card_payments"],
        land=True,
    )
    same = sum(
        all(_same(online.values[name][i], offline[name][i].as_py()) for name in online.values)
        for i in range(len(cards))
    )
    result.consistent = (same, len(cards))
    colour = "green" if same == len(cards) else "red"
    console.print(
        f"   online == offline for [{colour}]{same}/{len(cards)}[/] cards at the same instant"
    )
    return train


def _registry(console: Console, project: Project, train: pa.Table, result: DemoResult) -> None:
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
        "n_estimators": 200,
        "learning_rate": 0.05,
        "num_leaves": 15,
        "min_child_samples": 10,
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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | np.floating) and np.isnan(a):
        return b is None
    if isinstance(a, float | np.floating):
        return b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return a == b


def _read_all(log: Any, topic: str) -> pa.Table:
    t = log.topic(topic)
    return pa.concat_tables([log.read(topic, p, 0, 10**9) for p in range(t.partitions)])


def _time_ordered_chunks(history: dict[str, pa.Table]) -> list[dict[str, pa.Table]]:
    """Cut every topic's table at the same event-time boundaries, about BATCH events apart,
    so the topics are appended interleaved, as a live shop would produce them."""
    events = history[EVENTS.name]
    ts = events.column(EVENTS.event_time).cast(pa.int64()).to_numpy()
    cuts = ts[BATCH::BATCH] if len(ts) else np.zeros(0, np.int64)
    bounds = np.concatenate([[np.iinfo(np.int64).min], cuts, [np.iinfo(np.int64).max]])
    chunks: list[dict[str, pa.Table]] = [{} for _ in range(len(bounds) - 1)]
    for name, table in history.items():
        if table.num_rows == 0:
            continue
        t = pc.cast(table.column("ts"), pa.int64()).to_numpy()
        idx = np.searchsorted(t, bounds)
        for i in range(len(bounds) - 1):
            if idx[i + 1] > idx[i]:
                chunks[i][name] = table.slice(idx[i], idx[i + 1] - idx[i])
    return [c for c in chunks if c]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("   [progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _serving(
    console: Console, project: Project, train: pa.Table, result: DemoResult, *, quick: bool
) -> None:
    """Bench the MiniLM route against one-request-per-pass serving, then serve the fraud
    route with joined features and hot-swap a retrained version under load."""
    import threading

    import uvicorn

    from keel.cli.serve import bench_table, build_server, run_bench
    from keel.cli.serve import requests_for as request_bodies
    from keel.serving import create_app
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = uvicorn.Server(
        uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    while not http.started:
        time.sleep(0.02)
    try:
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
            description="retrained, 300 trees",
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
    finally:
        http.should_exit = True
        thread.join(15)


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
    model = _fit_fraud(
        train,
        server.routes["fraud"].current.runtime.feature_names,
        subsample=0.9,
        subsample_freq=1,
        random_state=21,
    )
    candidate = registry.register(
        "fraud",
        model,
        training_set=train,
        parent=int(server.routes["fraud"].current.version.split("@")[1]),
        params=model.get_params(),
        description="re-sampled retrain",
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
        "n_estimators": 300,
        "learning_rate": 0.05,
        "num_leaves": 15,
        "min_child_samples": 10,
        "verbose": -1,
    }
    return lightgbm.LGBMClassifier(**{**base, **params}).fit(x, y, feature_name=columns)


def _summary(console: Console, project: Project, result: DemoResult) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("project", str(result.project_dir))
    table.add_row("log", project.settings.log_url)
    for name, n in sorted(result.appended.items()):
        table.add_row(name, f"{n:,} records")
    cfg = result.project_dir / CONFIG_FILE
    table.add_row("try", f"keel -c {cfg} log tail shop.events")
    table.add_row("", f"keel -c {cfg} features get card_payments -k <card>")
    if result.model_ref:
        table.add_row(
            "model",
            f"{result.model_ref} reproducible: {'yes' if result.reproduced else 'no'}; "
            f"champion now {result.promoted_to or result.swapped_to or result.model_ref}",
        )
        table.add_row("serve", f"keel -c {cfg} serve   (routes embed, fraud; /metrics)")
        table.add_row("", f"keel -c {cfg} bench fraud")
        table.add_row("", f"keel -c {cfg} registry lineage fraud@champion")
        table.add_row("", f"keel -c {cfg} registry reproduce fraud@champion")
    console.print(Panel(table, title="Keel so far", expand=False))
