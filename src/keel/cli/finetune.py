"""``keel fine-tune``: refresh a recommender's embedding tables from the log, once or on a
schedule (judging each child on the purchases that follow it, then promoting or rejecting)."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from rich.table import Table

from keel.cli._common import console, friendly, project
from keel.cli.train import _when, progress_bars
from keel.errors import ValidationError
from keel.recommend import FineTuneResult, InconsistentVersion, NothingNew, RecommenderResult
from keel.training import Preempted

__all__ = ["recommender_summary", "register"]


def recommender_summary(result: RecommenderResult) -> Table:
    """What a recommender's training or fine-tune produced, for the terminal."""
    v, data = result.version, result.data
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "version",
        f"{v.ref} ({v.artifact_size:,} bytes, sha256 {v.artifact[:12]}…), parent "
        f"{v.parent_version or '—'}",
    )
    span = data.time_range()
    offsets = ", ".join(
        f"p{p} {data.start[p]:,}→{data.end.get(p, 0):,}" for p in sorted(data.start)
    )
    table.add_row(
        "interactions",
        f"{len(data):,} from {data.topic} ({offsets})"
        + (f", {span[0][:16]} → {span[1][:16]}" if span else ""),
    )
    if isinstance(result, FineTuneResult):
        table.add_row(
            "rows",
            f"touched {result.touched['users']:,} user and {result.touched['items']:,} item "
            f"rows; new {result.admitted['users']:,} users, {result.admitted['items']:,} items; "
            f"expired {result.expired['users']:,} users, {result.expired['items']:,} items",
        )
        table.add_row("frozen", "every dense parameter byte-identical to the parent's (checked)")
        if result.precision is not None:
            p = result.precision
            table.add_row(
                "precision",
                f"{p['precision']}: scores within {p['max_score_diff']:.3f} of float32's "
                f"spread, top-10 overlap {p['top_k_overlap']:.2f}",
            )
    if result.metrics:
        # A fine-tune is measured on its own window (in-sample); it is judged on the purchases
        # that follow it by the fine-tune loop.
        label = "in window" if isinstance(result, FineTuneResult) else "holdout"
        table.add_row(label, ", ".join(f"{k} {val:.4f}" for k, val in result.metrics.items()))
    table.add_row(
        "time",
        ", ".join(f"{k} {s:.2f} s" for k, s in result.seconds.items())
        + (f"; resumed from step {result.resumed_from}" if result.resumed_from else ""),
    )
    if result.shadow_alias:
        table.add_row("alias", f"{v.model}@{result.shadow_alias} → {v.version}")
    return table


def _every(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        return timedelta(seconds=float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError, IndexError):
        raise ValidationError(
            f"--every {text!r} is not a duration; give one such as 30m, 90s or 1h"
        ) from None


@friendly
def fine_tune(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="a recommender declared in the definitions"),
    parent: str | None = typer.Option(
        None, help="the version to refresh (default: the one the route serves)"
    ),
    until: str | None = typer.Option(None, help="read the log up to this time (ISO)"),
    every: str | None = typer.Option(
        None, help="run on a schedule (e.g. 30m): judge the last child, then fine-tune"
    ),
    cycles: int | None = typer.Option(None, help="with --every: stop after this many cycles"),
) -> None:
    """Refresh only the embedding rows that new interactions touch; register the child."""
    proj = project(ctx)
    if every is None:
        as_of = _when(until)
        opts: dict[str, Any] = {"until": as_of}
        if parent is not None:
            opts["parent"] = int(parent) if parent.isdigit() else parent
        console.print(f"[bold]keel fine-tune {model}[/] — only the embedding tables learn")
        try:
            with progress_bars(console) as report:
                result = proj.fine_tune(model, progress=report, **opts)
        except Preempted as preempted:
            again = f"keel fine-tune {model}" + (f" --until {as_of.isoformat()}" if as_of else "")
            console.print(
                f"[yellow]preempted[/] at step {preempted.step}: checkpoint saved; resume with\n"
                f"   {again}"
            )
            raise typer.Exit(143) from None
        except InconsistentVersion as exc:
            console.print(f"[red]refused[/]: {exc}")
            raise typer.Exit(1) from None
        except NothingNew as exc:
            console.print(str(exc))
            return
        console.print(recommender_summary(result))
        return
    from keel.clock import SystemClock
    from keel.recommend.loop import FineTuneLoop

    period = _every(every)
    rec = proj.model(model)
    alias = proj._parent_alias(getattr(rec, "route", None)) or "champion"
    loop = FineTuneLoop(proj, model, clock=SystemClock().now, serving_alias=alias)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(
        f"[bold]keel fine-tune {model} --every {every}[/]: judge the last child on the "
        f"purchases since, then refresh {model}@{alias}'s tables (Ctrl-C stops)"
    )
    done = 0
    try:
        while not stop.is_set() and (cycles is None or done < cycles):
            cycle = loop.step()
            done += 1
            at = datetime.now(UTC).strftime("%H:%M:%S")
            if cycle.decision:
                d = cycle.decision
                console.print(f"{at} {d['action']}: {d['reason']}")
            if cycle.waiting:
                console.print(f"{at} {cycle.waiting}")
            if cycle.refused:
                console.print(f"{at} [red]refused[/]: {cycle.refused}")
            if cycle.fine_tune is not None:
                f = cycle.fine_tune
                console.print(
                    f"{at} {f.version.ref} ← {model}@{f.parent}: {len(f.data):,} interactions, "
                    f"{f.touched['users']:,} user / {f.touched['items']:,} item rows, "
                    f"fit {f.seconds.get('fit', 0):.2f} s → challenger"
                )
            if cycles is None or done < cycles:
                stop.wait(period.total_seconds())
    except KeyboardInterrupt:
        pass


def register(root: typer.Typer) -> None:
    root.command("fine-tune")(fine_tune)
