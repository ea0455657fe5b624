"""``keel explain ROUTE``: why a running server's route predicted what it did, per row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from keel.cli._common import console, friendly
from keel.serving.client import call

URL = typer.Option("http://127.0.0.1:8000", "--url", help="the server's address")


def _rows(row: list[str], rows_file: Path | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for text in row:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise typer.BadParameter(f"--row takes one JSON object, got {text!r}: {exc}") from None
        if not isinstance(value, dict):
            raise typer.BadParameter(f"--row takes one JSON object, got {text!r}")
        out.append(value)
    if rows_file is not None:
        try:
            value = json.loads(rows_file.read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"--rows {rows_file}: {exc}") from None
        value = value.get("rows", value) if isinstance(value, dict) else value
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise typer.BadParameter(f"--rows {rows_file} must hold a list of JSON objects")
        out.extend(value)
    if not out:
        raise typer.BadParameter("give at least one row: --row '{\"user_id\": 7, ...}'")
    return out


def explain(
    route: str = typer.Argument(..., help="route name"),
    row: list[str] = typer.Option([], "--row", help="a request row as JSON (repeatable)"),
    rows_file: Path | None = typer.Option(
        None, "--rows", help='a JSON file of rows (a list, or {"rows": [...]})'
    ),
    method: str | None = typer.Option(
        None, help="tree, kernel or surrogate (default: the route's explain.method)"
    ),
    top: int = typer.Option(8, help="contributions shown per row, largest first"),
    as_json: bool = typer.Option(False, "--json", help="print the server's answer as JSON"),
    url: str = URL,
) -> None:
    """Explain a route's predictions: each feature's contribution, as served."""
    body: dict[str, Any] = {"rows": _rows(row, rows_file), "top": top}
    if method is not None:
        body["method"] = method
    answer = call(url, f"/v1/routes/{route}/explain", body)
    if as_json:
        console.print_json(data=answer)
        return
    for line in describe(answer):
        console.print(line)


def describe(answer: dict[str, Any]) -> list[Any]:
    """An explain answer as a heading (method, fidelity) and one table per row."""
    details = answer.get("details") or {}
    how = answer["method"]
    if how == "surrogate":
        fid = details.get("fidelity") or {}
        how += f" {details.get('model', '')} (R² {fid.get('r2', float('nan')):.3f}"
        if fid.get("rank_correlation") is not None:
            how += f", rank correlation {fid['rank_correlation']:.3f}"
        how += ")"
    elif how == "kernel":
        how += (
            f" SHAP ({details.get('samples')} coalitions × {details.get('background')} "
            f"background rows{', exact' if details.get('exact') else ''})"
        )
    else:
        how += " SHAP (exact)"
    out: list[Any] = [
        f"[bold]{answer['route']}[/] serving {answer['version']}: {how}, in the model's "
        f"{answer['output']} output"
    ]
    scores: list[float] = next(iter(answer["predictions"].values()), [])
    for i, row in enumerate(answer["explanations"]):
        table = Table(
            title=f"row {i}: {answer['output']} {row['output']:.4f} = base "
            f"{row['base_value']:.4f} + contributions"
            + (f" (served score {scores[i]:.4f})" if i < len(scores) else ""),
            title_justify="left",
        )
        table.add_column("feature")
        table.add_column("contribution", justify="right")
        table.add_column("")
        contributions = row["contributions"]
        largest = max((abs(v) for v in contributions.values()), default=0.0) or 1.0
        for feature, value in contributions.items():
            bar = "█" * max(1, round(12 * abs(value) / largest))
            colour = "red" if value > 0 else "green"
            table.add_row(feature, f"{value:+.4f}", f"[{colour}]{bar}[/]")
        out.append(table)
    return out


def register(root: typer.Typer) -> None:
    root.command("explain")(friendly(explain))
