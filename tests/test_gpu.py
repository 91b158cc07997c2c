"""GPU checks: skipped where torch sees no GPU (CI), run on machines that have one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flows import cache_features, pretrain_decar, pretrain_delores_m
from storage.layout import RunLayout
from tests.helpers import tone_manifest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.fixture(scope="module")
def store(tmp_path_factory, dask_address) -> str:
    data = tmp_path_factory.mktemp("gpu-data")
    return cache_features(str(tone_manifest(data, n=24, seconds=1.0)), data_dir=str(data), dask_address=dask_address)


def test_decar_trains_on_the_gpu(store, tmp_path, dask_address):
    run = pretrain_decar(store, "gpu", runs_dir=str(tmp_path), epochs=1, clusters=4, batch_size=8, width_mult=0.25,
                         device="cuda", allow_degenerate=True, dask_address=dask_address,
                         train_options={"channels_last": True})
    metrics = json.loads(RunLayout(run).metrics(0).read_text())
    assert metrics["loss"] == metrics["loss"]


def test_instance_method_trains_on_the_gpu(store, tmp_path):
    run = pretrain_delores_m(store, "gpu", runs_dir=str(tmp_path), epochs=1, batch_size=8, device="cuda",
                             options={"encoder_dim": 64, "projector_dim": 32, "queue_size": 16, "bank_size": 16,
                                      "crop_frames": 16})
    assert json.loads(RunLayout(run).metrics(0).read_text())["health"]["distinct_rows"] > 1


def test_gpu_benchmark_script_runs():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--quick", "--steps", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finite: True" in done.stdout
