"""pretrain-delores-s, pretrain-delores-m, pretrain-slicer: real flows on the test API server, a
real feature store, kill -9 in training then resume to the same tensors, a 2-process gloo epoch,
and each method's checkpoint through benchmark-downstream."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from downstream.generated import write_generated_task
from flows import benchmark_downstream, cache_features, pretrain_delores_s
from storage.layout import RunLayout
from storage.records import read_record
from tests.helpers import tone_manifest

ROOT = Path(__file__).resolve().parent.parent
FLOWS = {"delores-s": "pretrain_delores_s", "delores-m": "pretrain_delores_m", "slicer": "pretrain_slicer"}
# small enough for seconds per epoch: 24 clips, 3 steps of 8, BYOL-A encoder of width 64
TINY = dict(epochs=2, batch_size=8, seed=0, device="cpu",
            options={"encoder_dim": 64, "projector_dim": 32, "queue_size": 16, "bank_size": 16, "crop_frames": 16,
                     "instance_dim": 16, "cluster_heads": 8, "kmix_sample": 24, "ema": 0.9})

RUNNER = """
import json, sys
import torch
torch.set_num_threads(1)
import flows
params = json.loads(sys.argv[2])
print("RESULT", getattr(flows, sys.argv[1])(**params))
"""


def run_child(flow: str, params: dict, fault: str | None = None, skip: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("DECAR_FAULT", None)
    if fault:
        env.update(DECAR_FAULT=fault, DECAR_FAULT_SKIP=str(skip))
    return subprocess.run([sys.executable, "-c", RUNNER, flow, json.dumps(params)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, start_new_session=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory, dask_address) -> str:
    data = tmp_path_factory.mktemp("instance-data")
    return cache_features(str(tone_manifest(data, n=24, seconds=0.5)), data_dir=str(data), dask_address=dask_address)


def tensors(state, prefix: str = ""):
    """Every tensor of a nested checkpoint entry, by dotted name."""
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for k, v in state.items():
            yield from tensors(v, f"{prefix}.{k}")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from tensors(v, f"{prefix}.{i}")


def assert_same_checkpoint(a: Path, b: Path) -> None:
    ca, cb = (torch.load(p, weights_only=True) for p in (a, b))
    for part in ("state", "encoder", "optimiser", "bank", "kmix"):
        ta, tb = dict(tensors(ca[part])), dict(tensors(cb[part]))
        assert ta.keys() == tb.keys(), part
        for name in ta:
            assert torch.equal(ta[name], tb[name]), f"{a}: {part}{name} differs from the uninterrupted run"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", list(FLOWS))
def test_killed_in_training_then_resumed_equals_uninterrupted(method, store, tmp_path):
    runs = tmp_path / "runs"
    params = dict(features=store, runs_dir=str(runs), **TINY)
    done = run_child(FLOWS[method], {**params, "run_name": "reference"})
    assert done.returncode == 0, done.stderr[-3000:]
    # 3 steps per epoch: let the 3 of epoch 0 and the first of epoch 1 pass, die after the 2nd of epoch 1
    killed = run_child(FLOWS[method], {**params, "run_name": "faulty"}, fault="train-step", skip=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = RunLayout(runs / "faulty")
    assert read_record(run.checkpoint(0)) is not None and not run.checkpoint(1).exists()
    kept = run.checkpoint(0).stat().st_mtime_ns
    done = run_child(FLOWS[method], {**params, "run_name": "faulty"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert run.checkpoint(0).stat().st_mtime_ns == kept, "the finished epoch 0 was retrained"
    for epoch in (0, 1):
        assert_same_checkpoint(run.checkpoint(epoch), RunLayout(runs / "reference").checkpoint(epoch))
    metrics = json.loads(run.metrics(1).read_text())
    assert metrics["method"] == method and metrics["loss"] == metrics["loss"]  # finite, not NaN
    assert metrics["health"]["distinct_rows"] > 1
    payload = torch.load(run.checkpoint(1), weights_only=True)
    assert payload["method"] == method and payload["instance_config"]["method"] == method
    assert (payload["kmix"] is not None) == (method == "slicer")


@pytest.mark.timeout(300)
def test_two_gloo_processes_train_and_show_in_the_ui(store, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state = pretrain_delores_s(store, "ddp", runs_dir=str(tmp_path), processes=2, return_state=True, **TINY)
    run = RunLayout(state.result())
    for epoch in (0, 1):
        assert json.loads(run.metrics(epoch).read_text())["processes"] == 2
    payload = torch.load(run.checkpoint(1), weights_only=True)
    assert payload["extra"]["processes"] == 2 and payload["extra"]["steps"] == 3  # 24 clips / global batch 8
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    keyed = {a.key: a for a in artifacts if a.key}
    assert sorted(keyed) == ["delores-s-ddp-epochs", "delores-s-ddp-plots"]  # one of each, updated in place
    rows = json.loads(keyed["delores-s-ddp-epochs"].data)
    assert [r["epoch"] for r in rows] == [0, 1] and {"loss", "barlow", "spread", "effective_rank"} <= set(rows[0])
    assert keyed["delores-s-ddp-plots"].data.count("data:image/png;base64,") == 1
    assert (run.root / "plots" / "loss-health.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", list(FLOWS))
def test_checkpoint_is_benchmarked_beside_its_random_encoder(method, store, tmp_path, dask_address):
    import flows

    run = getattr(flows, FLOWS[method])(store, "bench", runs_dir=str(tmp_path / "runs"), **{**TINY, "epochs": 1})
    folder = write_generated_task("synth-instrument", tmp_path / "families", scale=0.2)
    modes = ["frozen", "finetune"] if method == "slicer" else ["frozen"]  # fine-tuning is method-blind: once
    results = benchmark_downstream(f"{run}:latest", tasks=[f"folder:{folder}"], modes=modes,
                                   data_dir=str(tmp_path / "data"), epochs=1, batch_size=8, dask_address=dask_address)
    rows = pq.read_table(results).to_pylist()
    expected = [("frozen", m) for m in ("decar", "logmel-stats", "random-init", "random-init-bn")]
    if method == "slicer":
        expected = [("finetune", "decar"), ("finetune", "random-init")] + expected
    assert sorted((r["mode"], r["model"]) for r in rows) == expected
    assert all(r["method"] == method for r in rows)
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


def test_cosine_schedule_spans_the_run_and_is_part_of_its_identity(store, tmp_path):
    """options schedule="cosine" without schedule_epochs decays over the flow's `epochs`; each epoch's
    metrics carry its last step's rate; asking the same run for more epochs is another schedule."""
    from flows import pretrain_delores_m
    from flows.run_config import ConfigMismatch
    from model.optimisers import lr_factor

    options = {**TINY["options"], "optimiser": "lars", "schedule": "cosine", "warmup_epochs": 1}
    params = {**TINY, "lr": 0.05, "options": options, "runs_dir": str(tmp_path)}
    run = RunLayout(pretrain_delores_m(store, "cos", **params))
    assert json.loads(run.config.read_text())["method"]["schedule_epochs"] == 2
    rates = [json.loads(run.metrics(t).read_text())["lr"] for t in (0, 1)]
    assert rates == pytest.approx([0.05, 0.05 * lr_factor(5, 6, 3)])  # 3 steps an epoch, 1 warm-up epoch
    with pytest.raises(ConfigMismatch, match="schedule_epochs: run has 2, asked 4"):
        pretrain_delores_m(store, "cos", **{**params, "epochs": 4})


def test_bad_parameters_fail_before_any_work(store, tmp_path):
    with pytest.raises(ValueError, match="encoder"):
        pretrain_delores_s(store, "bad", runs_dir=str(tmp_path), options={"encoder": "resnet"})
    with pytest.raises(ValueError, match="batch_size"):
        pretrain_delores_s(store, "bad", runs_dir=str(tmp_path), batch_size=64)
    assert not (tmp_path / "bad").exists()


def test_hear_module_serves_an_instance_checkpoint(store, tmp_path):
    from hear_decar import get_scene_embeddings, get_timestamp_embeddings, load_model

    run = pretrain_delores_s(store, "hear", runs_dir=str(tmp_path), **{**TINY, "epochs": 1})
    model = load_model(str(RunLayout(run).checkpoint(0)))
    audio = torch.randn(3, 16000) * 0.1
    scene = get_scene_embeddings(audio, model)
    assert scene.shape == (3, TINY["options"]["encoder_dim"]) and torch.isfinite(scene).all()
    frames, stamps = get_timestamp_embeddings(audio, model)
    assert frames.shape[:2] == stamps.shape and frames.shape[2] == TINY["options"]["encoder_dim"]
    assert len(torch.unique(scene, dim=0)) == 3
