"""The Dask task runner: a local cluster by default, an existing scheduler when an address is given."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from prefect_dask import DaskTaskRunner


def dask_runner(address: str | None = None, n_workers: int | None = None) -> DaskTaskRunner:
    address = address or os.environ.get("DECAR_DASK_ADDRESS") or None
    if address:
        return DaskTaskRunner(address=address)
    workers = n_workers or max(1, min(4, os.cpu_count() or 1))
    # One thread per worker process: torch and faiss threads are capped inside tasks too.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": ":0"})


@contextmanager
def local_cluster(n_workers: int | None = None) -> Iterator[str]:
    """A process-based local Dask cluster kept for a whole flow (started once, not per epoch)."""
    from distributed import LocalCluster

    workers = n_workers or max(1, min(4, os.cpu_count() or 1))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        yield cluster.scheduler_address
