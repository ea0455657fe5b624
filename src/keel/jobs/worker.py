"""The attempt wrapper: run one attempt's command and record in its run folder how it ended.

Both executors run a command through this module, so the files below mean the same thing
whether the command ran under ``local://`` or on a Dask worker. They are what lets a manager
that restarts lose no job and run none twice: everything it needs to know about an attempt is
in the attempt's folder, never only in a process's memory.

Status files in ``RUN_DIR`` (each JSON record is written whole, tmp + rename, so a reader sees
either nothing or a complete record):

``log``
    The command's stdout and stderr, appended; lines starting ``[keel]`` are the wrapper's.
``pid``
    ``{"worker_pid", "worker_started", "child_pid", "child_started", "host", "started_at"}``.
    Claimed exclusively before the command starts (``child_pid`` null) and rewritten with the
    child's pid right after spawning; ``*_started`` are process start times
    (:func:`process_started`) that tell a live process from a later one given the same pid.
``terminated``
    ``{"requested_at", "by"}``: a graceful stop was asked (by ``Executor.terminate``, by
    SIGTERM to the wrapper, or by ``should_stop``), so the outcome is ``preempted``.
``exit``
    ``{"exit_code", "preempted", "ended_at", "recorded_by"}``, written once: the first record
    wins. ``exit_code`` is the command's code, ``128 + N`` when signal N ended it, ``127`` when
    it could not start, ``-1`` when the wrapper died without recording it (then
    ``recorded_by`` is ``"executor"`` and a ``note`` says why).

Run ``python -m keel.jobs.worker RUN_DIR -- ARGV...`` (the command gets the caller's
environment), or call :func:`run_attempt` in-process (what a Dask task does). This module
imports only the standard library, so that ``local://`` can run it as a file
(``python -P .../keel/jobs/worker.py RUN_DIR -- ARGV...``) without importing the keel package,
which would add most of its start-up time to every attempt.

Example
-------
>>> import sys, tempfile
>>> run_dir = tempfile.mkdtemp()
>>> run_attempt(run_dir, [sys.executable, "-c", "print('hi')"], {}, ".")["exit_code"]
0
>>> log_tail(run_dir)
['hi']
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT",
    "LOG",
    "PID",
    "TERMINATED",
    "attempt_env",
    "current_job",
    "job_in",
    "log_tail",
    "main",
    "mark_terminated",
    "process_started",
    "read_record",
    "record_death",
    "run_attempt",
    "tag_with_job",
]

LOG = "log"
HANDLE = "handle"  # the executor's record of the start, written before start() returns
PID = "pid"
EXIT = "exit"
TERMINATED = "terminated"

GPU = "nvidia.com/gpu"
# Libraries that size a thread pool from the machine's core count unless told otherwise.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024
_NOT_STARTED = 127


def attempt_env(
    job_id: str, attempt: int, env: Mapping[str, str], requests: Mapping[str, float]
) -> dict[str, str]:
    """The environment an attempt adds over the executing process's own.

    Thread pools are capped at the cpu request (rounded up, at least 1), so a 2-cpu job does
    not start one thread per core of a 64-core machine; a job that asks no GPU sees none.
    The attempt's own ``env`` wins over those caps; ``KEEL_JOB_ID`` and ``KEEL_JOB_ATTEMPT``
    always name the attempt.

    Example
    -------
    >>> e = attempt_env("j1", 2, {}, {"cpu": 1.5})
    >>> e["OMP_NUM_THREADS"], e["CUDA_VISIBLE_DEVICES"], e["KEEL_JOB_ATTEMPT"]
    ('2', '', '2')
    """
    extra: dict[str, str] = {}
    cpu = requests.get("cpu")
    if cpu is not None:
        threads = str(max(1, math.ceil(cpu)))
        extra.update(dict.fromkeys(THREAD_VARIABLES, threads))
    if requests.get(GPU, 0) <= 0:
        extra["CUDA_VISIBLE_DEVICES"] = ""
    extra.update(env)
    extra["KEEL_JOB_ID"] = job_id
    extra["KEEL_JOB_ATTEMPT"] = str(attempt)
    return extra


def current_job() -> str | None:
    """The id of the job this process runs as (``KEEL_JOB_ID``), or None outside a job."""
    return os.environ.get("KEEL_JOB_ID") or None


def tag_with_job(reason: str) -> str:
    """``reason`` naming the job this process runs as, when it runs as one: what a
    registry change made by a job says, so the job's submitter can find its result.

    Example
    -------
    >>> tag_with_job("keel train fraud")  # not inside a job
    'keel train fraud'
    """
    job = current_job()
    return f"{reason} [job {job}]" if job else reason


def job_in(reason: str | None) -> str | None:
    """The job id :func:`tag_with_job` put in ``reason``, if any.

    >>> job_in("keel train fraud [job j-42]")
    'j-42'
    """
    if not reason or not reason.endswith("]") or " [job " not in reason:
        return None
    return reason.rsplit(" [job ", 1)[1][:-1]


def process_started(pid: int | None) -> float | None:
    """When process ``pid`` started (an opaque number), or None if it is not running.

    Two reads of the same process give the same number; a later process given the same pid
    gives another, which is how a pid file is told from a stale one. A zombie counts as ended.
    """
    if not pid or pid <= 0:
        return None
    try:
        # /proc is read directly on Linux: cheaper than psutil and no dependency.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = None
    if stat is not None:
        fields = stat[stat.rindex(")") + 2 :].split()
        return None if fields[0] in ("Z", "X") else float(fields[19])
    import psutil  # other systems (the jobs extra)

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except psutil.Error:
        return None


def same_process(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` is running and is the process that started at ``started``."""
    now = process_started(pid)
    return now is not None and started is not None and abs(now - started) < 1e-3


def read_record(run_dir: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The JSON record ``name`` (``pid``, ``exit``, ``terminated``…) of a run folder, or None."""
    try:
        return json.loads(Path(run_dir, name).read_bytes())
    except FileNotFoundError:
        return None


def write_record(
    run_dir: str | os.PathLike[str], name: str, record: Mapping[str, Any], *, once: bool = False
) -> bool:
    """Write a JSON record whole (tmp + rename). With ``once``, an existing record is kept and
    False returned: the first writer wins, without a window where two both think they won."""
    final = Path(run_dir, name)
    tmp = final.with_name(f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(dict(record)))
    try:
        if not once:
            os.replace(tmp, final)
            return True
        try:
            # link(2) fails if the name exists, so it claims and publishes in one step.
            os.link(tmp, final)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def mark_terminated(run_dir: str | os.PathLike[str], by: str) -> None:
    """Record that a graceful stop was asked, so the outcome is ``preempted`` however the
    command then exits (the first request's time is kept)."""
    write_record(run_dir, TERMINATED, {"requested_at": time.time(), "by": by}, once=True)


def log_tail(run_dir: str | os.PathLike[str], lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of the attempt's log (empty if it has none)."""
    try:
        with open(Path(run_dir, LOG), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def append_log(run_dir: str | os.PathLike[str], message: str) -> None:
    """Add one ``[keel]`` line to the attempt's log."""
    with open(Path(run_dir, LOG), "a", encoding="utf-8") as f:
        f.write(f"[keel] {message}\n")


def record_death(run_dir: str | os.PathLike[str], exit_code: int, note: str) -> dict[str, Any]:
    """Record the exit of an attempt whose wrapper ended without recording one.

    The note goes to the log too. Returns the record that stands: an exit the wrapper wrote
    meanwhile wins over this one.
    """
    record = {
        "exit_code": exit_code,
        "preempted": read_record(run_dir, TERMINATED) is not None,
        "ended_at": time.time(),
        "recorded_by": "executor",
        "note": note,
    }
    if write_record(run_dir, EXIT, record, once=True):
        append_log(run_dir, note)
        return record
    return read_record(run_dir, EXIT) or record


class _Run:
    """One run of a command, stoppable from a signal handler or from a polling loop.

    Flags, not locks: a signal handler runs between bytecodes of the thread it interrupts and
    would deadlock on a lock that thread holds. The checks are ordered so that a SIGTERM at
    any point is forwarded exactly once.
    """

    def __init__(self, run_dir: Path, new_session: bool) -> None:
        self.run_dir = run_dir
        self.new_session = new_session
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_requested = False
        self.forwarded = False

    def request_stop(self, by: str) -> None:
        if self.stop_requested:
            return
        self.stop_requested = True
        mark_terminated(self.run_dir, by)
        self.forward()

    def forward(self) -> None:
        child = self.child
        if child is not None and not self.forwarded:
            self.forwarded = True
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        child = self.child
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.new_session:
                os.killpg(child.pid, signal.SIGKILL)
            else:
                child.kill()


def _claim(run_dir: Path) -> dict[str, Any] | None:
    """Claim the run folder for this process; None if an earlier run already claimed it."""
    me = os.getpid()
    record = {
        "worker_pid": me,
        "worker_started": process_started(me),
        "child_pid": None,
        "child_started": None,
        "host": socket.gethostname(),
        "started_at": time.time(),
    }
    return record if write_record(run_dir, PID, record, once=True) else None


def _already_ran(run_dir: Path) -> dict[str, Any]:
    """The outcome of a run folder claimed before: Dask runs a task again when the worker
    running it dies, and the command must not run twice for one attempt."""
    done = read_record(run_dir, EXIT)
    if done is not None:
        return done
    pid = read_record(run_dir, PID) or {}
    if pid.get("host") == socket.gethostname() and same_process(
        pid.get("child_pid"), pid.get("child_started")
    ):
        # Its wrapper is gone, so nobody would record how it ends: stop it rather than
        # leave it running beside the retry the manager is about to start.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid["child_pid"], signal.SIGKILL)
    return record_death(
        run_dir,
        -1,
        "the process running this attempt died before recording its exit; "
        "the command is not run again",
    )


def run_attempt(
    run_dir: str | os.PathLike[str],
    argv: list[str],
    env: Mapping[str, str],
    cwd: str | os.PathLike[str],
    should_stop: Callable[[], bool] | None = None,
    *,
    should_kill: Callable[[], bool] | None = None,
    poll_s: float = 0.2,
    new_session: bool = True,
    _run: _Run | None = None,
) -> dict[str, Any]:
    """Run ``argv`` as a child and record its pid and exit in ``run_dir``; return the exit
    record.

    Parameters
    ----------
    run_dir
        The attempt's folder (created if missing). A folder already claimed by an earlier run
        is not run again: its recorded exit is returned, or one saying that run died.
    argv, env, cwd
        The command, the variables added over this process's environment, its folder.
    should_stop
        Polled every ``poll_s`` seconds; once true the child gets SIGTERM (once) and the
        outcome is ``preempted``. Checked before starting, so a stop that comes first means
        the command never starts.
    should_kill
        Polled once a stop was asked; once true the child's process group gets SIGKILL.
    new_session
        Start the child in its own session, so that a kill reaches its whole process tree and
        not the caller (in-process use). The ``python -m`` wrapper is itself a session leader
        and keeps the child in its group.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _run or _Run(run_dir, new_session)
    pid_record = _claim(run_dir)
    if pid_record is None:
        return _already_ran(run_dir)
    if should_stop is not None and should_stop():
        run.request_stop("event")
    if run.stop_requested:
        append_log(run_dir, "a stop was asked before the command started; not started")
        return _finish(run_dir, 128 + signal.SIGTERM)

    with open(run_dir / LOG, "ab") as log:
        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **env},
                start_new_session=new_session,
            )
        except OSError as exc:
            append_log(run_dir, f"cannot start {argv[:1]} in {str(cwd)!r}: {exc}")
            return _finish(run_dir, _NOT_STARTED)
    run.child = child
    if run.stop_requested:  # a SIGTERM that came while spawning
        run.forward()
    pid_record.update(child_pid=child.pid, child_started=process_started(child.pid))
    write_record(run_dir, PID, pid_record)

    polling = should_stop is not None or should_kill is not None
    while True:
        try:
            code = child.wait(timeout=poll_s if polling else None)
            break
        except subprocess.TimeoutExpired:
            pass
        if should_stop is not None and not run.stop_requested and should_stop():
            run.request_stop("event")
        if run.stop_requested and should_kill is not None and should_kill():
            run.kill()
            should_kill = None
    return _finish(run_dir, 128 - code if code < 0 else code)


def _finish(run_dir: Path, exit_code: int) -> dict[str, Any]:
    record = {
        "exit_code": exit_code,
        "preempted": read_record(run_dir, TERMINATED) is not None,
        "ended_at": time.time(),
        "recorded_by": "worker",
    }
    if not write_record(run_dir, EXIT, record, once=True):
        return read_record(run_dir, EXIT) or record
    return record


def main(args: list[str] | None = None) -> int:
    """``python -m keel.jobs.worker RUN_DIR -- ARGV...``: run the command, record its exit,
    and exit with its code. SIGTERM is forwarded to the command and marks it preempted."""
    args = sys.argv[1:] if args is None else args
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m keel.jobs.worker RUN_DIR -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    run_dir, argv = Path(args[0]), args[2:]
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(run_dir, new_session=False)
    # Installed before the child exists: a SIGTERM while starting is kept and forwarded.
    signal.signal(signal.SIGTERM, lambda signum, frame: run.request_stop("signal"))
    record = run_attempt(run_dir, argv, {}, os.getcwd(), new_session=False, _run=run)
    code = int(record["exit_code"])
    return code if 0 <= code < 256 else 1


if __name__ == "__main__":
    sys.exit(main())
