"""A benchmark follows pre-training: the `benchmark-downstream/after-pretrain` deployment's trigger
(prefect.yaml) starts it on the completed run's latest checkpoint. Real server, real process worker,
real `prefect deploy` of the project's prefect.yaml (only the benchmark's parameters made small)."""
from __future__ import annotations

import json
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from downstream.generated import write_generated_task
from flows import cache_features
from tests.helpers import stop_process, tone_manifest
from tests.test_deployment import PREFECT, ROOT, prefect_cli


def after_pretrain(config: dict) -> dict:
    return next(d for d in config["deployments"] if d["name"] == "after-pretrain")


def test_trigger_in_prefect_yaml_parses():
    deployment = after_pretrain(yaml.safe_load((ROOT / "prefect.yaml").read_text()))
    assert deployment["entrypoint"] == "flows/benchmark.py:benchmark_downstream"
    (trigger,) = [DeploymentEventTrigger.model_validate(t) for t in deployment["triggers"]]
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.match_related.root == {"prefect.resource.role": "flow", "prefect.resource.name": "pretrain-decar"}
    assert ":latest" in trigger.parameters["checkpoint"] and "run_name" in trigger.parameters["checkpoint"]
    assert deployment["parameters"]["tasks"]


def benchmark_runs(deployment_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id={"any_": [deployment_id]}))


@pytest.mark.integration
def test_completed_pretraining_starts_a_benchmark(tmp_path, subprocess_env, dask_address):
    data = tmp_path / "data"
    store = cache_features(str(tone_manifest(data, n=24)), data_dir=str(data), dask_address=dask_address)
    folder = write_generated_task("synth-instrument", tmp_path / "families", scale=0.2)
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    after_pretrain(config)["parameters"] = {"tasks": [f"folder:{folder}"], "data_dir": str(data), "epochs": 1,
                                            "batch_size": 8, "dask_address": dask_address}
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(config, sort_keys=False))

    env = {**subprocess_env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    worker = subprocess.Popen(PREFECT + ["worker", "start", "--pool", "decar-local", "--type", "process"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deployment = None
    try:
        deadline = time.monotonic() + 60
        while not prefect_cli(["work-pool", "inspect", "decar-local"], env, check=False):
            assert time.monotonic() < deadline and worker.poll() is None, "the worker did not create its pool"
            time.sleep(1)
        for name in ("pretrain-decar/local", "benchmark-downstream/after-pretrain"):
            prefect_cli(["--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--name", name], env)
        with get_client(sync_client=True) as client:
            (deployment,) = client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["after-pretrain"])))
        assert benchmark_runs(deployment.id) == []
        params = {"features": store, "run_name": "triggered", "runs_dir": str(tmp_path / "runs"), "epochs": 1,
                  "clusters": 4, "batch_size": 8, "width_mult": 0.25, "dask_address": dask_address,
                  "allow_degenerate": True}
        out = prefect_cli(["deployment", "run", "pretrain-decar/local", "--params", json.dumps(params),
                           "--watch", "--watch-timeout", "300"], env, timeout=360)
        assert "Completed" in out, out

        deadline = time.monotonic() + 300
        while not (runs := benchmark_runs(deployment.id)) or not runs[0].state.is_final():
            assert time.monotonic() < deadline, f"no finished benchmark run after pre-training: {runs}"
            time.sleep(2)
    finally:
        if deployment is not None:  # its trigger must not fire on other tests' pre-training runs
            with get_client(sync_client=True) as client:  # deleting a deployment keeps its automations
                client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
            prefect_cli(["--no-prompt", "deployment", "delete", "benchmark-downstream/after-pretrain"], env,
                        check=False)
        stop_process(worker)
    (run,) = runs
    assert run.parameters["checkpoint"] == f"{tmp_path / 'runs'}/triggered:latest"
    assert run.state.is_completed(), run.state
    rows = pq.read_table(tmp_path / "runs" / "triggered" / "benchmarks" / "epoch-000.parquet").to_pylist()
    assert {r["model"] for r in rows} >= {"decar", "logmel-stats"} and {r["task"] for r in rows} == {f"folder:{folder}"}


def test_every_deployment_points_at_a_flow_of_its_name():
    """prefect.yaml's entrypoints import, are flows, and every flow has a local deployment."""
    import importlib

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    local = set()
    for deployment in config["deployments"]:
        path, attr = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path[:-3].replace("/", ".")), attr)
        assert hasattr(flow, "fn") and flow.name, deployment["entrypoint"]
        if deployment["name"] == "local":
            local.add(flow.name)
    assert {"pretrain-decar", "pretrain-delores-s", "pretrain-delores-m", "pretrain-slicer",
            "benchmark-downstream", "cache-features", "download-audioset", "recluster"} <= local
