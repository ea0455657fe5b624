"""The executor contract, run over every backend: local:// subprocesses and a Dask cluster.

The Dask cluster is a loopback ``LocalCluster`` started once for the module, whose worker
declares ``cpu`` and ``memory`` so that resource restrictions are exercised.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import distributed
import pytest

from keel.errors import ConfigError, ConflictError
from keel.jobs import worker
from keel.jobs.executors import Attempt, Executor, Outcome, executor_for
from keel.jobs.executors.local import LocalExecutor

TIMEOUT_S = 60.0

# A command that checkpoints on SIGTERM the way a trainer does, then exits 143.
CHECKPOINTING = """
import pathlib, signal, sys, time
def stop(signum, frame):
    pathlib.Path("checkpoint").write_text("step 7")
    print("checkpointed", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
pathlib.Path("ready").write_text("1")
while True:
    time.sleep(0.05)
"""

# Ignores SIGTERM, and says so: "survived" once it has run on after one.
STUBBORN = """
import pathlib, signal, time
signal.signal(signal.SIGTERM, lambda signum, frame: pathlib.Path("sigterm").write_text("1"))
pathlib.Path("ready").write_text("1")
while True:
    if pathlib.Path("sigterm").exists():
        pathlib.Path("survived").write_text("1")
    time.sleep(0.05)
"""

SLEEPER = """
import pathlib, time
pathlib.Path("ready").write_text("1")
time.sleep(60)
"""


def wait_for(check: Callable[[], object], what: str, timeout: float = TIMEOUT_S) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_outcome(executor: Executor, attempt: Attempt) -> Outcome:
    return wait_for(lambda: executor.poll(attempt), f"{attempt.key} to end")  # type: ignore[return-value]


@pytest.fixture(params=[pytest.param("local", id="local"), pytest.param("dask", id="dask")])
def make_executor(request: pytest.FixtureRequest) -> Iterator[Callable[[], Executor]]:
    """A factory of executors of one backend (a test may make a second, as after a restart)."""
    if request.param == "local":
        url = "local://"
    else:
        address = request.getfixturevalue("dask_address")
        url = "dask://" + address.removeprefix("tcp://")
    made: list[Executor] = []

    def make() -> Executor:
        made.append(executor_for(url))
        return made[-1]

    yield make
    for executor in made:
        executor.close()


@pytest.fixture
def executor(make_executor: Callable[[], Executor]) -> Executor:
    return make_executor()


@pytest.fixture
def new_attempt(tmp_path: Path) -> Callable[..., Attempt]:
    def make(code: str, *, requests: dict[str, float] | None = None, **env: str) -> Attempt:
        job_id = f"t{uuid.uuid4().hex[:8]}"
        return Attempt(
            job_id=job_id,
            attempt=1,
            argv=[sys.executable, "-c", code],
            env=env,
            cwd=str(tmp_path),
            requests={"cpu": 1.0} if requests is None else requests,
            run_dir=str(tmp_path / "runs" / job_id / "1"),
        )

    return make


def test_success_reports_zero_and_the_output(executor, new_attempt):
    attempt = new_attempt("print('hello from the job'); print('second line')")
    handle = executor.start(attempt)
    assert isinstance(handle, str) and handle
    outcome = wait_outcome(executor, attempt)
    assert outcome.exit_code == 0
    assert outcome.preempted is False
    assert outcome.log_tail[-2:] == ["hello from the job", "second line"]
    assert executor.poll(attempt) == outcome  # the same answer on every later poll
    assert executor.alive(attempt) is False


def test_failure_reports_its_code_and_last_lines(executor, new_attempt):
    attempt = new_attempt(
        "import sys\nfor i in range(40): print('line', i)\n"
        "print('boom', file=sys.stderr); sys.exit(3)"
    )
    executor.start(attempt)
    outcome = wait_outcome(executor, attempt)
    assert (outcome.exit_code, outcome.preempted) == (3, False)
    assert outcome.log_tail[-1] == "boom"
    assert "line 39" in outcome.log_tail
    assert "line 0" not in outcome.log_tail
    assert len(outcome.log_tail) <= 20


def test_terminate_lets_the_command_checkpoint(executor, new_attempt, tmp_path):
    attempt = new_attempt(CHECKPOINTING)
    executor.start(attempt)
    wait_for((tmp_path / "ready").exists, "the command to start")
    executor.terminate(attempt)
    outcome = wait_outcome(executor, attempt)
    assert (outcome.exit_code, outcome.preempted) == (143, True)
    assert (tmp_path / "checkpoint").read_text() == "step 7"
    assert "checkpointed" in outcome.log_tail


def test_terminate_marks_preempted_even_on_a_clean_exit(executor, new_attempt, tmp_path):
    code = CHECKPOINTING.replace("sys.exit(143)", "sys.exit(0)")
    attempt = new_attempt(code)
    executor.start(attempt)
    wait_for((tmp_path / "ready").exists, "the command to start")
    executor.terminate(attempt)
    outcome = wait_outcome(executor, attempt)
    assert (outcome.exit_code, outcome.preempted) == (0, True)


def test_kill_stops_a_command_that_ignores_sigterm(executor, new_attempt, tmp_path):
    attempt = new_attempt(STUBBORN)
    executor.start(attempt)
    wait_for((tmp_path / "ready").exists, "the command to start")
    executor.terminate(attempt)
    wait_for((tmp_path / "survived").exists, "the command to get SIGTERM and run on")
    assert executor.poll(attempt) is None
    executor.kill(attempt)
    outcome = wait_outcome(executor, attempt)
    assert outcome.exit_code == 128 + signal.SIGKILL
    assert outcome.preempted is True
    pid = worker.read_record(attempt.run_dir, worker.PID)
    wait_for(lambda: worker.process_started(pid["child_pid"]) is None, "the command to die")


def test_the_command_sees_its_job_and_thread_caps(executor, new_attempt):
    code = (
        "import json, os\nnames = ['KEEL_JOB_ID', 'KEEL_JOB_ATTEMPT', 'OMP_NUM_THREADS',"
        " 'MKL_NUM_THREADS', 'NUMEXPR_NUM_THREADS', 'CUDA_VISIBLE_DEVICES', 'EXTRA']\n"
        "print(json.dumps({n: os.environ.get(n) for n in names}))"
    )
    attempt = new_attempt(code, requests={"cpu": 1.5, "memory": 1e8}, EXTRA="given")
    executor.start(attempt)
    outcome = wait_outcome(executor, attempt)
    assert outcome.exit_code == 0, outcome.log_tail
    seen = json.loads(outcome.log_tail[-1])
    assert seen == {
        "KEEL_JOB_ID": attempt.job_id,
        "KEEL_JOB_ATTEMPT": "1",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "NUMEXPR_NUM_THREADS": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "EXTRA": "given",
    }


def test_a_command_that_cannot_start_reports_127(executor, new_attempt, tmp_path):
    attempt = dataclasses.replace(new_attempt(""), argv=[str(tmp_path / "no-such-program")])
    executor.start(attempt)
    outcome = wait_outcome(executor, attempt)
    assert outcome.exit_code == 127
    assert "cannot start" in outcome.log_tail[-1]


def test_an_attempt_is_not_started_twice(executor, new_attempt):
    attempt = new_attempt("print('once')")
    executor.start(attempt)
    wait_outcome(executor, attempt)
    with pytest.raises(ConflictError, match="already started"):
        executor.start(attempt)


def test_a_new_executor_picks_up_a_running_attempt(make_executor, new_attempt, tmp_path):
    first = make_executor()
    attempt = new_attempt(CHECKPOINTING)
    first.start(attempt)
    wait_for((tmp_path / "ready").exists, "the command to start")
    first.close()
    second = make_executor()  # as after the manager restarted
    assert second.alive(attempt) is True
    assert second.poll(attempt) is None
    second.terminate(attempt)
    outcome = wait_outcome(second, attempt)
    assert (outcome.exit_code, outcome.preempted) == (143, True)
    assert second.alive(attempt) is False


def test_local_restart_then_external_sigkill_of_the_wrapper(new_attempt, tmp_path):
    first = LocalExecutor()
    attempt = new_attempt(SLEEPER)
    first.start(attempt)
    wait_for((tmp_path / "ready").exists, "the command to start")
    wait_for(lambda: worker.read_record(attempt.run_dir, worker.PID)["child_pid"], "the pid")
    first.close()
    second = LocalExecutor()
    assert second.alive(attempt) is True
    assert second.poll(attempt) is None
    pid = worker.read_record(attempt.run_dir, worker.PID)
    os.kill(pid["worker_pid"], signal.SIGKILL)  # by someone else: no exit is recorded
    wait_for(lambda: worker.process_started(pid["worker_pid"]) is None, "the wrapper to die")
    outcome = wait_outcome(second, attempt)
    assert outcome.exit_code != 0
    assert outcome.preempted is False
    assert "no exit recorded" in outcome.log_tail[-1]
    # The command outlived its wrapper; left alone it would run beside the retry.
    wait_for(lambda: worker.process_started(pid["child_pid"]) is None, "the command to die")


def test_a_wrapper_killed_under_a_live_executor_is_reported(new_attempt, tmp_path):
    executor = LocalExecutor()
    attempt = new_attempt(SLEEPER)
    executor.start(attempt)
    wait_for((tmp_path / "ready").exists, "the command to start")
    handle = worker.read_record(attempt.run_dir, "handle")
    os.kill(handle["worker_pid"], signal.SIGKILL)
    outcome = wait_outcome(executor, attempt)
    assert (outcome.exit_code, outcome.preempted) == (128 + signal.SIGKILL, False)


@pytest.mark.parametrize(
    "url",
    [pytest.param("local://", id="local"), pytest.param("local:///", id="local-slash")],
)
def test_factory_local(url):
    assert isinstance(executor_for(url), LocalExecutor)


def test_factory_dask(dask_address):
    from keel.jobs.executors.dask import DaskExecutor

    with executor_for("dask://" + dask_address.removeprefix("tcp://")) as executor:
        assert isinstance(executor, DaskExecutor)
        assert executor.scheme == "dask"


def test_factory_refuses_ray():
    with pytest.raises(ConfigError) as info:
        executor_for("ray://h:10001")
    assert str(info.value) == (
        "jobs_url 'ray://h:10001': the scheme 'ray' is not implemented; use local:// "
        "(subprocesses on this machine) or dask://host:port (a Dask distributed scheduler)"
    )


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("garbage", id="no-scheme"),
        pytest.param("", id="empty"),
        pytest.param("local://somewhere", id="local-with-host"),
        pytest.param("dask://", id="dask-without-host"),
        pytest.param("dask://h:notaport", id="dask-bad-port"),
    ],
)
def test_factory_refuses_garbage(url):
    with pytest.raises(ConfigError, match="jobs_url"):
        executor_for(url)


# -- Dask: requests against what the workers declare ----------------------------------------


@pytest.fixture
def dask_executor(dask_address: str) -> Iterator[Executor]:
    with executor_for("dask://" + dask_address.removeprefix("tcp://")) as executor:
        yield executor


def test_dask_refuses_a_resource_no_worker_declares(dask_executor, new_attempt):
    attempt = new_attempt("print(1)", requests={"cpu": 1.0, "nvidia.com/gpu": 1.0})
    with pytest.raises(ConfigError, match=r"asks \['nvidia.com/gpu'\] but no worker"):
        dask_executor.start(attempt)


def test_dask_refuses_more_than_any_worker_has(dask_executor, new_attempt):
    attempt = new_attempt("print(1)", requests={"cpu": 64.0})
    with pytest.raises(ConfigError, match=r"no worker of the Dask cluster .* has that much"):
        dask_executor.start(attempt)


def worker_task_states(client: distributed.Client, key: str) -> list[str | None]:
    """The state each Dask worker has the task ``key`` in (None: it has not got it)."""

    def state(dask_worker: distributed.Worker) -> str | None:
        task = dask_worker.state.tasks.get(key)
        return None if task is None else task.state

    return list(client.run(state).values())


def test_dask_queues_what_does_not_fit_and_kills_it_unstarted(
    dask_executor, new_attempt, tmp_path, dask_address
):
    running = new_attempt(SLEEPER, requests={"cpu": 3.0})
    dask_executor.start(running)
    wait_for((tmp_path / "ready").exists, "the first command to start")
    queued = new_attempt("print('ran')", requests={"cpu": 3.0})  # 3 + 3 > the worker's 4
    dask_executor.start(queued)
    # The worker has a free thread, so only the request keeps the task from running: it is
    # held ("constrained") until resources free up.
    with distributed.Client(dask_address, set_as_default=False) as client:
        wait_for(
            lambda: worker_task_states(client, queued.key) == ["constrained"],
            "the worker to hold the second task for resources",
        )
    assert dask_executor.alive(queued) is True
    assert dask_executor.poll(queued) is None
    assert worker.read_record(queued.run_dir, worker.PID) is None
    dask_executor.kill(queued)
    outcome = wait_outcome(dask_executor, queued)
    assert (outcome.exit_code, outcome.preempted) == (128 + signal.SIGKILL, True)
    assert "ran" not in outcome.log_tail
    dask_executor.kill(running)
    assert wait_outcome(dask_executor, running).exit_code == 128 + signal.SIGKILL


# -- the wrapper on its own -----------------------------------------------------------------


def test_a_claimed_run_folder_is_not_run_again(tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-c", "print('ran')"]
    assert worker.run_attempt(run_dir, argv, {}, tmp_path)["exit_code"] == 0
    (run_dir / worker.EXIT).unlink()  # as if the process running it died before recording
    again = worker.run_attempt(run_dir, argv, {}, tmp_path)
    assert again["exit_code"] == -1
    assert worker.log_tail(run_dir).count("ran") == 1


def test_a_stop_before_the_start_means_no_start(tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-c", "print('ran')"]
    record = worker.run_attempt(run_dir, argv, {}, tmp_path, should_stop=lambda: True)
    assert (record["exit_code"], record["preempted"]) == (143, True)
    assert "ran" not in worker.log_tail(run_dir)


def test_the_wrapper_runs_as_a_module(tmp_path):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-c", "import sys; print('via -m'); sys.exit(5)"]
    done = subprocess.run(
        [sys.executable, "-m", "keel.jobs.worker", str(run_dir), "--", *argv], timeout=60
    )
    assert done.returncode == 5  # the wrapper exits with the command's code
    record = worker.read_record(run_dir, worker.EXIT)
    assert (record["exit_code"], record["preempted"]) == (5, False)
    pid = worker.read_record(run_dir, worker.PID)
    assert pid["child_pid"] not in (None, pid["worker_pid"])
    assert worker.log_tail(run_dir) == ["via -m"]
