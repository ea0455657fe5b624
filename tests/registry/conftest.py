from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.registry import Registry

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")]


@pytest.fixture(params=BACKENDS)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_db")


@pytest.fixture
def registry(registry_url: str, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(registry_url, str(tmp_path / "artifacts"))
    yield reg
    reg.close()
