from __future__ import annotations

from collections.abc import Iterator

import pytest

from keel.log import Log, open_log

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("redis", id="redis")]


@pytest.fixture(params=BACKENDS)
def log_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.db'}"
    server = request.getfixturevalue("redis_server")
    prefix = request.getfixturevalue("redis_prefix")
    return f"{server}?prefix={prefix}"


@pytest.fixture
def log(log_url: str) -> Iterator[Log]:
    opened = open_log(log_url)
    yield opened
    opened.close()
