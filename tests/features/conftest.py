from __future__ import annotations

from collections.abc import Iterator

import pytest

from keel.features import OnlineStore, open_online_store

ONLINE = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis"),
]


@pytest.fixture(params=ONLINE)
def online_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.db'}"
    server = request.getfixturevalue("redis_server")
    return f"{server}?prefix={request.getfixturevalue('redis_prefix')}"


@pytest.fixture
def online(online_url: str) -> Iterator[OnlineStore]:
    store = open_online_store(online_url)
    yield store
    store.close()
