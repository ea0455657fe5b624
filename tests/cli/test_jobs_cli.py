"""``keel jobs …`` and ``keel queues`` against a real example project: jobs stored in its
registry database, run as local subprocesses by a manager in the CLI's process."""

from __future__ import annotations

import itertools
import re
import shlex
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from keel.cli import app
from keel.jobs.devices import FakeSource, nvidia_device_count
from keel.jobs.spec import UtilizationConfig
from keel.jobs.store import JobRecord, JobState
from keel.jobs.utilization import UtilizationWatch, read_alerts
from keel.project import Project

runner = CliRunner()
PRINT_42 = ["--", sys.executable, "-c", "print(42)"]


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("KEEL_CONFIG", "KEEL_LOG_URL", "KEEL_DATA_DIR", "KEEL_REGISTRY_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # wide tables: values are not folded
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    return tmp_path / "proj"


def keel(project_dir: Path, *args: str) -> Result:
    return runner.invoke(app, ["-c", str(project_dir / "keel.toml"), *args])


def submitted(result: Result, *, exit_code: int = 0) -> str:
    """The id ``keel jobs submit`` printed."""
    assert result.exit_code == exit_code, result.output
    found = re.search(r"submitted (\S+) to queue", result.output)
    assert found, result.output
    return found.group(1)


def cells(table: str) -> list[list[str]]:
    """The body rows of the first rich table in ``table``, as stripped cells."""
    body = table.split("┡")[1].split("└")[0]
    return [[c.strip() for c in line.split("│")[1:-1]] for line in body.splitlines()[1:]]


def stored(project_dir: Path, job_id: str) -> JobRecord:
    return Project.load(project_dir / "keel.toml").jobs.get(job_id)


def test_the_templates_jobs_section_loads(project_dir: Path) -> None:
    jobs = Project.load(project_dir / "keel.toml").settings.jobs
    assert [(q.name, q.cohort) for q in jobs.cluster_queues] == [
        ("training", "keel"),
        ("serving-jobs", "keel"),
    ]
    assert {q.name: q.cluster_queue for q in jobs.local_queues} == {
        "default": "training",
        "fresh": "serving-jobs",
    }
    assert (jobs.default_queue, jobs.max_retries) == ("default", 2)
    assert jobs.cluster_queue_of("fresh").name == "serving-jobs"


def test_submit_stores_a_pending_job_and_prints_its_id(project_dir: Path) -> None:
    job_id = submitted(keel(project_dir, "jobs", "submit", "command", "--cpu", "1", *PRINT_42))
    job = stored(project_dir, job_id)
    assert job.state is JobState.PENDING
    assert job.argv == [sys.executable, "-c", "print(42)"]  # the program too, not only its args
    assert job.name == Path(sys.executable).name and job.id.startswith(f"{job.name}-")
    assert job.requests == {"cpu": 1.0}
    assert (job.queue, job.priority_class) == ("default", "training")


def test_a_job_run_to_the_end_is_listed_shown_and_its_log_printed(project_dir: Path) -> None:
    result = keel(project_dir, "jobs", "submit", "command", "--cpu", "1", "--wait", *PRINT_42)
    job_id = submitted(result)
    assert f"{job_id} succeeded" in result.output
    assert stored(project_dir, job_id).state is JobState.SUCCEEDED

    listed = keel(project_dir, "jobs", "list")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if job_id in line)
    assert "succeeded" in row and "command" in row

    shown = keel(project_dir, "jobs", "show", job_id[:-2])  # a unique prefix will do
    assert shown.exit_code == 0, shown.output
    assert shlex.join([sys.executable, "-c", "print(42)"]) in shown.output
    history = cells(shown.output.split("history")[1].split("last log lines")[0])
    assert [(row[1], row[2]) for row in history] == [
        ("—", "pending"),
        ("pending", "admitted"),
        ("admitted", "running"),
        ("running", "succeeded"),
    ]
    assert shown.output.split("last log lines")[1].split() == ["42"]

    logs = keel(project_dir, "jobs", "logs", job_id)
    assert logs.exit_code == 0, logs.output
    assert logs.output == "42\n"


def test_wait_exits_1_when_the_job_fails(project_dir: Path) -> None:
    fails = ["--", sys.executable, "-c", "print('giving up'); raise SystemExit(3)"]
    result = keel(project_dir, "jobs", "submit", "command", "--retries", "0", "--wait", *fails)
    job_id = submitted(result, exit_code=1)
    assert (
        f"{job_id} failed: attempt 1 failed (exit 3), no retries left: giving up" in result.output
    )
    assert stored(project_dir, job_id).exit_code == 3


def test_queues_show_the_cluster_queues_and_why_a_job_waits(project_dir: Path) -> None:
    before = keel(project_dir, "queues")
    assert before.exit_code == 0, before.output
    assert re.search(r"training\s+│\s+keel", before.output)
    assert re.search(r"serving-jobs\s+│\s+keel", before.output)
    assert "pending" in before.output and "why" not in before.output  # no waiting job

    job_id = submitted(keel(project_dir, "jobs", "submit", "command", "--cpu", "64", *PRINT_42))
    ran = keel(project_dir, "jobs", "run", "--seconds", "1")  # one scheduling cycle at least
    assert ran.exit_code == 0, ran.output
    job = stored(project_dir, job_id)
    assert job.state is JobState.PENDING
    assert "insufficient quota for cpu" in job.reason

    after = keel(project_dir, "queues")
    assert after.exit_code == 0, after.output
    waits = after.output.split("why")[1]
    row = next(line for line in waits.splitlines() if job_id in line)
    assert "insufficient quota for cpu" in row and "64 >" in row


def test_cancel_a_pending_job(project_dir: Path) -> None:
    job_id = submitted(keel(project_dir, "jobs", "submit", "command", *PRINT_42))
    result = keel(project_dir, "jobs", "cancel", job_id)
    assert result.exit_code == 0, result.output
    assert f"{job_id} cancelled" in result.output
    assert stored(project_dir, job_id).state is JobState.CANCELLED
    again = keel(project_dir, "jobs", "cancel", job_id)
    assert again.exit_code == 1
    assert "already cancelled" in again.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["command", "-q", "defualt", *PRINT_42],
            ["unknown queue 'defualt'", "did you mean 'default'"],
            id="unknown-queue",
        ),
        pytest.param(
            ["command", "-p", "trainig", *PRINT_42],
            ["unknown priority class 'trainig'", "did you mean 'training'"],
            id="unknown-priority-class",
        ),
        pytest.param(
            ["command", "--request", "gpu", *PRINT_42],
            ["--request 'gpu'", "NAME=QUANTITY"],
            id="request-without-equals",
        ),
        pytest.param(["bogus"], ["unknown job kind 'bogus'"], id="unknown-kind"),
        pytest.param(["command"], ["a command job runs what follows --"], id="no-command"),
        pytest.param(["train"], ["a train job needs a target"], id="train-without-model"),
        pytest.param(
            ["materialize", "fraud"], ["works on every feature view"], id="materialize-target"
        ),
        pytest.param(
            ["train", "fraud", "--", "extra"], ["unexpected arguments 'extra'"], id="extra-args"
        ),
    ],
)
def test_bad_input_is_refused_in_one_line_and_stores_nothing(
    project_dir: Path, args: list[str], expected: list[str]
) -> None:
    result = keel(project_dir, "jobs", "submit", *args)
    assert result.exit_code == 1, result.output
    for text in expected:
        assert text in result.output
    assert "Traceback" not in result.output
    assert Project.load(project_dir / "keel.toml").jobs.list() == []


def test_an_unknown_state_is_refused(project_dir: Path) -> None:
    result = keel(project_dir, "jobs", "list", "--state", "done")
    assert result.exit_code == 1
    assert "unknown state 'done'" in result.output and "succeeded" in result.output


def test_accelerators_on_this_machine(project_dir: Path) -> None:
    result = keel(project_dir, "jobs", "accelerators", "--seconds", "0.2")
    assert result.exit_code == 0, result.output
    if nvidia_device_count():
        assert re.search(r"device 0 \(.+\)\s+│\s+\d+%\s+│\s+\d+%", result.output), result.output
        assert "no accelerator" not in result.output
    else:
        assert result.output.startswith("no accelerator: ")


def test_run_starts_a_submitted_job(project_dir: Path) -> None:
    job_id = submitted(keel(project_dir, "jobs", "submit", "command", *PRINT_42))
    for _ in range(10):  # a slow machine may need more than one run to see it end
        ran = keel(project_dir, "jobs", "run", "--seconds", "2", "--interval", "0.05")
        assert ran.exit_code == 0, ran.output
        if stored(project_dir, job_id).state.finished:
            break
    assert stored(project_dir, job_id).state is JobState.SUCCEEDED
    if nvidia_device_count():
        assert "watching accelerator utilization" in ran.output
    else:
        assert "utilization watch off — no accelerator: " in ran.output
    assert keel(project_dir, "jobs", "logs", job_id).output == "42\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_accelerator(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One idle fake device instead of NVML; each sample is 10 s after the previous, so the
    30 s window is full (and alerts) at the fourth sample. Returns what the CLI passed in."""
    passed: dict[str, Any] = {}

    def open_watch(config: UtilizationConfig, **kwargs: Any) -> UtilizationWatch:
        passed.update(kwargs, config=config)
        ticks = itertools.count(1_000_000.0, 10.0)
        return UtilizationWatch(
            FakeSource({0: 0.2}),
            UtilizationConfig(threshold=0.6, window_s=30, interval_s=0.02),
            clock=lambda: next(ticks),
            **kwargs,
        )

    monkeypatch.setattr("keel.jobs.utilization.open_watch", open_watch)
    return passed


def test_run_watches_serves_gauges_and_logs_alerts(
    project_dir: Path, fake_accelerator: dict[str, Any]
) -> None:
    port = _free_port()
    scraped: list[str] = []

    def scrape() -> None:
        for _ in range(500):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    body = r.read().decode()
            except (urllib.error.URLError, ConnectionError):
                body = ""
            if 'keel_accelerator_utilization{device="0"' in body:
                scraped.append(body)
                return
            time.sleep(0.01)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    ran = keel(project_dir, "jobs", "run", "--seconds", "2", "--metrics-port", str(port))
    scraper.join()
    assert ran.exit_code == 0, ran.output
    assert f"http://127.0.0.1:{port}/metrics" in ran.output
    assert "watching accelerator utilization" in ran.output
    assert scraped, "the gauges were never served"
    assert 'keel_accelerator_utilization{device="0",uuid="GPU-fake-0"} 0.2' in scraped[0]
    assert fake_accelerator["jobs"]() == {}  # asks the manager; nothing runs now
    assert (
        fake_accelerator["config"]
        == Project.load(project_dir / "keel.toml").settings.jobs.utilization
    )

    alerts = read_alerts(Project.load(project_dir / "keel.toml").log)
    assert [(a.kind, a.name) for a in alerts] == [("device", "0")]  # once per idle episode
    assert alerts[0].mean == pytest.approx(0.2)

    shown = keel(project_dir, "jobs", "accelerators", "--seconds", "0")
    assert shown.exit_code == 0, shown.output
    assert re.search(r"device 0 \(Fake GPU\)\s+│\s+20%\s+│\s+20%\s+│\s+0 B / 80.0 GB", shown.output)
    assert "last utilization alerts" in shown.output
    assert alerts[0].message in shown.output


def test_ctrl_c_stops_the_scheduler_and_the_watch(
    project_dir: Path, fake_accelerator: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from keel.jobs.manager import JobManager

    ticks = itertools.count()
    tick = JobManager.tick

    def interrupted(self: JobManager) -> Any:
        if next(ticks) == 3:
            raise KeyboardInterrupt
        return tick(self)

    monkeypatch.setattr(JobManager, "tick", interrupted)
    ran = keel(project_dir, "jobs", "run")  # no --seconds: only Ctrl-C ends it
    assert ran.exit_code == 0, ran.output
    assert ran.output.rstrip().endswith("stopped")
    assert not [t for t in threading.enumerate() if t.name == "keel-utilization"]
    store = Project.load(project_dir / "keel.toml").jobs
    assert store.acquire_lease("another", now=time.time(), ttl=1)  # the lease was given back


def test_submit_materialize_runs_keel_on_the_project(project_dir: Path) -> None:
    assert keel(project_dir, "apply").exit_code == 0
    result = keel(project_dir, "jobs", "submit", "materialize", "--wait")
    job_id = submitted(result)
    job = stored(project_dir, job_id)
    assert job.state is JobState.SUCCEEDED, keel(project_dir, "jobs", "show", job_id).output
    config = str((project_dir / "keel.toml").resolve())
    assert job.argv == [sys.executable, "-m", "keel", "-c", config, "features", "materialize"]
    assert (job.kind, job.priority_class) == ("materialize", "backfill")
    assert "user_activity: 0 events" in keel(project_dir, "jobs", "logs", job_id).output
