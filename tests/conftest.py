"""Shared fixtures: a real Redis and PostgreSQL for the scale-out backends, and a small
world of card payments with a served fraud model (serving and monitoring tests).

Redis is reached at 127.0.0.1:6379 when it answers; otherwise a private ``redis-server`` is
started on a free port; otherwise the tests that need it fail saying what to install.
Each test gets its own key prefix and removes only the keys under it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from keel.features import Aggregate, Entity, FeatureStore, FeatureView, Source
from keel.log import Topic, open_log
from keel.registry import Registry

DEFAULT_REDIS = ("127.0.0.1", 6379)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """``redis://host:port/0`` of a running Redis: the machine's, or one started here."""
    if _answers(*DEFAULT_REDIS):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "these tests need Redis: none answers at 127.0.0.1:6379 and no redis-server is "
            "installed (apt-get install redis-server, or start one on port 6379)"
        )
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="keel-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _answers("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"started {binary} on port {port} but it never answered PING")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix owned by this test; its keys are deleted afterwards, nothing else."""
    import redis

    prefix = f"keeltest-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_server)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


PG = ("127.0.0.1", 5432)


def _pg_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_postgres() -> tuple[str, subprocess.Popen[bytes] | None, str]:
    """Start a private PostgreSQL from the machine's binaries; return (url, process, dir)."""
    import glob
    import os
    import pwd

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = shutil.which("initdb") or (bins[-1] if bins else None)
    if initdb is None:
        pytest.fail(
            "these tests need PostgreSQL: none answers at 127.0.0.1:5432 and no initdb is "
            "installed (apt-get install postgresql, or start one on port 5432 with trust auth)"
        )
    bindir = os.path.dirname(initdb)
    workdir = tempfile.mkdtemp(prefix="keel-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(workdir, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(workdir, "data")
    subprocess.run(
        [*prefix, initdb, "-D", data, "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            *prefix,
            os.path.join(bindir, "postgres"),
            "-D",
            data,
            "-p",
            str(port),
            "-k",
            workdir,
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not _pg_answers("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"started PostgreSQL from {bindir} but it never answered")
        time.sleep(0.1)
    return f"postgresql://postgres@127.0.0.1:{port}", proc, workdir


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """``postgresql://postgres@host:port`` of a running server (the machine's, or one
    started here). Tests create and drop their own databases on it."""
    if _pg_answers(*PG):
        yield "postgresql://postgres@127.0.0.1:5432"
        return
    url, proc, workdir = _start_postgres()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server: str) -> Iterator[str]:
    """A fresh database of this test's own, dropped afterwards."""
    import psycopg

    name = f"keel_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{postgres_server}/{name}"
    finally:
        with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- a small world: card payments, a card feature view, a LightGBM fraud model ---------
NOW = datetime.now(UTC)


@dataclass
class World:
    log: Any
    features: FeatureStore
    registry: Registry
    rows: list[dict[str, Any]]
    tmp: Path

    @property
    def now(self) -> datetime:
        """When the world's payments end."""
        return NOW

    def train(self, seed: int, trees: int = 20) -> Any:
        import lightgbm

        rng = np.random.default_rng(seed)
        labels = pa.table(
            {
                "card_id": rng.integers(0, 50, 400),
                "ts": pa.array(
                    [NOW - timedelta(minutes=int(m)) for m in rng.integers(0, 600, 400)],
                    pa.timestamp("us", tz="UTC"),
                ),
                "amount": np.round(rng.gamma(2, 30, 400), 2),
            }
        )
        labels = labels.append_column("y", pa.array((labels["amount"].to_numpy() > 70).astype(int)))
        train = self.features.training_set(labels, ["card"])
        x = pd.DataFrame(
            {
                "card__count_1h": train["card__count_1h"].to_numpy(),
                "card__amount_1d": train["card__amount_1d"].to_numpy(),
                "amount": train["amount"].to_numpy(),
            }
        )
        model = lightgbm.LGBMClassifier(n_estimators=trees, verbose=-1, random_state=seed)
        model.fit(x, train["y"].to_numpy())
        return model, train


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)


def build_world(tmp_path: Path) -> World:
    """Card payments over the last day in a SQLite log, the ``card`` view materialized, and
    fraud@1 (alias ``champion``) trained on them."""
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    log.create_topic(
        Topic(
            "pay",
            {"ts": "timestamp", "card_id": "int64", "amount": "float64"},
            event_time="ts",
            key="card_id",
            partitions=2,
        )
    )
    rng = np.random.default_rng(1)
    n = 2000
    log.append(
        "pay",
        pa.table(
            {
                "ts": pa.array(
                    [
                        NOW - timedelta(seconds=int(s))
                        for s in np.sort(rng.integers(0, 86400, n))[::-1]
                    ],
                    pa.timestamp("us", tz="UTC"),
                ),
                "card_id": rng.integers(0, 50, n),
                "amount": np.round(rng.gamma(2, 30, n), 2),
            }
        ),
    )
    view = FeatureView(
        "card",
        Entity("card", "card_id"),
        Source("pay"),
        [
            Aggregate(None, "count", timedelta(hours=1), name="count_1h"),
            Aggregate("amount", "sum", timedelta(days=1), name="amount_1d"),
        ],
        tile=timedelta(minutes=5),
    )
    features = FeatureStore(log, views=[view], offline=tmp_path / "offline")
    features.materialize()
    registry = Registry(
        f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"), log=log
    )
    w = World(
        log,
        features,
        registry,
        [
            {"card_id": int(c), "amount": float(a)}
            for c, a in zip(rng.integers(0, 50, 64), rng.gamma(2, 30, 64), strict=True)
        ],
        tmp_path,
    )
    model, train = w.train(seed=1)
    registry.register("fraud", model, training_set=train)
    registry.set_alias("fraud", "champion", 1)
    return w


class Running:
    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def running() -> Iterator[type[Running]]:
    yield Running


def fraud_route(world: World, **route_kw: Any) -> Any:
    """An InferenceServer of the world's fraud route (fraud@champion joining the card
    features, 2 ms batch window), with ``route_kw`` added to its RouteConfig; loaded."""
    from keel.config import RouteConfig
    from keel.serving import InferenceServer

    route_kw.setdefault("max_wait_ms", 2)
    cfg = RouteConfig(name="fraud", model="fraud@champion", features=["card"], **route_kw)
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log
    )
    server.load_all()
    return server


@pytest.fixture
def fraud_server(world: World) -> Callable[..., Any]:
    """Makes the world's fraud route's server (see :func:`fraud_route`)."""
    return lambda **route_kw: fraud_route(world, **route_kw)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Running]]:
    """One world for a whole module, its fraud route (fraud@champion with the card features)
    served over HTTP on 127.0.0.1."""
    from keel.serving import create_app

    world = build_world(tmp_path_factory.mktemp("world"))
    with Running(create_app(fraud_route(world))) as srv:
        yield world, srv


# -- the demo, run once ------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoRun:
    """What one small run of the demo produced: its result, what it printed, and the project
    it kept."""

    result: Any
    text: str
    project_dir: Path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo at a small size, run once per test session (it takes minutes on two cores):
    ``test_demo`` checks what it did and printed, the console's browser tests look at the
    project it leaves behind."""
    from rich.console import Console

    from keel.demo import run_demo

    root = tmp_path_factory.mktemp("demo-run")
    console = Console(record=True, width=120)
    result = run_demo(
        days=14,
        users=3000,
        items=200,
        live_seconds=1.0,
        live_rate=500,
        keep=root / "demo",
        console=console,
        quick=True,
    )
    return DemoRun(result, console.export_text(), root / "demo")


# -- waiting for something to happen -----------------------------------------------------------
# A test that needs another thread, process or task to have reached some point waits for that
# point itself rather than sleeping and hoping: a fixed sleep is too short on a loaded machine
# and needlessly long on an idle one.

Message = str | Callable[[], str]


def _timed_out(what: Message, timeout: float) -> None:
    said = what() if callable(what) else what
    pytest.fail(f"timed out after {timeout:g} s waiting for {said}", pytrace=False)


def wait_until(
    predicate: Callable[[], Any], what: Message, timeout: float = 30.0, interval: float = 0.01
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; fail saying
    ``what`` (a string, or a callable reporting the state at that moment) if ``timeout``
    seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            _timed_out(what, timeout)
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Any], what: Message, timeout: float = 30.0, interval: float = 0.005
) -> Any:
    """:func:`wait_until` for a coroutine: the event loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            _timed_out(what, timeout)
        await asyncio.sleep(interval)


# Fixtures rather than imports: every test folder has a module named ``conftest``, so which one
# an ``import conftest`` finds depends on what was collected before.
@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    return wait_until


@pytest.fixture(name="wait_until_async")
def wait_until_async_fixture() -> Callable[..., Any]:
    return wait_until_async
