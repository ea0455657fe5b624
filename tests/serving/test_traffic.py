"""Canary splits, shadow comparisons, the controller's decisions."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec
import numpy as np
import pytest

from keel.clock import ManualClock
from keel.config import CanaryConfig, RouteConfig, ShadowConfig
from keel.controller import Controller
from keel.errors import ValidationError
from keel.serving import InferenceServer, create_app
from keel.serving.traffic import Running, ShadowState, bucket, decide_shadow, discrepancy

# -- statistics -----------------------------------------------------------------------------


def test_running_mean_and_interval_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 1000)
    r = Running()
    for chunk in np.array_split(x, 7):
        r.update_many(chunk)
    assert r.n == 1000
    assert abs(r.mean - x.mean()) < 1e-12 and abs(r.sd - x.std(ddof=1)) < 1e-12
    lo, hi = r.ci
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=1) / 1000**0.5)
    assert Running.from_dict(r.to_dict()) == r


def test_discrepancy_metrics_fit_their_outputs() -> None:
    a = np.array([0.2, 0.5, 0.9])
    assert discrepancy("abs", a, a + 0.1).tolist() == pytest.approx([0.1] * 3)
    assert discrepancy("rel", a, a * 1.5).tolist() == pytest.approx([0.5] * 3)
    classes = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert discrepancy("agreement", classes, classes[:, ::-1]).tolist() == [1.0, 1.0]
    emb = np.random.default_rng(1).normal(size=(4, 16))
    assert np.allclose(discrepancy("cosine", emb, 3 * emb), 0)
    ranks = np.arange(20.0)[None, :].repeat(2, axis=0)
    assert discrepancy("topk", ranks, ranks, top_k=5).tolist() == [0.0, 0.0]
    with pytest.raises(ValidationError, match="shape"):
        discrepancy("abs", a, a[:2])


def test_buckets_are_sticky_and_spread() -> None:
    assert bucket(12345) == bucket("12345") == bucket(12345)
    shares = np.array([bucket(k) for k in range(10_000)])
    assert 8.5 < (shares < 10).mean() * 100 < 11.5


def test_a_converged_comparison_is_promoted_only_after_the_window() -> None:
    cfg = ShadowConfig(model="m@c", tolerance=0.05, window_s=3600, min_samples=30)
    st = ShadowState("r", "m@2", "m@1", started_at=0.0)
    st.diff.update_many(np.full(100, 0.01) + np.random.default_rng(0).normal(0, 0.001, 100))
    assert decide_shadow(cfg, st.summary(cfg, 1800)) is None
    assert decide_shadow(cfg, st.summary(cfg, 3601)).action == "promote"
    bad = ShadowState("r", "m@3", "m@1", started_at=0.0)
    bad.diff.update_many(np.full(100, 0.3))
    assert decide_shadow(cfg, bad.summary(cfg, 3601)).action == "reject"


# -- on a server ------------------------------------------------------------------------------


def make(world, clock, **route_kw) -> InferenceServer:
    cfg = RouteConfig(
        name="fraud", model="fraud@champion", features=["card"], max_wait_ms=2, **route_kw
    )
    server = InferenceServer(
        [cfg], registry=world.registry, features=world.features, log_=world.log, clock=clock
    )
    server.load_all()
    return server


def drain(server: InferenceServer) -> None:
    deadline = time.monotonic() + 10
    while not server.shadows_idle() and time.monotonic() < deadline:
        time.sleep(0.02)


def predict_all(client: httpx.Client, rows) -> list[tuple]:
    """Version and predictions of each answer (staleness moves with the clock)."""
    out = []
    for r in rows:
        body = client.post("/v1/routes/fraud/predict", json={"rows": [r]}).json()
        out.append((body["version"], body["predictions"]))
    return out


def test_shadow_never_changes_the_answer_and_promotes_after_the_window(world, running) -> None:
    twin, train = world.train(seed=1)  # the same training: outputs agree
    world.registry.register("fraud", twin, training_set=train)
    world.registry.set_alias("fraud", "challenger", 2)
    clock = ManualClock(1_000_000.0)
    plain = make(world, clock)
    shadowed = make(
        world,
        clock,
        shadow=ShadowConfig(
            model="fraud@challenger",
            compare="abs",
            tolerance=0.01,
            window_s=86_400,
            min_samples=40,
            max_latency_ratio=10.0,
        ),
    )  # the shadow shares these 2 cores
    with running(create_app(plain)) as a, httpx.Client(base_url=a.url) as client:
        expected = predict_all(client, world.rows)
    with running(create_app(shadowed)) as b, httpx.Client(base_url=b.url) as client:
        got = predict_all(client, world.rows)
        drain(shadowed)
        assert got == expected  # the client's answer is identical with a shadow
        status = client.get("/v1/routes/fraud/traffic").json()
        assert status["shadow"]["samples"] == len(world.rows)
        assert status["shadow"]["discrepancy"] == 0.0, status
        assert status["shadow"]["latency_ratio"] > 0
        controller = Controller(shadowed, world.registry)
        assert controller.step() == []  # converged, but the window has not passed
        clock.advance(86_401)
        [decision] = controller.step()
        assert decision.action == "promote"
        assert world.registry.get("fraud", "champion").version == 2
        assert shadowed.routes["fraud"].current.version == "fraud@2"  # hot-swapped
        status = client.get("/v1/routes/fraud/traffic").json()
        assert status["shadow"]["status"] == "promoted"
        assert status["decisions"][-1]["action"] == "promote"
        assert "95% CI" in status["decisions"][-1]["reason"]


def test_a_diverging_shadow_is_not_promoted(world, running) -> None:
    other, train = world.train(seed=9, trees=3)
    world.registry.register("fraud", other, training_set=train)
    clock = ManualClock(0.0)
    server = make(
        world,
        clock,
        shadow=ShadowConfig(
            model="fraud@2", compare="abs", tolerance=0.001, window_s=60, min_samples=20
        ),
    )
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        predict_all(client, world.rows)
        drain(server)
        clock.advance(61)
        decisions = Controller(server, world.registry).step()
    assert [d.action for d in decisions] == ["reject"]
    assert world.registry.get("fraud", "champion").version == 1
    assert server.routes["fraud"].current.version == "fraud@1"


def test_evidence_survives_a_restart(world, running) -> None:
    twin, train = world.train(seed=1)
    world.registry.register("fraud", twin, training_set=train)
    clock = ManualClock(5_000.0)
    shadow = ShadowConfig(model="fraud@2", window_s=3600, min_samples=10)
    first = make(world, clock, shadow=shadow)
    with running(create_app(first)) as srv, httpx.Client(base_url=srv.url) as client:
        predict_all(client, world.rows[:25])
        drain(first)
    # stopping the app persisted the evidence; a new server picks it up mid-window
    clock.advance(600)
    second = make(world, clock, shadow=shadow)
    st = second.routes["fraud"].shadow_state
    assert st.diff.n == 25 and st.started_at == 5_000.0 and st.status == "comparing"


def test_restarts_read_only_the_latest_evidence(world, running) -> None:
    # Many snapshots of two candidates: the restored state is the latest of the right one, and
    # later lookups read only what was appended since.
    twin, train = world.train(seed=1)
    world.registry.register("fraud", twin, training_set=train)
    world.registry.register("fraud", twin, training_set=train)
    clock = ManualClock(5_000.0)
    first = make(world, clock, shadow=ShadowConfig(model="fraud@2", window_s=3600))
    route = first.routes["fraud"]
    for n in range(1, 41):
        route.shadow_state.diff.update_many(np.zeros(1))
        clock.advance(2.0)
        first.snapshot(route)
        if n == 20:
            first.set_traffic("fraud", shadow=ShadowConfig(model="fraud@3", window_s=3600))
            route.shadow_state.diff.update_many(np.zeros(100))
    first.routes["fraud"].shadow_runner.close()

    reads: list[int] = []
    read = world.log.read

    def counting(topic, partition, offset, max_records=10_000):
        table = read(topic, partition, offset, max_records)
        if topic == "keel.traffic":
            reads.append(table.num_rows)
        return table

    world.log.read = counting
    # The shadow set at runtime (fraud@3) outlives the restart: keel.toml's is unchanged.
    second = make(world, clock, shadow=ShadowConfig(model="fraud@2", window_s=3600))
    assert second.routes["fraud"].shadow_state.diff.n == 120
    assert sum(reads) > 40  # the one scan at start-up
    reads.clear()
    second.set_traffic("fraud", shadow=ShadowConfig(model="fraud@2", window_s=3600))
    assert second.routes["fraud"].shadow_state.diff.n == 20
    assert second.traffic("fraud")["shadow"]["samples"] == 20
    assert sum(reads) == 1  # only its own traffic_set event was new
    second.routes["fraud"].shadow_runner.close()


def test_the_candidate_runs_in_its_own_process_and_stops_with_the_server(world, running) -> None:
    import os
    import signal

    twin, train = world.train(seed=1)
    world.registry.register("fraud", twin, training_set=train)
    server = make(world, ManualClock(0.0), shadow=ShadowConfig(model="fraud@2", min_samples=1))
    runner = server.routes["fraud"].shadow_runner
    # Started with the shadow, before any request: the first copies find it ready.
    assert runner.isolated and runner.candidate_pid not in (None, os.getpid())
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        predict_all(client, world.rows[:10])
        drain(server)
        assert runner.isolated and runner.candidate_pid not in (None, os.getpid())
        state = server.routes["fraud"].shadow_state
        assert (state.diff.n, state.errors, state.diff.mean) == (10, 0, 0.0)
        first_pid = runner.candidate_pid
        os.kill(first_pid, signal.SIGKILL)  # a crashed candidate is started again
        deadline = time.monotonic() + 10
        while state.diff.n < 20:
            assert time.monotonic() < deadline, "the candidate was never restarted"
            predict_all(client, world.rows[:1])
            drain(server)
        assert runner.candidate_pid not in (None, first_pid)
        last_pid = runner.candidate_pid
    assert runner.candidate_pid is None  # stopping the server stopped the process
    with pytest.raises(ProcessLookupError):
        os.kill(last_pid, 0)


def test_a_canary_is_sticky_and_rolled_back_when_it_fails(world, running) -> None:
    import lightgbm
    import pandas as pd

    rng = np.random.default_rng(5)
    x = pd.DataFrame(
        {
            "card__count_1h": rng.random(200),
            "card__amount_1d": rng.random(200),
            "amount": rng.random(200),
            "extra": rng.random(200),
        }
    )
    broken = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(x, rng.random(200) > 0.5)
    world.registry.register("fraud", broken)  # needs a field no request has
    server = make(
        world,
        ManualClock(0.0),
        canary=CanaryConfig(model="fraud@2", percent=50, max_error_rate=0.1, min_requests=5),
    )
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        results = {}
        for row in world.rows:
            r = client.post("/v1/routes/fraud/predict", json={"rows": [row]})
            results.setdefault(row["card_id"], set()).add(r.status_code)
        assert all(len(codes) == 1 for codes in results.values())  # sticky per entity
        assert any(400 in c for c in results.values()) and any(200 in c for c in results.values())
        [decision] = Controller(server, world.registry).step()
        assert decision.action == "rollback" and "error rate" in decision.reason
        status = client.get("/v1/routes/fraud/traffic").json()
        assert status["canary"]["percent"] == 0
        after = [
            client.post("/v1/routes/fraud/predict", json={"rows": [r]}).status_code
            for r in world.rows
        ]
        assert set(after) == {200}


def test_bad_traffic_settings_leave_the_split_untouched(world, running) -> None:
    twin, train = world.train(seed=1)
    world.registry.register("fraud", twin, training_set=train)
    server = make(world, ManualClock(0.0), canary=CanaryConfig(model="fraud@2", percent=10))
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        url = "/v1/routes/fraud/traffic"
        r = client.post(url, json={"canary": {"model": "fraud@2", "percent": 150}})
        assert r.status_code == 400 and "0..100" in r.json()["error"]
        r = client.post(url, json={"canary": {"model": "fraud@nope", "percent": 20}})
        assert r.status_code == 404 and "no alias 'nope'" in r.json()["error"]
        r = client.post(url, json={"shadow": {"model": "fraud@2", "compare": "cosine"}})
        assert r.status_code == 400 and "vector outputs" in r.json()["error"]
        r = client.post(url, json={"shadow": {"model": "fraud@2", "compare": "cosin"}})
        assert r.status_code == 400 and "did you mean 'cosine'" in r.json()["error"]
        status = client.get(url).json()
        assert status["canary"]["percent"] == 10 and status["canary"]["serving"] == "fraud@2"
        assert status["shadow"] is None
        ok = client.post(url, json={"canary": {"model": "fraud@2", "percent": 30}})
        assert ok.status_code == 200 and ok.json()["canary"]["percent"] == 30


def test_run_shadow_comparisons_off_the_event_loop(world) -> None:
    # The shadow copy is queued after the answer; the request itself does not wait for it.
    twin, train = world.train(seed=1)
    world.registry.register("fraud", twin, training_set=train)
    server = make(world, ManualClock(0.0), shadow=ShadowConfig(model="fraud@2", min_samples=1))
    from keel.serving.routes import Rows

    async def go() -> None:
        await server.start()
        await server.infer("fraud", Rows(world.rows[:1], 1))
        deadline = time.monotonic() + 10
        while not server.shadows_idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await server.stop()

    asyncio.run(go())
    assert server.routes["fraud"].shadow_state.diff.n == 1


def test_keel_traffic_commands_against_a_running_server(world, running) -> None:
    from typer.testing import CliRunner

    from keel.cli import app

    twin, train = world.train(seed=1)
    world.registry.register("fraud", twin, training_set=train)
    server = make(world, ManualClock(0.0))
    runner = CliRunner(env={"COLUMNS": "200"})
    with running(create_app(server)) as srv:
        set_ = runner.invoke(
            app,
            [
                "traffic",
                "set",
                "fraud",
                "--shadow",
                "fraud@2",
                "--tolerance",
                "0.01",
                "--window",
                "2h",
                "--url",
                srv.url,
            ],
        )
        assert set_.exit_code == 0, set_.output
        assert "fraud@2 (comparing)" in set_.output
        assert server.routes["fraud"].config.shadow.window_s == 7200
        bad = runner.invoke(
            app,
            [
                "traffic",
                "set",
                "fraud",
                "--canary",
                "fraud@2",
                "--percent",
                "120",
                "--url",
                srv.url,
            ],
        )
        assert bad.exit_code == 1 and "0..100" in bad.output
        status = runner.invoke(app, ["traffic", "status", "fraud", "--url", srv.url])
        assert status.exit_code == 0 and "fraud@1" in status.output
    down = runner.invoke(app, ["traffic", "status", "fraud", "--url", "http://127.0.0.1:9"])
    assert down.exit_code == 1 and "no Keel server answers" in down.output


def test_labels_compare_both_versions_real_loss(world, running) -> None:
    from datetime import UTC, datetime

    from keel.config import LabelsConfig
    from keel.log import Topic

    world.log.create_topic(
        Topic(
            "outcomes",
            {"ts": "timestamp", "req_id": "int64", "y": "float64"},
            event_time="ts",
            key="req_id",
        )
    )
    twin, train = world.train(seed=1)
    world.registry.register("fraud", twin, training_set=train)
    server = make(
        world,
        ManualClock(0.0),
        shadow=ShadowConfig(
            model="fraud@2",
            min_samples=5,
            labels=LabelsConfig(topic="outcomes", id="req_id", label="y", min_labels=5),
        ),
    )
    rows = [{**r, "req_id": i} for i, r in enumerate(world.rows[:20])]
    with running(create_app(server)) as srv, httpx.Client(base_url=srv.url) as client:
        scores = [
            client.post("/v1/routes/fraud/predict", json={"rows": [r]}).json()["predictions"][
                "score"
            ][0]
            for r in rows
        ]
        drain(server)
        world.log.append(
            "outcomes", [{"ts": datetime.now(UTC), "req_id": i, "y": 1.0} for i in range(20)]
        )
        deadline = time.monotonic() + 10
        while server.routes["fraud"].shadow_state.label_delta.n < 20:
            assert time.monotonic() < deadline, "labels were never joined"
            time.sleep(0.05)
        labels = client.get("/v1/routes/fraud/traffic").json()["shadow"]["labels"]
    assert labels["n"] == 20
    assert labels["primary_loss"] == pytest.approx(np.mean([1 - s for s in scores]))
    assert labels["candidate_loss"] == pytest.approx(labels["primary_loss"])  # same model


def test_a_candidate_worse_on_labels_is_rejected() -> None:
    from keel.config import LabelsConfig

    cfg = ShadowConfig(
        model="m@c",
        tolerance=0.5,
        window_s=10,
        min_samples=10,
        labels=LabelsConfig(topic="t", id="id", label="y", min_labels=10),
    )
    st = ShadowState("r", "m@2", "m@1", started_at=0.0)
    st.diff.update_many(np.full(50, 0.01))
    st.primary_loss.update_many(np.full(50, 0.2))
    st.label_delta.update_many(0.1 + np.random.default_rng(0).normal(0, 0.01, 50))
    decision = decide_shadow(cfg, st.summary(cfg, 11))
    assert decision.action == "reject" and "labelled requests" in decision.reason
    st.label_delta = Running().update_many(np.random.default_rng(1).normal(0, 0.01, 50))
    assert decide_shadow(cfg, st.summary(cfg, 11)).action == "promote"


def test_moving_the_shadow_alias_swaps_the_candidate(world, running) -> None:
    """`keel train --shadow` moves MODEL@challenger; a serving route that shadows that alias
    loads the new candidate and compares it from then on."""
    for seed in (1, 2):
        model, train = world.train(seed=seed)
        world.registry.register("fraud", model, training_set=train)
    world.registry.set_alias("fraud", "challenger", 2)
    server = make(world, ManualClock(1_000_000.0), shadow=ShadowConfig(model="fraud@challenger"))
    with running(create_app(server)):
        assert server.routes["fraud"].shadow.version == "fraud@2"
        world.registry.set_alias("fraud", "challenger", 3, reason="keel train fraud --shadow")
        deadline = time.monotonic() + 20
        while server.routes["fraud"].shadow.version != "fraud@3":
            assert time.monotonic() < deadline, "the shadow never followed its alias"
            time.sleep(0.05)
        assert server.routes["fraud"].shadow_state.candidate == "fraud@3"
        assert server.routes["fraud"].current.version == "fraud@1"


def test_keel_traffic_sets_and_shows_a_canary_ramp(world, running) -> None:
    from typer.testing import CliRunner

    from keel.cli import app

    twin, train = world.train(seed=1)
    world.registry.register("fraud", twin, training_set=train)
    world.registry.set_alias("fraud", "challenger", 2)
    server = make(world, ManualClock(0.0))
    runner = CliRunner(env={"COLUMNS": "200"})
    with running(create_app(server)) as srv:
        base = ["traffic", "set", "fraud", "--canary", "fraud@challenger", "--url", srv.url]
        set_ = runner.invoke(
            app, [*base, "--steps", "5,25,50,100", "--step-requests", "3", "--step-time", "10m"]
        )
        assert set_.exit_code == 0, set_.output
        canary = server.routes["fraud"].config.canary
        assert (canary.steps, canary.percent) == ([5, 25, 50, 100], 5)
        assert (canary.step_requests, canary.step_s) == (3, 600)
        assert "5% → 25% → 50% → 100% (step 1 of 4; 0 of 3 requests, 0 of 600 s" in set_.output
        assert "set at runtime" in set_.output
        with httpx.Client(base_url=srv.url) as client:
            client.post("/v1/routes/fraud/predict", json={"rows": [{"card_id": 0, "amount": 1}]})
        status = runner.invoke(app, ["traffic", "status", "fraud", "--url", srv.url])
        assert status.exit_code == 0 and "(step 1 of 4; 1 of 3 requests" in status.output
        bad = runner.invoke(app, [*base, "--steps", "5,x"])
        assert bad.exit_code == 2 and "--steps takes percents" in bad.output
        bad = runner.invoke(app, [*base, "--steps", "25,5,100"])
        assert bad.exit_code == 1 and "strictly increasing" in bad.output
        bad = runner.invoke(app, [*base, "--steps", "5,25,100", "--percent", "10"])
        assert bad.exit_code == 1 and "not a step of the ramp" in bad.output
        server.set_traffic("fraud", canary=msgspec.structs.replace(canary, percent=0))
        status = runner.invoke(app, ["traffic", "status", "fraud", "--url", srv.url])
        assert "5% → 25% → 50% → 100%: rolled back" in status.output


def test_a_route_shadowing_an_alias_not_set_yet_serves_and_starts_when_it_is(
    world, running
) -> None:
    """A loop's route shadows MODEL@challenger before its first retrain moves it."""
    server = make(world, ManualClock(1_000_000.0), shadow=ShadowConfig(model="fraud@challenger"))
    assert server.routes["fraud"].shadow is None and server.traffic("fraud")["shadow"] is None
    model, train = world.train(seed=2)
    world.registry.register("fraud", model, training_set=train)
    with running(create_app(server)):
        world.registry.set_alias("fraud", "challenger", 2, reason="keel train fraud")
        deadline = time.monotonic() + 20
        while server.routes["fraud"].shadow is None:
            assert time.monotonic() < deadline, "the shadow never started"
            time.sleep(0.05)
        assert server.routes["fraud"].shadow.version == "fraud@2"
        assert server.traffic("fraud")["shadow"]["candidate"] == "fraud@2"
    # Any alias not set yet waits the same way.
    other = make(world, ManualClock(1_000_000.0), shadow=ShadowConfig(model="fraud@next"))
    assert other.routes["fraud"].shadow is None


def test_a_shadow_grades_labels_by_the_monitors_rule() -> None:
    from keel.monitoring.concept import row_loss
    from keel.serving.shadowing import label_losses

    y = np.array([1.0, 0.0, 1.0, 0.0])
    primary = np.array([0.5, 0.5, 0.49, 0.1])  # a 0.5 score is a positive, for both
    candidate = np.array([0.9, 0.2, 0.51, 0.7])
    p_loss, c_loss = label_losses("error", y, primary, candidate)
    assert p_loss.tolist() == [0.0, 1.0, 1.0, 0.0] == row_loss("error", y, primary).tolist()
    assert c_loss.tolist() == [0.0, 0.0, 0.0, 1.0]
    p_abs, _ = label_losses("abs", y, primary, candidate)
    np.testing.assert_allclose(p_abs, [0.5, 0.5, 0.51, 0.1])
