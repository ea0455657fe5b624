"""``keel registry``: model versions, lineage, diffs, reproduction and aliases."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from keel.cli._common import console, friendly, human_bytes, project, short_time

app = typer.Typer(help="Model versions with lineage; aliases; reproduce and diff.")


def _split(ref: str, default: str = "latest") -> tuple[str, str]:
    name, _, version = ref.partition("@")
    return name, version or default


@app.command("list")
@friendly
def list_models(ctx: typer.Context) -> None:
    """Every model with its versions and aliases."""
    reg = project(ctx).registry
    table = Table(title=f"models in {reg.url}")
    for col in ("model", "versions", "aliases"):
        table.add_column(col)
    for name, count, aliases in reg.models():
        table.add_row(
            name, str(count), ", ".join(f"{a}→{v}" for a, v in sorted(aliases.items())) or "—"
        )
    console.print(table)


@app.command("show")
@friendly
def show(
    ctx: typer.Context, ref: str = typer.Argument(..., help="NAME or NAME@VERSION|ALIAS")
) -> None:
    """A model's versions, or one version's record."""
    reg = project(ctx).registry
    name, version = _split(ref, "")
    if not version:
        table = Table(title=f"versions of {name}")
        for col in ("version", "created", "format", "size", "aliases", "metrics", "parent"):
            table.add_column(col)
        for v in reg.versions(name):
            table.add_row(
                str(v.version),
                short_time(v.created_at),
                v.format,
                human_bytes(v.artifact_size),
                ", ".join(v.aliases) or "—",
                ", ".join(
                    f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}"
                    for k, val in v.metrics.items()
                )
                or "—",
                str(v.parent_version or "—"),
            )
        console.print(table)
        return
    v = reg.get(name, version)
    console.print(
        f"[bold]{v.ref}[/] {v.format}, {human_bytes(v.artifact_size)}, artifact "
        f"sha256 {v.artifact}, created {short_time(v.created_at)}, aliases "
        f"{', '.join(v.aliases) or '—'}"
    )
    console.print_json(json.dumps({"params": v.params, "metrics": v.metrics}, default=str))


@app.command("lineage")
@friendly
def lineage(
    ctx: typer.Context, ref: str = typer.Argument(..., help="NAME[@VERSION|ALIAS]")
) -> None:
    """Everything that produced a version: features, data, code, parameters, environment."""
    name, version = _split(ref)
    console.print_json(json.dumps(project(ctx).registry.lineage(name, version), default=str))


@app.command("diff")
@friendly
def diff(ctx: typer.Context, name: str, a: str, b: str) -> None:
    """Field by field, what changed between two versions."""
    changes = project(ctx).registry.diff(name, a, b)
    table = Table(title=f"{name}: {a} → {b}")
    for col in ("field", a, b):
        table.add_column(col, overflow="fold")
    for c in changes:
        table.add_row(c.field, _short(c.a), _short(c.b))
    console.print(table if changes else "no differences")


def _short(value: object) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "…"


@app.command("reproduce")
@friendly
def reproduce(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME[@VERSION|ALIAS]"),
    model: bool = typer.Option(
        False, "--model", help="also retrain the model from its lineage and compare the bytes"
    ),
) -> None:
    """Rebuild a version's training set and check its hash (with --model, the model too)."""
    proj = project(ctx)
    name, version = _split(ref)
    if model:
        _reproduce_model(proj, name, version)
        return
    report = proj.registry.reproduce(name, version, proj.features)
    _changed_views(report.changed_views)
    if report.matches:
        console.print(
            f"[green]reproduced[/] {name}@{report.version}: {report.rows:,} rows, "
            f"sha256 {report.rebuilt_sha256} matches the recorded training set"
        )
    else:
        console.print(
            f"[red]does not reproduce[/] {name}@{report.version}: rebuilt sha256 "
            f"{report.rebuilt_sha256[:16]}…, recorded {report.recorded_sha256[:16]}…"
        )
        raise typer.Exit(1)


@app.command("alias")
@friendly
def alias(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="model name"),
    alias_name: str | None = typer.Argument(None, metavar="ALIAS", help="alias to move"),
    version: int | None = typer.Argument(None, help="version to point it at"),
    reason: str = typer.Option("", help="why (kept in the history)"),
    remove: bool = typer.Option(False, help="remove the alias"),
) -> None:
    """Show aliases and their history, or move one: keel registry alias NAME ALIAS VERSION."""
    reg = project(ctx).registry
    if alias_name is not None:
        if version is None and not remove:
            raise typer.BadParameter("give a VERSION, or --remove")
        move = reg.set_alias(name, alias_name, None if remove else version, reason=reason)
        console.print(
            f"{name}@{alias_name}: {move.from_version or '—'} → {move.to_version or 'removed'}"
        )
    table = Table(title=f"alias history of {name}")
    for col in ("alias", "#", "from", "to", "when", "why"):
        table.add_column(col)
    for h in reg.alias_history(name):
        table.add_row(
            h.alias,
            str(h.seq),
            str(h.from_version or "—"),
            str(h.to_version or "removed"),
            short_time(h.at),
            h.reason,
        )
    console.print(table)


def _changed_views(changed: dict[str, tuple[str, str]]) -> None:
    for view, (old, new) in changed.items():
        console.print(
            f"[yellow]view {view} changed since training:[/] fingerprint {old[:12]} → {new[:12]}"
        )


def _reproduce_model(proj: Any, name: str, version: str) -> None:
    from keel.training import reproduce_model

    with console.status(f"retraining {name}@{version} from its lineage…"):
        rep = reproduce_model(proj.registry, proj.features, name, version)
    _changed_views(rep.changed_views)
    if rep.code_changed:
        console.print(
            f"[yellow]the trainer's code changed since training:[/] fingerprint "
            f"{rep.recorded_fingerprint[:12]} → {rep.current_fingerprint[:12]}"
        )
    data = "[green]matches[/]" if rep.data_matches else "[red]differs[/]"
    console.print(f"training set: {rep.rows:,} rows rebuilt, sha256 {data}")
    if rep.identical:
        console.print(
            f"[green]byte-identical[/] {name}@{rep.version}: the retrained artifact's sha256 "
            f"{rep.rebuilt_artifact} is the registered one"
        )
        return
    console.print(
        f"[yellow]not byte-identical[/] {name}@{rep.version}: sha256 "
        f"{rep.rebuilt_artifact[:16]}…, registered {rep.recorded_artifact[:16]}…; largest "
        f"prediction difference on the training set {rep.max_prediction_diff:.3g}"
    )
    raise typer.Exit(1)
