"""The job manager end to end: jobs stored, admitted by quota and priority, run as real
subprocesses, preempted with SIGTERM, requeued, retried, recovered after a restart."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgspec
import pytest

from keel.errors import ConflictError, ValidationError
from keel.jobs.executors import executor_for
from keel.jobs.manager import JobManager, JobSpec, cancel, submit
from keel.jobs.spec import JobsConfig
from keel.jobs.store import JobState, JobStore

PREEMPTIBLE = Path(__file__).parents[1] / "training" / "preemptible.py"


def config(cpu: float = 2, **extra: object) -> JobsConfig:
    return msgspec.convert(
        {
            "flavors": [{"name": "default"}],
            "cluster_queues": [
                {
                    "name": "main",
                    "preemption": {"within_cluster_queue": "LowerPriority"},
                    "resource_groups": [
                        {
                            "covered": ["cpu", "memory"],
                            "flavors": [
                                {
                                    "name": "default",
                                    "resources": {
                                        "cpu": {"nominal": cpu},
                                        "memory": {"nominal": "8Gi"},
                                    },
                                }
                            ],
                        }
                    ],
                }
            ],
            "local_queues": [{"name": "default", "cluster_queue": "main"}],
            **extra,
        },
        JobsConfig,
    )


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(f"sqlite:///{tmp_path}/registry.db")


def manager(store: JobStore, tmp_path: Path, cfg: JobsConfig | None = None, **kw) -> JobManager:
    return JobManager(
        cfg or config(), store, executor_for("local://"), run_root=tmp_path / "runs", **kw
    )


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def until(mgr: JobManager, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mgr.tick()
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_a_job_runs_and_its_history_is_kept(store: JobStore, tmp_path: Path) -> None:
    mgr = manager(store, tmp_path)
    job = mgr.submit(
        JobSpec(name="hello", argv=py("print('hello from a job')"), requests={"cpu": 1})
    )
    done = mgr.wait(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED and done.exit_code == 0 and done.attempt == 1
    assert "hello from a job" in "\n".join(done.log_tail)
    assert [e.to_state for e in store.events(job.id)] == [
        "pending",
        "admitted",
        "running",
        "succeeded",
    ]
    assert done.admission["cluster_queue"] == "main"
    assert done.admission["flavors"] == {"cpu": "default"}  # only what it asked for
    mgr.close()


def test_bad_jobs_are_refused_and_nothing_is_stored(store: JobStore, tmp_path: Path) -> None:
    mgr = manager(store, tmp_path)
    with pytest.raises(ValidationError, match=r"unknown queue 'defualt'.*did you mean 'default'"):
        mgr.submit(JobSpec(name="a", argv=["true"], queue="defualt"))
    with pytest.raises(ValidationError, match="unknown priority class 'urgentt'"):
        mgr.submit(JobSpec(name="a", argv=["true"], priority="urgentt"))
    with pytest.raises(ValidationError, match="cpu request"):
        mgr.submit(JobSpec(name="a", argv=["true"], requests={"cpu": "lots"}))
    with pytest.raises(ValidationError, match="no command"):
        mgr.submit(JobSpec(name="a", argv=[]))
    assert store.list() == []
    mgr.close()


def test_a_job_larger_than_any_flavor_waits_with_the_reason(
    store: JobStore, tmp_path: Path
) -> None:
    mgr = manager(store, tmp_path)
    job = mgr.submit(JobSpec(name="huge", argv=["true"], requests={"cpu": 64}))
    mgr.tick()
    stored = store.get(job.id)
    assert stored.state is JobState.PENDING
    assert "cpu" in stored.reason and "64" in stored.reason
    mgr.close()


def test_quota_admits_one_then_the_next(store: JobStore, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    mgr = manager(store, tmp_path)
    wait_for_gate = py(
        f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.02)"
    )
    first = mgr.submit(JobSpec(name="first", argv=wait_for_gate, requests={"cpu": 2}))
    second = mgr.submit(JobSpec(name="second", argv=["true"], requests={"cpu": 2}))
    until(mgr, lambda: store.get(first.id).state is JobState.RUNNING)
    mgr.tick()
    waiting = store.get(second.id)
    assert waiting.state is JobState.PENDING
    assert "insufficient unused quota for cpu in flavor default, 2 more needed" in waiting.reason
    gate.touch()
    assert mgr.wait(second.id, timeout=60).state is JobState.SUCCEEDED
    assert store.get(first.id).state is JobState.SUCCEEDED
    mgr.close()


def test_failures_are_retried_by_policy_then_fail_with_the_last_lines(
    store: JobStore, tmp_path: Path
) -> None:
    mgr = manager(store, tmp_path)
    marker = tmp_path / "tried"
    flaky = py(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(marker)!r})\n"
        "if not p.exists():\n    p.touch(); print('first try fails'); sys.exit(3)\n"
        "print('second try works')"
    )
    job = mgr.submit(JobSpec(name="flaky", argv=flaky, max_retries=1))
    done = mgr.wait(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED and done.attempt == 2 and done.failures == 1

    broken = mgr.submit(
        JobSpec(name="broken", argv=py("print('disk on fire'); raise SystemExit(2)"), max_retries=1)
    )
    done = mgr.wait(broken.id, timeout=60)
    assert done.state is JobState.FAILED and done.attempt == 2 and done.failures == 2
    assert done.exit_code == 2 and "disk on fire" in done.reason
    mgr.close()


def test_cancel_pending_and_running(store: JobStore, tmp_path: Path) -> None:
    mgr = manager(store, tmp_path)
    sleeper = mgr.submit(
        JobSpec(name="sleeper", argv=py("import time; time.sleep(120)"), requests={"cpu": 2})
    )
    queued = mgr.submit(JobSpec(name="queued", argv=["true"], requests={"cpu": 2}))
    until(mgr, lambda: store.get(sleeper.id).state is JobState.RUNNING)
    assert cancel(store, queued.id, now=time.time()).state is JobState.CANCELLED
    assert cancel(store, sleeper.id, now=time.time()).state is JobState.CANCELLING
    until(mgr, lambda: store.get(sleeper.id).state is JobState.CANCELLED)
    with pytest.raises(ConflictError, match="already cancelled"):
        cancel(store, sleeper.id, now=time.time())
    # Its quota is free again: a new job runs.
    after = mgr.submit(JobSpec(name="after", argv=["true"], requests={"cpu": 2}))
    assert mgr.wait(after.id, timeout=60).state is JobState.SUCCEEDED
    mgr.close()


def test_one_manager_holds_the_lease(store: JobStore, tmp_path: Path) -> None:
    a, b = manager(store, tmp_path), manager(store, tmp_path)
    assert a.tick().leader
    assert not b.tick().leader
    a.close()  # gives the lease back
    assert b.tick().leader
    b.close()


def test_a_restarted_manager_reattaches_and_runs_nothing_twice(
    store: JobStore, tmp_path: Path
) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs.txt"
    argv = py(
        "import pathlib, time\n"
        f"with open({str(runs)!r}, 'a') as f: f.write('run\\n')\n"
        f"while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.02)"
    )
    first = manager(store, tmp_path)
    job = first.submit(JobSpec(name="survivor", argv=argv))
    until(first, lambda: runs.exists())
    # The manager dies without a word (no close): a new one, on the same host, takes over.
    second = manager(store, tmp_path, holder=first.holder)
    second.tick()
    assert store.get(job.id).state is JobState.RUNNING
    gate.touch()
    done = second.wait(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED and done.attempt == 1
    assert runs.read_text().count("run") == 1
    second.close()


@pytest.mark.slow
def test_a_training_job_preempted_by_a_fine_tune_resumes_to_the_same_model(
    store: JobStore, tmp_path: Path
) -> None:
    """The low-priority training run gets SIGTERM when the fine-tune arrives, checkpoints,
    is requeued, resumes from its checkpoint once the fine-tune is done, and ends with the
    bytes of a run never interrupted."""
    reference = tmp_path / "reference.bin"
    mgr = manager(store, tmp_path)
    alone = mgr.submit(
        JobSpec(
            name="reference",
            kind="train",
            argv=[
                sys.executable,
                str(PREEMPTIBLE),
                "torch",
                str(tmp_path / "ref-ckpt"),
                str(reference),
            ],
            requests={"cpu": 2},
        )
    )
    assert mgr.wait(alone.id, timeout=300).state is JobState.SUCCEEDED

    out = tmp_path / "resumed.bin"
    train = mgr.submit(
        JobSpec(
            name="train",
            kind="train",
            argv=[sys.executable, str(PREEMPTIBLE), "torch", str(tmp_path / "ckpt"), str(out)],
            requests={"cpu": 2},
        )
    )
    log = tmp_path / "runs" / train.id / "1" / "log"
    until(mgr, lambda: log.exists() and "ready" in log.read_text())
    fine_tune = mgr.submit(
        JobSpec(
            name="fine-tune",
            kind="fine-tune",
            argv=py("print('tables refreshed')"),
            requests={"cpu": 2},
        )
    )
    assert store.get(fine_tune.id).priority > store.get(train.id).priority
    until(mgr, lambda: store.get(train.id).state is JobState.PREEMPTING)
    assert mgr.wait(fine_tune.id, timeout=120).state is JobState.SUCCEEDED
    done = mgr.wait(train.id, timeout=300)
    assert done.state is JobState.SUCCEEDED
    assert done.preemptions == 1 and done.attempt == 2 and done.failures == 0
    states = [e.to_state for e in store.events(train.id)]
    assert states == [
        "pending",
        "admitted",
        "running",
        "preempting",
        "pending",
        "admitted",
        "running",
        "succeeded",
    ]
    # The first attempt stopped at a checkpoint; the second resumed from it.
    first_log = log.read_text()
    assert "preempted" in first_log
    second_log = (tmp_path / "runs" / train.id / "2" / "log").read_text()
    assert "ready 0" not in second_log and "ready" in second_log
    assert out.read_bytes() == reference.read_bytes()
    mgr.close()


@pytest.mark.parametrize(
    "backend", [pytest.param("local", id="local"), pytest.param("dask", id="dask")]
)
def test_the_same_jobs_run_on_local_and_on_a_dask_cluster(
    store: JobStore, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """One definition, two executors: quota admits one job at a time either way, and a
    preempted job is stopped and requeued through the cluster as through a subprocess."""
    url = "local://"
    if backend == "dask":
        url = "dask://" + request.getfixturevalue("dask_address").removeprefix("tcp://")
    mgr = JobManager(config(), store, executor_for(url), run_root=tmp_path / "runs")
    gate = tmp_path / "gate"
    slow = py(
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
        "print('working', flush=True)\n"
        f"while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.02)"
    )
    low = mgr.submit(JobSpec(name="low", kind="backfill", argv=slow, requests={"cpu": 2}))
    until(mgr, lambda: store.get(low.id).state is JobState.RUNNING)
    high = mgr.submit(
        JobSpec(name="high", kind="fine-tune", argv=py("print('urgent')"), requests={"cpu": 2})
    )
    assert mgr.wait(high.id, timeout=120).state is JobState.SUCCEEDED
    requeued = store.get(low.id)
    assert requeued.preemptions == 1
    gate.touch()
    done = mgr.wait(low.id, timeout=120)
    assert done.state is JobState.SUCCEEDED and done.attempt == 2
    mgr.close()


def test_a_job_admitted_but_never_started_before_a_restart_starts_once(
    store: JobStore, tmp_path: Path
) -> None:
    first = manager(store, tmp_path)
    job = first.submit(JobSpec(name="orphan", argv=py("print('ran')")))
    # The scheduler admitted it and died before starting it.
    store.move(
        job.id,
        JobState.ADMITTED,
        now=time.time(),
        admission={"cluster_queue": "main", "flavors": {"cpu": "default"}, "at": time.time()},
    )
    second = manager(store, tmp_path, holder=first.holder)
    done = second.wait(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED and done.attempt == 1
    states = [e.to_state for e in store.events(job.id)]
    assert states == ["pending", "admitted", "pending", "admitted", "running", "succeeded"]
    second.close()


def test_a_job_submitted_while_the_manager_recovers_is_not_lost(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgr = manager(store, tmp_path)
    read = store.unfinished

    def unfinished_then_a_submit() -> list:
        rows = read()
        submit(config(), store, JobSpec(name="late", argv=py("print('not lost')")), now=time.time())
        return rows

    monkeypatch.setattr(store, "unfinished", unfinished_then_a_submit)
    mgr.tick()  # recovers: reads the jobs, while another process submits one
    monkeypatch.setattr(store, "unfinished", read)
    (late,) = store.list()
    assert mgr.wait(late.id, timeout=60).state is JobState.SUCCEEDED
    mgr.close()
