"""The documented deployment path: a process worker, `prefect deploy`, `prefect deployment run`.

Runs against the session's `prefect server start` on 127.0.0.1 (tests/conftest.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import cache_features
from tests.helpers import stop_process, tone_manifest

ROOT = Path(__file__).resolve().parent.parent
PREFECT = [sys.executable, "-m", "prefect"]


def prefect_cli(args: list[str], env: dict, timeout: float = 180, check: bool = True) -> str:
    done = subprocess.run(PREFECT + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout if done.returncode == 0 else ""


@pytest.mark.integration
def test_pretrain_deployment_runs_on_a_worker(tmp_path, subprocess_env, dask_address):
    data = tmp_path / "data"
    store = cache_features(str(tone_manifest(data, n=24)), data_dir=str(data), dask_address=dask_address)
    env = {**subprocess_env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    worker = subprocess.Popen(PREFECT + ["worker", "start", "--pool", "decar-local", "--type", "process"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not prefect_cli(["work-pool", "inspect", "decar-local"], env, check=False):
            assert time.monotonic() < deadline and worker.poll() is None, "the worker did not create its pool"
            time.sleep(1)
        prefect_cli(["--no-prompt", "deploy", "--name", "pretrain-decar/local"], env)
        params = {"features": store, "run_name": "deployed", "runs_dir": str(tmp_path / "runs"), "epochs": 1,
                  "clusters": 4, "batch_size": 8, "width_mult": 0.25, "dask_address": dask_address,
                  "allow_degenerate": True}
        out = prefect_cli(["deployment", "run", "pretrain-decar/local", "--params", json.dumps(params),
                           "--watch", "--watch-timeout", "300"], env, timeout=360)
        assert re.search(r"Completed", out), out
    finally:
        stop_process(worker)
    run = tmp_path / "runs" / "deployed"
    assert (run / "epoch-000" / "checkpoint.pt").exists()
    assert json.loads((run / "epoch-000" / "metrics.json").read_text())["clusters"] == 4
