"""Model stages of pre-training: the seeded initial network, and one training epoch on pseudo-labels
(in this process, or on several processes joined by torch.distributed: tasks/launch.py)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from model.config import ModelConfig, TrainConfig
from model.decar import batchnorm_sample, precise_batchnorm, train_on_pseudo_labels
from model.network import DecarNet
from model.runtime import training_devices
from storage.atomic import write_json
from storage.checkpoint import load_checkpoint, save_checkpoint
from storage.embeddings import read_embeddings
from storage.features import ClipLoader, FeatureReader
from storage.labels import read_labels
from tasks.caching import stage
from tasks.launch import ddp_wrapper, rank_step_callback, run_processes


@stage(name="initialize-model", output="checkpoint")
def initialize_model(checkpoint: str, features: str, model: dict, train: dict, seed: int, key: str) -> str:
    """The seeded initial weights that epoch 0 extracts with, batch-norm statistics recomputed on the
    run's fixed sample of the store (without that, every clip gets the same embedding)."""
    cfg = TrainConfig(**train)
    net = DecarNet.random_init(ModelConfig(**model), seed)
    reader = FeatureReader(features)
    load_clip = ClipLoader(features)
    precise_batchnorm(net, load_clip, batchnorm_sample(seed, len(load_clip), cfg.bn_clips), cfg.batch_size,
                      torch.device("cpu"))
    save_checkpoint(checkpoint, {"epoch": -1, "model_config": net.config.model_dump(),
                                 "feature_config": reader.attrs["feature_config"],
                                 "norm": {"mean": reader.mean, "std": reader.std}, **net.state(), "clusters": 0}, key)
    return checkpoint


@stage(name="train-epoch", output="checkpoint")
def train_epoch(features: str, embeddings: str, labels: str, previous_checkpoint: str, checkpoint: str,
                config: dict, epoch: int, seed: int, device: str, key: str, processes: int | None = None,
                loader_workers: int = 0, progress=None) -> dict:
    """Train the whole network one epoch on this epoch's pseudo-labels; save the checkpoint.

    One process per device of `training_devices(device, processes)`: more than one run as a
    torch.distributed group (DDP). `progress(fraction, loss)` is called now and then."""
    devices = training_devices(device, processes)
    job = dict(features=features, embeddings=embeddings, labels=labels, previous_checkpoint=previous_checkpoint,
               checkpoint=checkpoint, config=config, epoch=epoch, seed=seed, key=key, loader_workers=loader_workers)
    write_json(Path(checkpoint).with_name("train-job.json"), job)  # what `python -m tasks.train_rank` runs
    started = time.perf_counter()
    if len(devices) == 1:
        report = (lambda r: progress(r["fraction"], r["loss"])) if progress else None
        stats = train_rank(job, 0, 1, torch.device(devices[0]), report)
    else:
        stats = run_processes(train_rank, job, devices,
                              (lambda r: progress(r["fraction"], r["loss"])) if progress else None)
    seconds = time.perf_counter() - started
    batch = TrainConfig(**config).batch_size
    return {**stats, "checkpoint": checkpoint, "seconds": seconds,
            "clips_per_second": stats["steps"] * batch / max(seconds, 1e-9)}


def train_rank(job: dict, rank: int, world: int, device: torch.device, report=None) -> dict:
    """One process's part of a training epoch; rank 0 saves the checkpoint (atomically, with its record)."""
    cfg = TrainConfig(**job["config"])
    payload = load_checkpoint(job["previous_checkpoint"])
    net = DecarNet.from_checkpoint(payload, device)
    _, label_values, rows = read_labels(job["labels"])

    on_step, wrap = rank_step_callback(rank, world, report), ddp_wrapper(device, world)
    z = read_embeddings(job["embeddings"], rows) if cfg.head_init == "centroids" else None
    stats = train_on_pseudo_labels(net, ClipLoader(job["features"], rows), label_values, cfg, job["seed"],
                                   job["epoch"], device, on_step, rank, world, wrap, job["loader_workers"], z)
    if rank == 0:
        everything = ClipLoader(job["features"])
        precise_batchnorm(net, everything, batchnorm_sample(job["seed"], len(everything), cfg.bn_clips),
                          cfg.batch_size, device)
        net.cpu()
        save_checkpoint(job["checkpoint"], {
            "epoch": job["epoch"], "model_config": payload["model_config"], "feature_config": payload["feature_config"],
            "norm": payload["norm"], **net.state(), "clusters": stats["clusters"],
            "extra": {"loss": stats["loss"], "steps": stats["steps"], "draws": stats["draws"],
                      "accuracy": stats["accuracy"], "processes": world}}, job["key"])
    return {k: stats[k] for k in ("loss", "accuracy", "steps", "clusters", "draws")} | {"processes": world}
