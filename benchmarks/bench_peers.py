"""Keel beside its peers, on the same data and the same load, in one run.

Run: ``make bench-peers`` or ``.venv/bin/python benchmarks/bench_peers.py [--only
serving,features,drift,explain] [--quick]``. Each peer runs in its own virtual environment
under ``benchmarks/peers/`` (ignored by git, built on first use from pinned versions). Prints
one table of Keel's figures beside each peer's, with the ratios, then the same table as
Markdown for BENCHMARKS.md. Never part of ``make test``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from peers_common import PEERS_DIR, Row, fmt, markdown

SECTIONS = ("serving", "features", "drift", "explain")


def table(rows: list[Row]) -> Table:
    t = Table(title="Keel beside its peers (one run, one machine)")
    for col, justify in (
        ("section", "left"),
        ("measure", "left"),
        ("Keel", "right"),
        ("peer", "left"),
        ("peer's figure", "right"),
        ("Keel's lead", "right"),
        ("goal", "left"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        goal = ""
        if r.goal is not None:
            goal = f"≥ {r.goal:g}× " + ("[green]met[/]" if r.met else "[red]NOT met[/]")
        t.add_row(
            r.section,
            f"{r.measure} ({r.unit})",
            fmt(r.keel),
            r.peer,
            fmt(r.peer_value),
            f"{r.ratio:.2f}×",
            goal,
        )
    return t


def main() -> None:
    # The sections asked for first (a section's module, and its imports, load only when it
    # runs), then the full parser with their options.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--only", default=",".join(SECTIONS))
    only = [s.strip() for s in pre.parse_known_args()[0].only.split(",") if s.strip()]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    parser.add_argument("--quick", action="store_true", help="smaller data, shorter loads")
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}: choose from {', '.join(SECTIONS)}")
    modules = {s: importlib.import_module(f"peers_{s}") for s in only}
    for module in modules.values():
        module.add_arguments(parser)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    rows: list[Row] = []
    for section in only:
        console.rule(f"[bold]{section}")
        t0 = time.perf_counter()
        rows.extend(modules[section].run(args))
        console.print(f"{section}: {time.perf_counter() - t0:.0f} s")
    console.print(table(rows))
    print()
    print(markdown(rows))
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    (PEERS_DIR / "results.json").write_text(
        json.dumps([asdict(r) | {"ratio": r.ratio} for r in rows], indent=2)
    )


if __name__ == "__main__":
    main()
