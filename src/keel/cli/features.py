"""``keel features``: list, inspect, materialize, backfill, look up and serve features."""

from __future__ import annotations

import json
import time
from datetime import datetime

import typer
from rich.table import Table

from keel.cli._common import console, friendly, project, short_time
from keel.features.definitions import format_duration

app = typer.Typer(help="Feature views: definitions, online state, lookups, HTTP serving.")


@app.command("list")
@friendly
def list_views(ctx: typer.Context) -> None:
    """Every declared feature view with its entity, source, features and online progress."""
    proj = project(ctx)
    store = proj.features
    applied = proj.applied_views()
    table = Table(title="feature views")
    for col in (
        "view",
        "entity",
        "source",
        "features",
        "tile",
        "ttl",
        "fingerprint",
        "events",
        "late",
        "updated",
    ):
        table.add_column(col, justify="right" if col in ("events", "late") else "left")
    for v in store.views:
        prog = store.online.progress(v.name)
        fp = v.fingerprint[:12]
        if v.name not in applied:
            fp += " (not applied)"
        elif applied[v.name]["fingerprint"] != v.fingerprint:
            fp += " (changed since apply)"
        updated = datetime.fromtimestamp(prog.updated_at) if prog.updated_at else None
        table.add_row(
            v.name,
            v.entity.join_key,
            v.source.topic,
            str(len(v.features)),
            format_duration(v.tile),
            format_duration(v.ttl) if v.ttl else "—",
            fp,
            f"{prog.events:,}",
            f"{prog.late:,}",
            short_time(updated),
        )
    console.print(table)


@app.command("show")
@friendly
def show(ctx: typer.Context, view: str = typer.Argument(..., help="feature view name")) -> None:
    """A view's features, windows and fingerprint."""
    v = project(ctx).features.view(view)
    console.print(
        f"[bold]{v.name}[/]  entity {v.entity.name} ({v.entity.join_key})  "
        f"source {v.source.topic}  tile {format_duration(v.tile)}  "
        f"ttl {format_duration(v.ttl) if v.ttl else '—'}"
    )
    console.print(f"fingerprint {v.fingerprint}")
    if v.source.transform is not None:
        console.print(
            f"transform {v.source.transform.__name__} adds "
            f"{', '.join(f'{k} {t}' for k, t in v.source.fields.items())}"
        )
    table = Table()
    for col in ("feature", "function", "column", "window", "default"):
        table.add_column(col)
    for f in v.features:
        table.add_row(
            f.name,
            f.fn,
            f.column or "*",
            format_duration(f.window) if f.window else "all time",
            repr(f.default),
        )
    console.print(table)


@app.command("materialize")
@friendly
def materialize(
    ctx: typer.Context,
    view: list[str] = typer.Option(None, "--view", help="only these views"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep following the log"),
    seconds: float = typer.Option(0.0, help="with --follow: stop after this long (0 = never)"),
) -> None:
    """Fold new log events into the online store."""
    store = project(ctx).features
    stop = time.monotonic() + seconds if seconds else None
    while True:
        for name, stats in store.materialize(view or None).items():
            if stats.events or not follow:
                rate = stats.events / stats.seconds if stats.seconds else 0.0
                console.print(
                    f"{name}: {stats.events:,} events ({stats.late:,} late) into "
                    f"{store.online.url} at {rate:,.0f} events/s"
                )
        if not follow or (stop is not None and time.monotonic() >= stop):
            return
        time.sleep(0.5)


@app.command("backfill")
@friendly
def backfill(
    ctx: typer.Context,
    view: list[str] = typer.Option(None, "--view", help="only these views"),
) -> None:
    """Land the log's history as Parquet and rebuild the online state from it."""
    store = project(ctx).features
    for topic, n in store.land().items():
        console.print(f"landed {n:,} new records of {topic} in {store.offline.root}")
    for name, stats in store.backfill(view or None).items():
        console.print(
            f"{name}: rebuilt from {stats.events:,} events ({stats.late:,} late) "
            f"in {stats.seconds:.1f} s"
        )


@app.command("training-set")
@friendly
def training_set(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="a model declared in the definitions"),
    until: str | None = typer.Option(None, help="as of this time (ISO; default now)"),
    out: str | None = typer.Option(None, help="Parquet file to write (default under .keel)"),
) -> None:
    """Build a declared model's point-in-time training set and write it as Parquet."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from keel.errors import ValidationError
    from keel.training import Model
    from keel.training.dataset import build_training_data

    proj = project(ctx)
    declared = proj.model(model)
    if not isinstance(declared, Model):
        raise ValidationError(
            f"{model!r} is a recommender: its training data is its interactions, read by "
            "keel train and keel fine-tune"
        )
    as_of = datetime.fromisoformat(until) if until else None
    started = time.perf_counter()
    data = build_training_data(declared, proj.log, proj.features, until=as_of)
    path = (
        Path(out)
        if out
        else (
            Path(proj.settings.data_dir) / "training-sets" / f"{model}-{data.sha256[:16]}.parquet"
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(data.table, tmp)
    tmp.replace(path)  # whole or not at all
    console.print(
        f"{model}: {data.table.num_rows:,} rows × {len(data.names)} features, sha256 "
        f"{data.sha256[:12]}…, in {time.perf_counter() - started:.2f} s → {path}"
    )


@app.command("get")
@friendly
def get(
    ctx: typer.Context,
    features: list[str] = typer.Argument(..., help="view:feature or view"),
    key: list[str] = typer.Option(..., "--key", "-k", help="entity key (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    materialize_first: bool = typer.Option(True, help="catch up with the log before reading"),
) -> None:
    """Online values for some keys, with staleness."""
    store = project(ctx).features
    if materialize_first:
        store.materialize([r.partition(":")[0] for r in features])
    keys = [int(k) if k.lstrip("-").isdigit() else k for k in key]
    result = store.get_online(features, keys)
    rows = result.to_pylist(with_meta=True)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table()
    table.add_column("feature")
    for k in keys:
        table.add_column(str(k), overflow="fold")
    for name in result.values:
        cells = []
        for row in rows:
            value = row[name]
            if isinstance(value, list):
                value = f"[{len(value)} values]"
            elif isinstance(value, float):
                value = f"{value:.4g}"
            stale = row[f"{name}.staleness_s"]
            cells.append(
                "missing" if row[f"{name}.missing"] else f"{value}  [dim]({stale:.0f}s old)[/]"
            )
        table.add_row(name, *cells)
    console.print(table)


@app.command("serve")
@friendly
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    port: int = typer.Option(8765, help="port"),
) -> None:
    """Serve POST /v1/features over HTTP, materializing in the background."""
    import uvicorn

    from keel.features.http import create_app

    proj = project(ctx)
    settings = proj.settings
    uvicorn.run(
        create_app(proj.features, auth=settings.auth.with_env(), limits=settings.serve),
        host=host,
        port=port,
        log_level="warning",
        timeout_keep_alive=int(settings.serve.keep_alive_s),
    )
