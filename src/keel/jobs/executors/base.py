"""The executor interface: start an attempt's command somewhere, poll it, stop it.

An executor only runs commands; admission, accounting and retries are the scheduler's and the
manager's. Every backend runs the command through :mod:`keel.jobs.worker`, whose files in the
attempt's ``run_dir`` are the record of truth, so a new executor (after a manager restart)
picks up attempts an earlier one started.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from keel.errors import ValidationError

__all__ = ["Attempt", "Executor", "Outcome"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at running a job's command (retries and resumes are new attempts).

    Parameters
    ----------
    job_id
        The job's id; the command sees it as ``KEEL_JOB_ID``.
    attempt
        1, 2, …; the command sees it as ``KEEL_JOB_ATTEMPT``.
    argv
        The command, e.g. ``[sys.executable, "-m", "keel", "train", "fraud"]``.
    env
        Variables added over the executing process's environment.
    cwd
        The command's working folder.
    requests
        Resources asked, ``{"cpu": 2.0, "memory": 4e9, "nvidia.com/gpu": 1.0}``.
    run_dir
        This attempt's own folder, for its log, pid and exit files.

    Example
    -------
    >>> a = Attempt("j1", 1, ["true"], {}, ".", {"cpu": 1.0}, "/tmp/j1/1")
    >>> a.key
    'keel-j1-1'
    """

    job_id: str
    attempt: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    requests: dict[str, float]
    run_dir: str

    @property
    def key(self) -> str:
        """The attempt's name on a cluster: ``keel-{job_id}-{attempt}``."""
        return f"keel-{self.job_id}-{self.attempt}"

    def check(self) -> None:
        """Raise :class:`ValidationError` naming the first field that cannot be run."""
        if not self.job_id or not isinstance(self.job_id, str):
            raise ValidationError(f"attempt job_id must be a non-empty string, not {self.job_id!r}")
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 1:
            raise ValidationError(
                f"job {self.job_id!r}: attempt must be an integer >= 1, not {self.attempt!r}"
            )
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise ValidationError(
                f"job {self.job_id!r}: argv must be a non-empty list of strings, not {self.argv!r}"
            )
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise ValidationError(f"job {self.job_id!r}: env keys and values must be strings")
        for name, amount in self.requests.items():
            if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                raise ValidationError(
                    f"job {self.job_id!r}: request {name!r} must be a number >= 0, not {amount!r}"
                )
        if not self.run_dir:
            raise ValidationError(f"job {self.job_id!r}: run_dir must be a folder path")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended.

    Parameters
    ----------
    exit_code
        The command's exit code; ``128 + N`` when signal N ended it; ``127`` when it could not
        start; ``-1`` when the process running it died without recording one.
    preempted
        It stopped because ``terminate()`` asked it to, whatever its code.
    log_tail
        The last lines (about 20) of its log.
    ended_at
        When it ended, seconds since the epoch.

    Example
    -------
    >>> Outcome.from_record({"exit_code": 143, "preempted": True, "ended_at": 1.0}, [])
    Outcome(exit_code=143, preempted=True, log_tail=[], ended_at=1.0)
    """

    exit_code: int
    preempted: bool
    log_tail: list[str]
    ended_at: float

    @classmethod
    def from_record(cls, record: Mapping[str, Any], log_tail: list[str]) -> Outcome:
        """The outcome written in an attempt's ``exit`` file."""
        return cls(
            exit_code=int(record["exit_code"]),
            preempted=bool(record["preempted"]),
            log_tail=log_tail,
            ended_at=float(record["ended_at"]),
        )


class Executor(ABC):
    """Runs attempts. Subclasses set ``scheme`` (the URL scheme that picks them).

    ``start`` must not wait for the command; ``poll`` returns None while it runs and its
    :class:`Outcome` once it ended (again on every later call); ``terminate`` asks for a
    graceful stop (SIGTERM: the command checkpoints and exits, usually with 143) and ``kill``
    forces one after the grace period. ``alive`` answers, after a manager restart, whether an
    attempt started earlier still runs. ``close`` releases the executor, not the attempts:
    they run on and a new executor picks them up.
    """

    scheme: ClassVar[str]

    @abstractmethod
    def start(self, attempt: Attempt) -> str:
        """Start the attempt; return a handle naming where it runs, for the job's record."""

    @abstractmethod
    def poll(self, attempt: Attempt) -> Outcome | None:
        """None while the attempt runs; its outcome once it ended."""

    @abstractmethod
    def terminate(self, attempt: Attempt) -> None:
        """Ask the command to stop (SIGTERM); its outcome will say ``preempted``."""

    @abstractmethod
    def kill(self, attempt: Attempt) -> None:
        """Stop the command and everything it started now (SIGKILL)."""

    @abstractmethod
    def alive(self, attempt: Attempt) -> bool:
        """Whether the attempt is still running (or waiting to run)."""

    @abstractmethod
    def close(self) -> None:
        """Release the executor's own resources; running attempts are left running."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
