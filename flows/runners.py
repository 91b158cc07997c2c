"""Where shard stages run: an existing Dask scheduler, or a local cluster started on first need."""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from typing import Iterator

from prefect_dask import DaskTaskRunner


@contextmanager
def local_cluster(n_workers: int | None = None) -> Iterator[str]:
    """A process-based local Dask cluster kept for a whole flow (started once, not per epoch)."""
    from distributed import LocalCluster

    workers = n_workers or max(1, min(4, os.cpu_count() or 1))
    # One thread per worker process: torch and faiss threads are capped inside tasks too.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", env=worker_env()) as cluster:
        yield cluster.scheduler_address


def worker_env() -> dict[str, str]:
    """The Prefect API for Dask workers: this process's, so that every worker reports to it.

    Without PREFECT_API_URL, Prefect runs a temporary local server for this process (one
    `SubprocessASGIServer` per process, started here if the flow has not yet); its URL is handed
    to the workers, which would otherwise each start a temporary server of their own."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        url = server.api_url
    return {"PREFECT_API_URL": url}


class OnDemandCluster:
    """The scheduler to use: `address` (or $DECAR_DASK_ADDRESS), else a local cluster started the
    first time a shard stage needs one and closed with `stack` (a cached run starts none)."""

    def __init__(self, address: str | None, n_workers: int | None, stack: ExitStack):
        self._address = address or os.environ.get("DECAR_DASK_ADDRESS") or None
        self.n_workers, self.stack = n_workers, stack

    def address(self) -> str:
        if not self._address:
            self._address = self.stack.enter_context(local_cluster(self.n_workers))
        return self._address

    def task_runner(self) -> DaskTaskRunner:
        return DaskTaskRunner(address=self.address())
