"""One DECAR training epoch: fresh head, uniform-over-clusters sampler, SpecAugment, SGD."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from model.augment import SpecAugment, random_crop
from model.config import ModelConfig, TrainConfig
from model.network import add_channel
from model.sampler import UniformClusterSampler
from storage.checkpoint import load_checkpoint, save_checkpoint
from storage.faults import maybe_crash
from storage.features import FeatureReader
from storage.labels import read_labels
from tasks.caching import stage
from tasks.embed import network_from_checkpoint, resolve_device


class LabelledClips(Dataset):
    """Item i is (normalised log-mel, pseudo-label) of labelled clip i, addressed by store row."""

    def __init__(self, features: str, rows: np.ndarray, labels: np.ndarray):
        self.reader = FeatureReader(features)
        self.rows, self.labels = rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        x = (self.reader.get(int(self.rows[i])) - self.reader.mean) / self.reader.std
        return torch.from_numpy(x), int(self.labels[i])


def pad_batch(items):
    """Zero-pad to the longest clip in the batch (zero is the dataset mean after normalising)."""
    lengths = torch.tensor([x.shape[1] for x, _ in items])
    batch = torch.zeros(len(items), items[0][0].shape[0], int(lengths.max()))
    for i, (x, _) in enumerate(items):
        batch[i, :, : x.shape[1]] = x
    return batch, lengths, torch.tensor([y for _, y in items])


def make_optimisers(net, cfg: TrainConfig):
    body = [p for name, p in net.named_parameters() if not name.startswith("head.")]
    return (torch.optim.SGD(body, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
            torch.optim.SGD(net.head.parameters(), lr=cfg.head_lr or cfg.lr))


@stage(name="train-epoch")
def train_epoch(features: str, labels: str, previous_checkpoint: str, checkpoint: str,
                config: dict, epoch: int, seed: int, device: str, key: str,
                progress=None) -> dict:
    """Train the whole network one epoch on this epoch's pseudo-labels; save the checkpoint.

    `progress(fraction, loss)` is called now and then (the flow turns it into a UI artifact)."""
    cfg = TrainConfig(**config)
    dev = resolve_device(device)
    torch.manual_seed(seed * 1009 + epoch)
    generator = torch.Generator().manual_seed(seed * 1009 + epoch)
    payload = load_checkpoint(previous_checkpoint)
    net = network_from_checkpoint(payload, dev)
    _, label_values, rows = read_labels(labels)
    _, dense = np.unique(label_values, return_inverse=True)  # head outputs = non-empty clusters
    clusters = int(dense.max()) + 1
    net.reset_head(clusters)
    net.train()
    body_opt, head_opt = make_optimisers(net, cfg)
    augment = SpecAugment.from_config(cfg)
    draws = cfg.samples_per_epoch or len(rows)
    sampler = UniformClusterSampler(dense, draws, seed=seed * 1009 + epoch)
    batches = BatchSampler(sampler, cfg.batch_size, drop_last=draws > cfg.batch_size)
    loader = DataLoader(LabelledClips(features, rows, dense), batch_sampler=batches, collate_fn=pad_batch)
    loss_fn = nn.CrossEntropyLoss()
    steps, total, started = len(batches), 0.0, time.perf_counter()
    report_every = max(1, steps // 20)
    for step, (x, lengths, y) in enumerate(loader, 1):
        if cfg.crop_frames:
            x, lengths = random_crop(x, lengths, cfg.crop_frames, generator)
        x = augment(x, lengths)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = loss_fn(net(add_channel(x).to(dev)).float(), y.to(dev))
        body_opt.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)
        loss.backward()
        body_opt.step()
        head_opt.step()
        total += loss.item()
        maybe_crash("train-step")
        if progress and (step % report_every == 0 or step == steps):
            progress(step / steps, total / step)
    mean_loss = total / max(steps, 1)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"epoch {epoch}: training loss is {mean_loss}; lower lr ({cfg.lr})?")
    seconds = time.perf_counter() - started
    net.cpu()
    save_checkpoint(checkpoint, {
        "epoch": epoch, "model_config": payload["model_config"], "feature_config": payload["feature_config"],
        "norm": payload["norm"], "encoder": net.encoder.state_dict(), "projection": net.projection.state_dict(),
        "head": net.head.state_dict(), "clusters": clusters,
        "extra": {"loss": mean_loss, "steps": steps, "draws": draws}}, key)
    return {"checkpoint": checkpoint, "loss": mean_loss, "steps": steps, "seconds": seconds,
            "clips_per_second": steps * cfg.batch_size / max(seconds, 1e-9)}


def initial_checkpoint(path: str, model_config: ModelConfig, feature_config: dict, norm: dict,
                       seed: int, key: str) -> str:
    """The seeded initial weights that epoch 0 extracts with."""
    from model.network import DecarNet

    torch.manual_seed(seed)
    net = DecarNet(model_config)
    save_checkpoint(path, {"epoch": -1, "model_config": model_config.model_dump(),
                           "feature_config": feature_config, "norm": norm,
                           "encoder": net.encoder.state_dict(), "projection": net.projection.state_dict(),
                           "head": None, "clusters": 0}, key)
    return path
