"""Executors run job attempts: ``local://`` subprocesses or ``dask://`` cluster tasks.

Pick one with :func:`executor_for`; every backend records an attempt's pid and exit in its
run folder through :mod:`keel.jobs.worker`.
"""

from __future__ import annotations

from keel.jobs.executors.base import Attempt, Executor, Outcome
from keel.jobs.executors.factory import SCHEMES, executor_for

__all__ = ["SCHEMES", "Attempt", "Executor", "Outcome", "executor_for"]
