"""``local://``: each attempt a subprocess on this machine.

The command runs under the wrapper :mod:`keel.jobs.worker` in a session of its own, so it
outlives a manager that crashes and a new manager re-attaches to it through the attempt's run
folder. The executor also writes ``handle`` there (the wrapper's pid and start time) before
``start`` returns, so an attempt whose wrapper has not yet written its ``pid`` file is found.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from keel.errors import ConflictError, ValidationError
from keel.jobs import worker
from keel.jobs.executors.base import Attempt, Executor, Outcome

__all__ = ["LocalExecutor"]

logger = logging.getLogger(__name__)

# The wrapper runs as a file rather than ``-m keel.jobs.worker``: importing the keel package
# would add everything it imports (SQLAlchemy among it, ~200 ms) to every attempt's start, and
# the wrapper needs only the standard library. -P keeps the wrapper's folder off sys.path,
# where a module of keel.jobs could shadow one of the standard library's.
WRAPPER = ("-P", str(Path(worker.__file__).resolve()))


class LocalExecutor(Executor):
    """Run attempts as subprocesses of this machine.

    Parameters
    ----------
    python
        The interpreter that runs the wrapper (default: this one).

    Example
    -------
    >>> import sys, tempfile, time
    >>> ex = LocalExecutor()
    >>> a = Attempt("doc", 1, [sys.executable, "-c", "print('done')"], {}, ".", {"cpu": 1.0},
    ...             tempfile.mkdtemp())
    >>> _ = ex.start(a)
    >>> while (out := ex.poll(a)) is None:
    ...     time.sleep(0.05)
    >>> out.exit_code, out.preempted, out.log_tail
    (0, False, ['done'])
    """

    scheme = "local"

    def __init__(self, *, python: str = sys.executable) -> None:
        self.python = python
        # Kept to learn how a wrapper ended when it died without an exit file. Each is also
        # waited for by a thread of its own, so none is left a zombie, even after close().
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, attempt: Attempt) -> str:
        attempt.check()
        run_dir = Path(attempt.run_dir).resolve()
        if not Path(attempt.cwd).is_dir():
            raise ValidationError(
                f"job {attempt.job_id!r}: cwd {attempt.cwd!r} is not a folder on this machine"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in (worker.HANDLE, worker.PID, worker.EXIT):
            if (run_dir / name).exists():
                raise ConflictError(
                    f"job {attempt.job_id!r} attempt {attempt.attempt} was already started in "
                    f"{str(run_dir)!r} (it has a {name!r} file); each attempt needs a new run_dir"
                )
        env = {
            **os.environ,
            **worker.attempt_env(attempt.job_id, attempt.attempt, attempt.env, attempt.requests),
        }
        with open(run_dir / worker.LOG, "ab") as log:
            proc = subprocess.Popen(
                [self.python, *WRAPPER, str(run_dir), "--", *attempt.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=attempt.cwd,
                env=env,
                start_new_session=True,
            )
        self._procs[attempt.key] = proc
        threading.Thread(target=proc.wait, name=f"reap-{attempt.key}", daemon=True).start()
        handle = {
            "worker_pid": proc.pid,
            "worker_started": worker.process_started(proc.pid),
            "host": socket.gethostname(),
            "started_at": time.time(),
        }
        worker.write_record(run_dir, worker.HANDLE, handle)
        logger.debug("started %s as pid %d in %s", attempt.key, proc.pid, run_dir)
        return json.dumps({"executor": "local", **handle}, separators=(",", ":"))

    def poll(self, attempt: Attempt) -> Outcome | None:
        run_dir = Path(attempt.run_dir).resolve()
        proc = self._procs.get(attempt.key)
        # Whether the wrapper lives is asked before reading its exit file: it writes the file
        # before it ends, so "gone, and no file" read in that order means it never wrote one.
        running = proc.poll() is None if proc is not None else self._wrapper_alive(run_dir)
        record = worker.read_record(run_dir, worker.EXIT)
        if record is None:
            if running:
                return None
            # The command may outlive its wrapper; left running, it would run beside the
            # retry that this outcome leads to.
            self._kill_group(run_dir)
            record = worker.record_death(run_dir, *self._death(attempt, proc))
        self._procs.pop(attempt.key, None)
        return Outcome.from_record(record, worker.log_tail(run_dir))

    def terminate(self, attempt: Attempt) -> None:
        run_dir = Path(attempt.run_dir).resolve()
        if worker.read_record(run_dir, worker.EXIT) is not None:
            return
        # Marked first, so the outcome says preempted even if the wrapper dies of the signal
        # before its handler is installed.
        worker.mark_terminated(run_dir, "executor")
        record = self._wrapper_record(run_dir)
        if worker.same_process(record.get("worker_pid"), record.get("worker_started")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(record["worker_pid"]), signal.SIGTERM)

    def kill(self, attempt: Attempt) -> None:
        run_dir = Path(attempt.run_dir).resolve()
        if not self._kill_group(run_dir):
            return
        proc = self._procs.get(attempt.key)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # Recorded here, not left to the wrapper (killed with its command), so the outcome
        # reads the same whether or not this executor started the attempt.
        worker.record_death(run_dir, 128 + signal.SIGKILL, f"{attempt.key} killed (SIGKILL)")

    def alive(self, attempt: Attempt) -> bool:
        run_dir = Path(attempt.run_dir).resolve()
        if worker.read_record(run_dir, worker.EXIT) is not None:
            return False  # a wrapper that recorded the exit is only finishing up
        proc = self._procs.get(attempt.key)
        if proc is not None:
            return proc.poll() is None
        return self._wrapper_alive(run_dir)

    def close(self) -> None:
        # The attempts run on (they are meant to survive the manager); their reaper threads
        # wait for them still.
        self._procs.clear()

    # -- the run folder's process records -------------------------------------------------

    @staticmethod
    def _wrapper_record(run_dir: Path) -> dict[str, Any]:
        pid = worker.read_record(run_dir, worker.PID)
        return pid or worker.read_record(run_dir, worker.HANDLE) or {}

    @classmethod
    def _wrapper_alive(cls, run_dir: Path) -> bool:
        record = cls._wrapper_record(run_dir)
        return worker.same_process(record.get("worker_pid"), record.get("worker_started"))

    @classmethod
    def _kill_group(cls, run_dir: Path) -> bool:
        """SIGKILL the attempt's process group if any member lives; whether one did.

        The wrapper leads its session, so its pid is the group's id. The group is signalled
        only when the wrapper or the command is verified to be the process that started the
        attempt: a group id is not reused while a member lives.
        """
        record = cls._wrapper_record(run_dir)
        child = worker.read_record(run_dir, worker.PID) or {}
        if not (
            worker.same_process(record.get("worker_pid"), record.get("worker_started"))
            or worker.same_process(child.get("child_pid"), child.get("child_started"))
        ):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(record["worker_pid"]), signal.SIGKILL)
        return True

    @staticmethod
    def _death(attempt: Attempt, proc: subprocess.Popen[bytes] | None) -> tuple[int, str]:
        code = proc.returncode if proc is not None else None
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            return 128 - code, f"the wrapper of {attempt.key} was killed by {sig}; no exit recorded"
        if code is not None:
            return -1, f"the wrapper of {attempt.key} exited with {code}; no exit recorded"
        return -1, f"the wrapper of {attempt.key} is gone; no exit recorded"
