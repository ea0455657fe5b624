"""Pick the executor from the jobs URL's scheme."""

from __future__ import annotations

import importlib
from typing import Any

from keel.errors import ConfigError
from keel.jobs.executors.base import Executor

__all__ = ["SCHEMES", "check_url", "executor_for"]

# Imported when chosen: a local:// manager never pays for importing Dask.
SCHEMES = {
    "local": ("keel.jobs.executors.local", "LocalExecutor"),
    "dask": ("keel.jobs.executors.dask", "DaskExecutor"),
}
_USE = (
    "use local:// (subprocesses on this machine) or dask://host:port (a Dask distributed scheduler)"
)


def executor_for(url: str, **options: Any) -> Executor:
    """The executor for ``url``: ``local://`` or ``dask://host:port``.

    ``options`` go to the executor's constructor.

    Example
    -------
    >>> executor_for("local://").scheme
    'local'
    >>> executor_for("ray://h:10001")
    Traceback (most recent call last):
    ...
    keel.errors.ConfigError: jobs_url 'ray://h:10001': the scheme 'ray' is not implemented; use local:// (subprocesses on this machine) or dask://host:port (a Dask distributed scheduler)
    """  # noqa: E501
    scheme = check_url(url)
    module, name = SCHEMES[scheme]
    cls = getattr(importlib.import_module(module), name)
    return cls(**options) if scheme == "local" else cls(url, **options)


def check_url(url: str) -> str:
    """The scheme of a jobs URL that names an implemented executor; a clear
    :class:`~keel.errors.ConfigError` otherwise. Imports no backend (the settings call it)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"jobs_url {url!r} is not a URL; {_USE}")
    scheme, rest = url.split("://", 1)
    if scheme not in SCHEMES:
        raise ConfigError(f"jobs_url {url!r}: the scheme {scheme!r} is not implemented; {_USE}")
    if scheme == "local" and rest.strip("/"):
        raise ConfigError(f"jobs_url {url!r}: local:// takes no host or path; use local://")
    return scheme
