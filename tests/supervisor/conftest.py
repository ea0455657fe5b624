"""A small served project for ``keel up``: the example project's definitions, three days of a
small shop in its log, and a fraud model registered as fraud@champion behind a monitored
route. And ``keel up`` run as a real process, never left behind by a failing test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.project import Project
from keel.supervisor import read_state

runner = CliRunner()

ROUTES = """
[[routes]]
name = "fraud"
model = "fraud@champion"
features = ["card_payments", "user_activity"]
max_wait_ms = 2

[routes.monitor]
sample = 1.0
id = "payment_id"
window_rows = 50
"""


def _prepare(root: Path, settings: str = "") -> Path:
    """``keel init`` a project in ``root`` whose keel.toml is ``settings`` plus the fraud
    route; fill its log and register its model. Returns the keel.toml."""
    import lightgbm
    import pyarrow as pa

    from keel.shop import Shop

    result = runner.invoke(app, ["init", str(root)])
    assert result.exit_code == 0, result.output
    config = root / "keel.toml"
    config.write_text(settings + ROUTES)
    project = Project.load(config)
    for topic in project.declared_topics():
        project.log.create_topic(topic, exist_ok=True)
    shop = Shop(seed=5, n_users=1200, n_items=60)
    for name, table in {**shop.catalog(), **shop.history(days=3)}.items():
        project.log.append(name, table)
    log_ = project.log
    parts = range(log_.topic("shop.payments").partitions)
    pays = pa.concat_tables([log_.read("shop.payments", p, 0, 10**6) for p in parts])
    labels = pa.concat_tables([log_.read("shop.fraud_labels", p, 0, 10**6) for p in parts])
    rows = pays.join(labels.select(["payment_id", "is_fraud"]), "payment_id").sort_by("ts")
    train = project.features.training_set(rows, ["card_payments", "user_activity"])
    names = [
        c
        for c in train.column_names
        if "__" in c and (pa.types.is_integer(train[c].type) or pa.types.is_floating(train[c].type))
    ] + ["amount"]
    x = pa.table({n: train[n].cast(pa.float64()) for n in names}).to_pandas()
    model = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(x, train["is_fraud"])
    project.registry.register("fraud", model, training_set=train)
    project.registry.set_alias("fraud", "champion", 1)
    project.registry.close()
    return config


@pytest.fixture
def prepare() -> Callable[..., Path]:
    """``prepare(root, settings="")``: a served project in ``root`` (see the module)."""
    return _prepare


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """A running ``keel up`` (see :func:`keel_up`) and ways to watch it."""

    def __init__(
        self, config: Path, proc: subprocess.Popen[bytes], output: Path, port: int
    ) -> None:
        self.config = config
        self.proc = proc
        self.output = output
        self.url = f"http://127.0.0.1:{port}"
        self.run_dir = Path(Project.load(config).settings.data_dir) / "up"

    def status(self) -> dict[str, Any]:
        """``keel status --json``, decoded."""
        result = runner.invoke(app, ["-c", str(self.config), "status", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
        """Poll ``check`` until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if self.proc.poll() is not None:
                raise AssertionError(f"keel up ended early:\n{self.output.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; keel up said:\n{self.output.read_text()}"
                )
            time.sleep(0.2)

    def state(self) -> Any:
        return read_state(self.run_dir / "state.json")

    def component(self, name: str) -> Any:
        state = self.state()
        return None if state is None else next(c for c in state.components if c.name == name)

    def all_running(self) -> dict[str, Any] | None:
        """``keel status --json`` once every component runs, else None."""
        doc = self.status()
        states = {c["state"] for c in doc["components"]}
        return doc if states == {"running"} else None

    def restarted(self, name: str, before: Any) -> Any:
        """The component once it runs again, restarted after ``before``."""
        now = self.component(name)
        if now.restarts > before.restarts and now.state.value == "running":
            return now
        return None


@pytest.fixture
def keel_up() -> Iterator[Callable[..., Up]]:
    """``keel_up(config, *args)``: start ``keel up`` on a free port; whatever happens, nothing
    it started outlives the test."""
    started: list[Up] = []

    def start(config: Path, *args: str) -> Up:
        output = config.parent / "keel-up.out"
        port, ui_port = _free_port(), _free_port()
        command = ["up", "--port", str(port), "--ui-port", str(ui_port), *args]
        with output.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "keel", "-c", str(config), *command],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "COLUMNS": "200"},
                start_new_session=True,
            )
        up = Up(config, proc, output, port)
        started.append(up)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGTERM)
            try:
                up.proc.wait(60)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()
        state = up.state()
        for c in state.components if state is not None else []:
            if c.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.pid, signal.SIGKILL)
