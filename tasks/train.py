"""Model stages of pre-training: the seeded initial network, and one training epoch on pseudo-labels."""
from __future__ import annotations

import time

import torch

from model.config import ModelConfig, TrainConfig
from model.decar import batchnorm_sample, precise_batchnorm, train_on_pseudo_labels
from model.network import DecarNet
from model.runtime import resolve_device
from storage.checkpoint import load_checkpoint, save_checkpoint
from storage.faults import maybe_crash
from storage.features import FeatureReader
from storage.labels import read_labels
from tasks.caching import stage


def store_clips(features: str, rows=None):
    """(load_clip(i) -> normalised log-mel of the i-th of `rows` (default: the usable clips), count)."""
    reader = FeatureReader(features)
    rows = reader.usable if rows is None else rows
    return (lambda i: (reader.get(int(rows[i])) - reader.mean) / reader.std), len(rows)


@stage(name="initialize-model", output="checkpoint")
def initialize_model(checkpoint: str, features: str, model: dict, train: dict, seed: int, key: str) -> str:
    """The seeded initial weights that epoch 0 extracts with, batch-norm statistics recomputed on the
    run's fixed sample of the store (without that, every clip gets the same embedding)."""
    cfg = TrainConfig(**train)
    net = DecarNet.random_init(ModelConfig(**model), seed)
    load_clip, clips = store_clips(features)
    precise_batchnorm(net, load_clip, batchnorm_sample(seed, clips, cfg.bn_clips), cfg.batch_size,
                      torch.device("cpu"))
    reader = FeatureReader(features)
    save_checkpoint(checkpoint, {"epoch": -1, "model_config": net.config.model_dump(),
                                 "feature_config": reader.attrs["feature_config"],
                                 "norm": {"mean": reader.mean, "std": reader.std}, **net.state(), "clusters": 0}, key)
    return checkpoint


@stage(name="train-epoch", output="checkpoint")
def train_epoch(features: str, labels: str, previous_checkpoint: str, checkpoint: str,
                config: dict, epoch: int, seed: int, device: str, key: str,
                progress=None) -> dict:
    """Train the whole network one epoch on this epoch's pseudo-labels; save the checkpoint.

    `progress(fraction, loss)` is called now and then (the flow turns it into a UI artifact)."""
    cfg = TrainConfig(**config)
    dev = resolve_device(device)
    payload = load_checkpoint(previous_checkpoint)
    net = DecarNet.from_checkpoint(payload, dev)
    _, label_values, rows = read_labels(labels)
    load_clip, _ = store_clips(features, rows)

    def on_step(step: int, steps: int, loss: float) -> None:
        maybe_crash("train-step")
        if progress and (step % max(1, steps // 20) == 0 or step == steps):
            progress(step / steps, loss)

    started = time.perf_counter()
    stats = train_on_pseudo_labels(net, load_clip, label_values, cfg, seed, epoch, dev, on_step)
    load_any, clips = store_clips(features)
    precise_batchnorm(net, load_any, batchnorm_sample(seed, clips, cfg.bn_clips), cfg.batch_size, dev)
    seconds = time.perf_counter() - started
    net.cpu()
    save_checkpoint(checkpoint, {
        "epoch": epoch, "model_config": payload["model_config"], "feature_config": payload["feature_config"],
        "norm": payload["norm"], **net.state(), "clusters": stats["clusters"],
        "extra": {"loss": stats["loss"], "steps": stats["steps"], "draws": stats["draws"],
                  "accuracy": stats["accuracy"]}}, key)
    return {"checkpoint": checkpoint, "loss": stats["loss"], "accuracy": stats["accuracy"], "steps": stats["steps"],
            "clusters": stats["clusters"], "seconds": seconds,
            "clips_per_second": stats["steps"] * cfg.batch_size / max(seconds, 1e-9)}
