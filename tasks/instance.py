"""Stages of the instance methods' pre-training (DeLoRes-S, DeLoRes-M, SLICER): the seeded initial
state, and one training epoch (in this process, or on several joined by torch.distributed).

A checkpoint holds everything the next epoch continues from: the method's weights with its
teachers and queues, the optimiser's moments, the mixup bank and SLICER's k-mix centroids; its
`encoder` entry is what the benchmark and the HEAR module evaluate (model.instance.InstanceNet)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from model.config import InstanceConfig
from model.data import pad_batch
from model.decar import batchnorm_sample
from model.health import embedding_health
from model.instance import fit_kmix, instance_seed, make_optimiser, new_bank, train_instance_epoch
from model.instance_methods import build_method
from model.network import add_channel
from model.runtime import training_devices
from storage.atomic import write_json
from storage.checkpoint import load_checkpoint, save_checkpoint
from storage.features import ClipLoader, FeatureReader
from tasks.caching import stage
from tasks.launch import ddp_wrapper, rank_step_callback, run_processes


def initial_state(cfg: InstanceConfig, features: str, seed: int) -> dict:
    """The seeded method, an empty optimiser state and bank, and (SLICER) the k-mix centroids."""
    reader = FeatureReader(features)
    n_mels = int(reader.attrs["feature_config"]["n_mels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(instance_seed(seed, -1))
        method = build_method(cfg, n_mels)
    kmix = fit_kmix(ClipLoader(features), len(reader.usable), cfg, seed) if cfg.method == "slicer" else None
    return {"epoch": -1, "method": cfg.method, "instance_config": cfg.model_dump(mode="json"),
            "feature_config": reader.attrs["feature_config"], "norm": {"mean": reader.mean, "std": reader.std},
            "state": method.state_dict(), "encoder": method.encoder.state_dict(),
            "optimiser": make_optimiser(method, cfg).state_dict(), "bank": new_bank(cfg, n_mels).state_dict(),
            "kmix": None if kmix is None else torch.from_numpy(np.asarray(kmix, np.float32))}


@stage(name="initialize-instance-model", output="checkpoint")
def initialize_instance_model(checkpoint: str, features: str, config: dict, seed: int, key: str) -> str:
    save_checkpoint(checkpoint, initial_state(InstanceConfig(**config), features, seed), key)
    return checkpoint


@stage(name="train-instance-epoch", output="checkpoint")
def train_instance_stage(features: str, previous_checkpoint: str, checkpoint: str, config: dict, epoch: int,
                         seed: int, device: str, key: str, processes: int | None = None, loader_workers: int = 0,
                         progress=None) -> dict:
    """Train one epoch from the previous checkpoint's whole state; save the next one.

    One process per device of `training_devices(device, processes)`; more than one run as a
    torch.distributed group (DDP). `progress(fraction, loss)` is called now and then."""
    devices = training_devices(device, processes)
    job = dict(features=features, previous_checkpoint=previous_checkpoint, checkpoint=checkpoint, config=config,
               epoch=epoch, seed=seed, key=key, loader_workers=loader_workers)
    write_json(Path(checkpoint).with_name("train-job.json"), job)
    started = time.perf_counter()
    report = (lambda r: progress(r["fraction"], r["loss"])) if progress else None
    if len(devices) == 1:
        stats = instance_rank(job, 0, 1, torch.device(devices[0]), report)
    else:
        stats = run_processes(instance_rank, job, devices, report)
    seconds = time.perf_counter() - started
    return {**stats, "checkpoint": checkpoint, "seconds": seconds, "clips_per_second": stats["clips"] / seconds}


def instance_rank(job: dict, rank: int, world: int, device: torch.device, report=None) -> dict:
    """One process's part of an epoch; rank 0 saves the checkpoint (atomically, with its record)."""
    cfg = InstanceConfig(**job["config"])
    payload = load_checkpoint(job["previous_checkpoint"])
    n_mels = int(payload["feature_config"]["n_mels"])
    method = build_method(cfg, n_mels)
    method.load_state_dict(payload["state"])
    method.to(device)
    optimiser = make_optimiser(method, cfg)
    optimiser.load_state_dict(payload["optimiser"])
    bank = new_bank(cfg, n_mels, device)
    bank.load_state_dict(payload["bank"])
    kmix = None if payload["kmix"] is None else payload["kmix"].numpy()

    on_step, wrap = rank_step_callback(rank, world, report), ddp_wrapper(device, world)
    load_clip = ClipLoader(job["features"])
    stats = train_instance_epoch(method, optimiser, bank, load_clip, len(load_clip), cfg, job["seed"], job["epoch"],
                                 device, kmix, on_step, rank, world, wrap, job["loader_workers"])
    if rank == 0:
        health = representation_health(method.encoder, load_clip, job["seed"], cfg.batch_size, device)
        method.cpu()
        save_checkpoint(job["checkpoint"], {
            **{k: payload[k] for k in ("method", "instance_config", "feature_config", "norm", "kmix")},
            "epoch": job["epoch"], "state": method.state_dict(), "encoder": method.encoder.state_dict(),
            "optimiser": _cpu(optimiser.state_dict()), "bank": _cpu(bank.state_dict()),
            "extra": {"loss": stats["loss"], "steps": stats["steps"], "lr": stats["lr"], "terms": stats["terms"],
                      "processes": world,
                      "health": health}}, job["key"])
        stats["health"] = health
    return {k: stats.get(k) for k in ("loss", "steps", "clips", "lr", "terms", "health")} | {"processes": world}


HEALTH_CLIPS = 256  # the run's fixed sample whose embeddings the health block describes


@torch.no_grad()
def representation_health(encoder: torch.nn.Module, load_clip: ClipLoader, seed: int, batch_size: int,
                          device: torch.device) -> dict:
    """Spread, effective rank and distinct rows of the eval-mode embeddings of a fixed sample of
    clips: a collapsing instance method (every clip alike, or a few directions) shows here."""
    sample = batchnorm_sample(seed, len(load_clip), HEALTH_CLIPS)
    encoder.eval()
    rows = []
    for a in range(0, len(sample), batch_size):
        x, _, _ = pad_batch([(torch.as_tensor(load_clip(int(i))), 0) for i in sample[a:a + batch_size]])
        rows.append(encoder(add_channel(x).to(device)).float().cpu().numpy())
    encoder.train()
    return embedding_health(np.concatenate(rows))


def _cpu(state):
    """Tensors of a (nested) state dict moved to the CPU, so a checkpoint loads on any machine."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu(v) for v in state)
    return state
