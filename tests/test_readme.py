"""The README's Python runs, so the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_shows_python() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_readme_python_block_runs_on_its_own(block: str, capsys) -> None:
    # A fresh namespace each: a reader can copy any one block into a new file and run it.
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    if "RecordError" in block:
        assert "row 0, field 'amount'" in capsys.readouterr().out


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text().splitlines()[:8]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_readme_toml_is_valid_configuration(tmp_path) -> None:
    from keel.config import Settings

    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        (tmp_path / "keel.toml").write_text(block)
        settings = Settings.load(tmp_path / "keel.toml", env={})
        if "[jobs]" in block:  # the queues, as the example project declares them
            assert [q.name for q in settings.jobs.cluster_queues] == ["training", "serving-jobs"]
            assert settings.jobs.cluster_queue_of("fresh").name == "serving-jobs"
            continue
        if "[auth]" in block:  # a token as `keel token new` prints it
            assert [(t.name, t.role) for t in settings.auth.tokens] == [("oncall", "operator")]
            continue
        assert settings.routes and settings.routes[0].name == "fraud"
        route = settings.routes[0]
        # Each block shows one part of a route's configuration, and it must take effect.
        assert (
            route.fast_path is not None
            or route.monitor is not None
            or route.explain.surrogate is not None
        )
