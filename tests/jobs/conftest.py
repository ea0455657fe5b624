"""What the jobs tests share: a Dask cluster on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import distributed
import pytest


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        # None starts no dashboard, but the scheduler still serves its health routes, on
        # port 8787 unless told otherwise: a port taken there (another cluster) would mean a
        # warning, so they go on a free loopback port.
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        resources={"cpu": 4, "memory": 8e9},
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
