"""What every command shares: the console, settings from --config, and error reporting."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import typer
from rich.console import Console

from keel.errors import KeelError
from keel.project import Project

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def project(ctx: typer.Context) -> Project:
    """The project named by the global --config (or ./keel.toml)."""
    root = ctx.find_root()
    cached = root.meta.get("keel.project")
    if cached is None:
        cached = Project.load(root.meta.get("keel.config"))
        root.meta["keel.project"] = cached
    return cached


def friendly(func: F) -> F:
    """Print a KeelError as one readable line and exit 1, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeelError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def span(seconds: float) -> str:
    """A length of time for a person: ``42 s``, ``12 min``, ``3.5 h``."""
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def short_time(t: datetime | None) -> str:
    return "—" if t is None else t.strftime("%Y-%m-%d %H:%M")
