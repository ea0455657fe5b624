"""The payments world's fixture (helpers in training_world.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from training_world import Payments, make_world, payments


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Payments]:
    w = make_world(tmp_path, *payments())
    yield w
    w.registry.close()
