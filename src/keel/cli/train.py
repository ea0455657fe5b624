"""``keel train``: train a declared model, evaluate it on later data, register it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from keel.cli._common import console, friendly, project
from keel.errors import ValidationError
from keel.training import PHASES, Preempted, TrainResult

__all__ = ["progress_bars", "register", "summary_table"]


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"--until {text!r} is not a time; give an ISO time such as 2026-11-20T12:00Z"
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class progress_bars:
    """One bar per training phase, fed by ``train_model``'s ``progress(phase, done, total)``."""

    def __init__(self, out: Console) -> None:
        self.progress = Progress(
            TextColumn("   [progress.description]{task.description:13s}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> progress_bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)


def summary_table(result: TrainResult) -> Table:
    """What a training run produced, for the terminal."""
    data, v = result.data, result.version
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "version",
        f"{v.ref} ({v.format}, {v.artifact_size:,} bytes, sha256 "
        f"{v.artifact[:12]}…), parent {v.parent_version or '—'}",
    )
    rng = data.time_range(data.train)
    hold = data.time_range(data.holdout)
    table.add_row(
        "training set",
        f"{data.table.num_rows:,} rows as of {data.until:%Y-%m-%d %H:%M} UTC; "
        f"{len(data.names)} features",
    )
    table.add_row(
        "split",
        f"train {int(data.train.sum()):,} rows {rng[0][:16]} → {rng[1][:16]}; holdout "
        f"{int(data.holdout.sum()):,} rows {hold[0][:16]} → {hold[1][:16]}",
    )
    table.add_row(
        "holdout",
        ", ".join(f"{k} {val:.4f}" for k, val in result.metrics.items()),
    )
    baseline = (v.lineage.get("training") or {}).get("parent_holdout")
    if baseline:
        table.add_row(
            "",
            f"{baseline['version']} on the same rows: "
            + ", ".join(f"{k} {val:.4f}" for k, val in baseline["metrics"].items()),
        )
    table.add_row(
        "time",
        ", ".join(f"{k} {s:.2f} s" for k, s in result.seconds.items())
        + (f"; resumed from step {result.resumed_from}" if result.resumed_from else ""),
    )
    if result.shadow_alias:
        table.add_row("alias", f"{v.model}@{result.shadow_alias} → {v.version}")
    return table


@friendly
def train(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="a model declared in the definitions"),
    until: str | None = typer.Option(None, help="train as of this earlier time (ISO)"),
    shadow: bool = typer.Option(
        False, help="make the new version the route's shadow candidate (MODEL@challenger)"
    ),
    alias: str | None = typer.Option(None, help="move this alias to the new version"),
    holdout: str | None = typer.Option(
        None, help="evaluate on this last stretch instead of the declared split's (e.g. 6h)"
    ),
    window: str | None = typer.Option(
        None, help="train on this last stretch before the holdout only (e.g. 6d)"
    ),
) -> None:
    """Build the point-in-time set, fit, evaluate on the later holdout, register."""
    if shadow and alias:
        raise typer.BadParameter("give --shadow or --alias, not both")
    proj = project(ctx)
    target: Any = model
    if holdout is not None or window is not None:
        target = _split(proj.model(model), holdout, window)
    # A fixed as-of time: a preempted run resumes only on the very same training set.
    as_of = _when(until) or datetime.now(UTC)
    console.print(f"[bold]keel train {model}[/] — phases: {', '.join(PHASES)}")
    try:
        with progress_bars(console) as report:
            result = proj.train(target, until=as_of, shadow=shadow, alias=alias, progress=report)
    except Preempted as stop:
        again = (
            f"keel train {model} --until {as_of.isoformat()}"
            + (" --shadow" if shadow else "")
            + (f" --holdout {holdout}" if holdout else "")
            + (f" --window {window}" if window else "")
        )
        console.print(
            f"[yellow]preempted[/] at step {stop.step}: checkpoint saved; to resume, run\n"
            f"   {again}"
        )
        raise typer.Exit(143) from None
    if isinstance(result, TrainResult):
        console.print(summary_table(result))
    else:
        from keel.cli.finetune import recommender_summary

        console.print(recommender_summary(result))
    if shadow:
        route = result.model.route or model
        console.print(
            f"a server whose route {route!r} shadows {model}@challenger picks it up; or: "
            f"keel traffic set {route} --shadow {model}@challenger"
        )


def _split(declared: Any, holdout: str | None, window: str | None) -> Any:
    """The declared model with another holdout and/or training window (recorded in the
    version's lineage, so it reproduces)."""
    from keel.features.definitions import parse_duration
    from keel.training.definitions import Model, TimeSplit

    if not isinstance(declared, Model):
        raise typer.BadParameter(
            f"{declared.name!r} is not split in time: --holdout and --window apply to a "
            "declared Model"
        )
    split = TimeSplit(
        holdout=declared.split.holdout if holdout is None else parse_duration(holdout),
        warmup=declared.split.warmup,
        window=declared.split.window if window is None else parse_duration(window),
    )
    return dataclasses.replace(declared, split=split)


def register(root: typer.Typer) -> None:
    root.command("train")(train)
