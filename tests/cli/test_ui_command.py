"""``keel ui``: its arguments are checked before anything starts (the command itself is run
by the console's browser tests, tests/ui/test_browser.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.project import init_project

runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--port", "0"], "--port must be within 1..65535", id="port"),
        pytest.param(["--refresh", "0"], "--refresh must be positive", id="refresh"),
    ],
)
def test_keel_ui_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    init_project(tmp_path)
    result = runner.invoke(app, ["-c", str(tmp_path / "keel.toml"), "ui", *args])
    assert result.exit_code == 1 and message in result.output


def test_keel_ui_is_a_command() -> None:
    result = runner.invoke(app, ["ui", "--help"])
    assert result.exit_code == 0 and "--server-url" in result.output
