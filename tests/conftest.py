"""Session fixtures: one real Prefect API server and one real Dask cluster for all tests.

The server runs as a child process with a throw-away PREFECT_HOME; its URL is
exported so flows in this process, Dask worker processes and the subprocesses
that tests kill and rerun all report to the same API.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_home = Path(tempfile.mkdtemp(prefix="decar-tests-prefect-"))
os.environ["PREFECT_HOME"] = str(_home)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"

from demo.prefect_server import start_local_server, stop_process  # noqa: E402

_server, _api_url = start_local_server(_home / "server")
os.environ["PREFECT_API_URL"] = _api_url
atexit.register(lambda: (stop_process(_server), shutil.rmtree(_home, ignore_errors=True)))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api() -> str:
    return _api_url


@pytest.fixture(scope="session")
def dask_address():
    """A real process-based Dask cluster shared by the tests (2 workers, 1 thread each)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0", host="127.0.0.1")
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture
def subprocess_env() -> dict:
    """Environment for flows run in child processes (same API, same result storage)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
