"""``dask://host:port``: each attempt a task on a Dask distributed cluster.

The task runs :func:`keel.jobs.worker.run_attempt`, which starts the command as a child of the
Dask worker and records its pid and exit in the attempt's run folder. Requirements:

* **A shared filesystem.** The manager reads the status files from ``run_dir``, so the
  workers must see the manager's files at the same paths: workers on this machine, or
  ``run_dir`` and ``cwd`` on a mount shared by all. (An attempt whose task ended with no exit
  file in sight is reported as a :class:`~keel.errors.ConfigError` saying so.)
* **Keel installed on the workers**, which import this module to run the task.
* **Resources declared by the workers** (``dask worker --resources "cpu=8,memory=32e9"``)
  if the cluster is to enforce the jobs' requests; a cluster whose workers declare none runs
  tasks unrestricted (logged once).

A running attempt holds one worker thread, so a worker runs at most ``nthreads`` attempts at
once, whatever its resources. Tasks are fire-and-forget: they run on when the manager's client
goes, and a new executor finds them by key (``keel-{job_id}-{attempt}``). Dask runs a task again
when the worker running it dies; the wrapper then does not run the command again but records
that the attempt died, so the manager's retry policy decides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import distributed

from keel.errors import ConfigError, ConflictError, UnavailableError, ValidationError
from keel.jobs import worker
from keel.jobs.executors.base import Attempt, Executor, Outcome

__all__ = ["DaskExecutor", "run_on_worker"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8786
# Scheduler task states of a task that is still to run or running.
_ACTIVE = frozenset({"released", "waiting", "queued", "no-worker", "processing"})


def run_on_worker(
    run_dir: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    stop_event: str,
    kill_event: str,
    poll_s: float,
) -> dict[str, Any]:
    """The task: run the attempt, stopping it when its stop (then kill) event is set."""
    stop = distributed.Event(stop_event)
    kill = distributed.Event(kill_event)
    return worker.run_attempt(
        run_dir,
        argv,
        env,
        cwd,
        should_stop=stop.is_set,
        should_kill=kill.is_set,
        poll_s=poll_s,
        new_session=True,
    )


def scheduler_address(url: str) -> str:
    """``tcp://host:port`` for ``dask://host[:port]`` (port 8786 by default).

    Example
    -------
    >>> scheduler_address("dask://127.0.0.1:8786"), scheduler_address("dask://sched")
    ('tcp://127.0.0.1:8786', 'tcp://sched:8786')
    """
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(
            f"jobs_url {url!r}: the port is not a number; use dask://host:port"
        ) from None
    if parts.scheme != "dask" or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ConfigError(f"jobs_url {url!r}: expected dask://host:port (a Dask scheduler)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{port}"


class DaskExecutor(Executor):
    """Run attempts as tasks on the Dask scheduler at ``url`` (``dask://host:port``).

    Parameters
    ----------
    url
        The scheduler, ``dask://host:port``.
    timeout_s
        How long to wait for the scheduler to answer when connecting.
    poll_s
        How often a running task checks whether it was asked to stop.

    Example
    -------
    >>> DaskExecutor("dask://127.0.0.1:1", timeout_s=0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    keel.errors.UnavailableError: cannot reach the Dask scheduler at tcp://127.0.0.1:1 ...
    """

    scheme = "dask"

    def __init__(self, url: str, *, timeout_s: float = 10.0, poll_s: float = 0.2) -> None:
        self.address = scheduler_address(url)
        self.poll_s = poll_s
        try:
            self._client = distributed.Client(self.address, timeout=timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise UnavailableError(
                f"cannot reach the Dask scheduler at {self.address} (jobs_url {url!r}): {exc}"
            ) from exc
        # Held until the outcome is read: a future's status tells a running task from one
        # that failed without recording an exit.
        self._futures: dict[str, distributed.Future] = {}
        self._said_unenforced = False

    # -- the interface ---------------------------------------------------------------------

    def start(self, attempt: Attempt) -> str:
        attempt.check()
        run_dir = Path(attempt.run_dir).resolve()
        cwd = Path(attempt.cwd).resolve()
        if not cwd.is_dir():
            raise ValidationError(
                f"job {attempt.job_id!r}: cwd {attempt.cwd!r} is not a folder (the Dask workers "
                "must see it at the same path)"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in (worker.HANDLE, worker.PID, worker.EXIT):
            if (run_dir / name).exists():
                raise ConflictError(
                    f"job {attempt.job_id!r} attempt {attempt.attempt} was already started in "
                    f"{str(run_dir)!r} (it has a {name!r} file); each attempt needs a new run_dir"
                )
        resources = self._resources(attempt)
        env = worker.attempt_env(attempt.job_id, attempt.attempt, attempt.env, attempt.requests)
        future = self._client.submit(
            run_on_worker,
            str(run_dir),
            list(attempt.argv),
            env,
            str(cwd),
            _stop_event(attempt),
            _kill_event(attempt),
            self.poll_s,
            key=attempt.key,
            pure=False,
            resources=resources,
            retries=0,
        )
        distributed.fire_and_forget(future)
        self._futures[attempt.key] = future
        handle = {"scheduler": self.address, "key": attempt.key, "started_at": time.time()}
        worker.write_record(run_dir, worker.HANDLE, handle)
        logger.debug("submitted %s to %s with resources %s", attempt.key, self.address, resources)
        return json.dumps({"executor": "dask", **handle}, separators=(",", ":"))

    def poll(self, attempt: Attempt) -> Outcome | None:
        run_dir = Path(attempt.run_dir).resolve()
        record = worker.read_record(run_dir, worker.EXIT)
        if record is None:
            state, why = self._task_state(attempt)
            if state == "active":
                return None
            # Read again: the task may have written it and ended since the first read.
            record = worker.read_record(run_dir, worker.EXIT)
            if record is None and state == "finished":
                raise ConfigError(
                    f"the Dask task {attempt.key} ended but {str(run_dir / worker.EXIT)!r} is "
                    f"not there: the workers of {self.address} must see this machine's files "
                    "at the same paths (workers on this machine, or run_dir on a shared mount)"
                )
            if record is None:
                record = worker.record_death(run_dir, -1, why)
        self._forget(attempt, run_dir)
        return Outcome.from_record(record, worker.log_tail(run_dir))

    def terminate(self, attempt: Attempt) -> None:
        run_dir = Path(attempt.run_dir).resolve()
        if worker.read_record(run_dir, worker.EXIT) is not None:
            return
        # Marked here too, so the outcome says preempted even if the task never runs again.
        worker.mark_terminated(run_dir, "executor")
        distributed.Event(_stop_event(attempt), client=self._client).set()

    def kill(self, attempt: Attempt) -> None:
        run_dir = Path(attempt.run_dir).resolve()
        if worker.read_record(run_dir, worker.EXIT) is not None:
            return
        worker.mark_terminated(run_dir, "executor")
        # The stop event first: a task that starts from now on does not start the command.
        distributed.Event(_stop_event(attempt), client=self._client).set()
        distributed.Event(_kill_event(attempt), client=self._client).set()
        pid = worker.read_record(run_dir, worker.PID) or {}
        if pid.get("host") == socket.gethostname() and worker.same_process(
            pid.get("child_pid"), pid.get("child_started")
        ):
            # On this machine the group can go now rather than at the task's next check; the
            # command leads its own session, so its pid is the group's id.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid["child_pid"]), signal.SIGKILL)
        if not pid:
            # Not started yet (queued, perhaps for good): take it off the cluster.
            future = self._future(attempt)
            if future is not None:
                self._client.cancel([future], force=True, reason="killed by the job manager")
            worker.record_death(
                run_dir, 128 + signal.SIGKILL, f"{attempt.key} killed before it ran"
            )

    def alive(self, attempt: Attempt) -> bool:
        run_dir = Path(attempt.run_dir).resolve()
        if worker.read_record(run_dir, worker.EXIT) is not None:
            return False
        pid = worker.read_record(run_dir, worker.PID) or {}
        if pid.get("host") == socket.gethostname() and worker.same_process(
            pid.get("child_pid"), pid.get("child_started")
        ):
            return True
        return self._task_state(attempt)[0] == "active"

    def close(self) -> None:
        # Tasks are fire-and-forget: they run on without this client.
        self._futures.clear()
        self._client.close()

    # -- helpers ---------------------------------------------------------------------------

    def _resources(self, attempt: Attempt) -> dict[str, float] | None:
        """The task's resource restrictions: the attempt's positive requests, checked against
        what the workers declare, so that no task is submitted that no worker could run."""
        asked = {name: float(v) for name, v in attempt.requests.items() if v > 0}
        workers = self._client.scheduler_info(n_workers=-1)["workers"]
        if not workers:
            raise UnavailableError(
                f"the Dask scheduler at {self.address} has no workers; start some with "
                f'`dask worker {self.address} --resources "cpu=8,memory=32e9"`'
            )
        declared = [dict(info.get("resources") or {}) for info in workers.values()]
        names = set().union(*declared)
        if not names:
            if not self._said_unenforced:
                self._said_unenforced = True
                logger.warning(
                    "the Dask workers at %s declare no resources, so jobs' requests are not "
                    'enforced there (start workers with --resources "cpu=8,memory=32e9")',
                    self.address,
                )
            return None
        missing = sorted(set(asked) - names)
        if missing:
            raise ConfigError(
                f"job {attempt.job_id!r} asks {missing} but no worker of the Dask cluster at "
                f"{self.address} declares it (they declare {sorted(names)}); start workers "
                "with --resources naming it, or run the job on another queue"
            )
        if not any(all(res.get(n, 0) >= v for n, v in asked.items()) for res in declared):
            raise ConfigError(
                f"job {attempt.job_id!r} asks {asked} but no worker of the Dask cluster at "
                f"{self.address} has that much (workers declare {declared})"
            )
        return asked or None

    def _task_state(self, attempt: Attempt) -> tuple[str, str]:
        """``active`` (to run or running), ``finished`` or ``gone``, with why it is gone."""
        future = self._futures.get(attempt.key)
        if future is not None:
            if future.status == "pending":
                return "active", ""
            if future.status == "finished":
                return "finished", ""
            if future.status == "error":
                return "gone", f"the Dask task {attempt.key} failed: {future.exception()!r}"
            return "gone", f"the Dask task {attempt.key} was {future.status}; no exit recorded"
        state = self._scheduler_state(attempt.key)
        if state in _ACTIVE:
            return "active", ""
        return "gone", f"the Dask scheduler has the task {attempt.key} as {state}; no exit recorded"

    def _scheduler_state(self, key: str) -> str | None:
        states = self._client.sync(self._client.scheduler.get_task_status, keys=[key])
        return states.get(key)

    def _future(self, attempt: Attempt) -> distributed.Future | None:
        """This client's future of the attempt's task, made from its key if the task was
        submitted by an earlier client (only for a task the scheduler knows)."""
        future = self._futures.get(attempt.key)
        if future is None and self._scheduler_state(attempt.key) is not None:
            future = distributed.Future(attempt.key, self._client)
        return future

    def _forget(self, attempt: Attempt, run_dir: Path) -> None:
        self._futures.pop(attempt.key, None)
        if worker.read_record(run_dir, worker.TERMINATED) is not None:
            # Clearing an event nobody waits on deletes it from the scheduler.
            distributed.Event(_stop_event(attempt), client=self._client).clear()
            distributed.Event(_kill_event(attempt), client=self._client).clear()


def _stop_event(attempt: Attempt) -> str:
    return f"keel-stop-{attempt.job_id}-{attempt.attempt}"


def _kill_event(attempt: Attempt) -> str:
    return f"keel-kill-{attempt.job_id}-{attempt.attempt}"
