"""Training on several processes joined by torch.distributed (gloo on the CPU): real process
groups, a real flow, a real kill of one rank."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flows import cache_features, pretrain_decar
from model.config import ModelConfig, TrainConfig
from model.decar import rank_draws, train_on_pseudo_labels
from model.network import DecarNet
from model.runtime import training_devices
from storage.checkpoint import load_checkpoint
from storage.features import ClipLoader
from storage.layout import RunLayout
from tests.helpers import tone_manifest

TWO = dict(epochs=2, clusters=4, batch_size=8, width_mult=0.25, samples_per_epoch=48, device="cpu", processes=2,
           allow_degenerate=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory, dask_address) -> str:
    data = tmp_path_factory.mktemp("data")
    return cache_features(str(tone_manifest(data, n=24, seconds=1.0)), data_dir=str(data), dask_address=dask_address)


def tensors(path) -> dict:
    payload = load_checkpoint(path)
    return {f"{part}.{k}": v for part in ("encoder", "projection", "head") for k, v in payload[part].items()}


def test_rank_shares_are_disjoint_and_cover_the_draws():
    order = np.random.default_rng(0).permutation(1000)
    shares = [rank_draws(order, r, 4) for r in range(4)]
    assert sum(len(s) for s in shares) == 1000 and len(set(np.concatenate(shares))) == 1000
    assert [len(s) for s in (rank_draws(order[:10], r, 3) for r in range(3))] == [3, 3, 3]  # lockstep
    assert np.array_equal(rank_draws(order, 0, 1), order)


def test_devices_from_parameters():
    assert training_devices("cpu", 3) == ["cpu"] * 3 and training_devices("cpu", None) == ["cpu"]
    if not torch.cuda.is_available():
        assert training_devices("auto", None) == ["cpu"]
        with pytest.raises(RuntimeError, match="no GPU"):
            training_devices("cuda:0,1", None)


def test_loader_workers_give_the_same_training(store):
    """Same rows in the same order with and without loader workers: the same trained tensors."""
    loader = ClipLoader(store)
    labels = np.arange(len(loader)) % 4
    cfg = TrainConfig(batch_size=8, samples_per_epoch=32, crop_frames=48)
    outcomes = []
    for workers in (0, 2):
        net = DecarNet.random_init(ModelConfig(width_mult=0.25), seed=0)
        stats = train_on_pseudo_labels(net, loader, labels, cfg, seed=0, epoch=0, device=torch.device("cpu"),
                                       loader_workers=workers)
        outcomes.append((stats["loss"], net.state_dict()))
    assert outcomes[0][0] == outcomes[1][0]
    assert all(torch.equal(outcomes[0][1][k], outcomes[1][1][k]) for k in outcomes[0][1])


def test_channels_last_trains_the_same_network(store):
    """The channels-last option changes memory layout, not the method: the same trained tensors (to
    float tolerance: convolutions sum in another order), saved in the default layout."""
    loader = ClipLoader(store)
    labels = np.arange(len(loader)) % 4
    nets, losses = [], []
    for channels_last in (False, True):
        torch.manual_seed(0)
        net = DecarNet.random_init(ModelConfig(width_mult=0.25), seed=0)
        cfg = TrainConfig(batch_size=8, samples_per_epoch=16, crop_frames=48, channels_last=channels_last, lr=1e-3)
        losses.append(train_on_pseudo_labels(net, loader, labels, cfg, seed=0, epoch=0,
                                             device=torch.device("cpu"))["loss"])
        nets.append(net)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name
        assert b.is_contiguous(), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal; GPUs run SyncBatchNorm")
def test_sync_batchnorm_on_cpu_processes_is_refused_before_any_work(store, tmp_path):
    with pytest.raises(ValueError, match="sync_batchnorm needs GPUs"):
        pretrain_decar(store, "sync", runs_dir=str(tmp_path), **TWO, train_options={"sync_batchnorm": True})
    assert not (tmp_path / "sync").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_sync_batchnorm_on_two_gpus(store, tmp_path):
    run = pretrain_decar(store, "sync", runs_dir=str(tmp_path), **{**TWO, "device": "cuda:0,1", "epochs": 1},
                         train_options={"sync_batchnorm": True})
    assert json.loads(RunLayout(run).metrics(0).read_text())["processes"] == 2


def test_two_processes_train_resume_after_a_dead_rank_and_match(store, tmp_path, dask_address, monkeypatch):
    whole = RunLayout(pretrain_decar(store, "two", runs_dir=str(tmp_path), dask_address=dask_address, **TWO))
    metrics = json.loads(whole.metrics(1).read_text())
    assert metrics["processes"] == 2 and np.isfinite(metrics["loss"])
    assert load_checkpoint(whole.checkpoint(1))["extra"]["processes"] == 2

    monkeypatch.setenv("DECAR_FAULT", "train-step:rank1")  # rank 1 SIGKILLs itself at its 3rd step
    monkeypatch.setenv("DECAR_FAULT_SKIP", "2")
    with pytest.raises(Exception, match="rank 1 of 2\\) died"):
        pretrain_decar(store, "killed", runs_dir=str(tmp_path), dask_address=dask_address, **TWO)
    killed = RunLayout(tmp_path / "killed")
    assert not killed.checkpoint(0).exists()  # nothing half-written under the final name
    monkeypatch.delenv("DECAR_FAULT")
    pretrain_decar(store, "killed", runs_dir=str(tmp_path), dask_address=dask_address, **TWO)
    for epoch in (0, 1):
        a, b = tensors(whole.checkpoint(epoch)), tensors(killed.checkpoint(epoch))
        assert all(torch.equal(a[k], b[k]) for k in a), epoch
