from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from keel.features import OnlineStore, open_online_store
from keel.log import Log, Topic, open_log

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


def _payments_log(url: str = "sqlite://") -> Log:
    log = open_log(url)
    log.create_topic(
        Topic(
            "pay",
            {"ts": "timestamp", "user_id": "int64", "amount": "float64", "country": "string?"},
            event_time="ts",
            key="user_id",
            partitions=2,
        )
    )
    return log


@pytest.fixture
def payments_log() -> Callable[..., Log]:
    """Opens a log at a URL (default: in memory) holding the ``pay`` topic: payments of
    users in two partitions, with an amount and an optional country."""
    return _payments_log
