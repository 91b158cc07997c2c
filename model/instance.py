"""The training epoch shared by the instance methods (DeLoRes-S, DeLoRes-M, SLICER).

One epoch: a seeded order of the clips (split over ranks without overlap) -> per batch two views
(random crops, mixup or k-mix with a bank of past inputs, random resized crop: model/views.py)
-> the method's loss (model/delores_s.py, model/delores_m.py, model/slicer.py) -> one AdamW or LARS
step at the scheduled rate (model/optimisers.py) -> the method's after-step (momentum teachers,
queues) -> the batch's crops into the bank.

Everything an epoch changes (the method's weights, teachers and queues, the optimiser's moments,
the bank) is state the caller saves, so epoch t rerun from epoch t-1's state gives the same
tensors. Pure torch/numpy: no paths, no Prefect.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from model.config import InstanceConfig
from model.data import Clips, pad_batch
from model.decar import rank_draws
from model.encoders import make_encoder
from model.optimisers import BIAS_LR_SCALE, LARS, is_weight, lr_factor
from model.views import MixBank, assign_clusters, clip_vectors, spherical_kmeans, two_views


def instance_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's clip order, views and dropout (epoch -1: the initial weights)."""
    return seed * 1013 + epoch + 1


def epoch_order(seed: int, epoch: int, clips: int, draws: int | None = None) -> np.ndarray:
    """The epoch's clips: shuffled passes over all clips, cut to `draws` (default: one pass)."""
    rng = np.random.default_rng([instance_seed(seed, epoch), 7])
    draws = draws or clips
    passes = [rng.permutation(clips) for _ in range(-(-draws // clips))]
    return np.concatenate(passes)[:draws]


def make_optimiser(method: nn.Module, cfg: InstanceConfig) -> torch.optim.Optimizer:
    """AdamW or LARS over the trainable parameters (teachers are updated by EMA, not by the
    optimiser). Each group's `lr_scale` times the scheduled rate is its rate (set_learning_rate)."""
    trainable = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimiser == "adamw":
        return torch.optim.AdamW([{"params": trainable, "lr_scale": 1.0}], lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = [p for p in trainable if is_weight(p)]
    others = [p for p in trainable if not is_weight(p)]
    return LARS([{"params": weights, "lr_scale": 1.0},
                 {"params": others, "lr_scale": BIAS_LR_SCALE, "weight_decay": 0.0}],
                lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_learning_rate(optimiser: torch.optim.Optimizer, cfg: InstanceConfig, step: int, steps_per_epoch: int) -> float:
    """Set every group's rate for global step `step` of the run; returns the base rate's value."""
    rate = cfg.lr
    if cfg.schedule == "cosine":
        if cfg.schedule_epochs is None:
            raise ValueError("schedule='cosine' needs schedule_epochs (InstanceConfig.planned_for(epochs))")
        rate *= lr_factor(step, cfg.schedule_epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch))
    for group in optimiser.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0)  # checkpoints from before lr_scale: one group at 1
    return rate


def new_bank(cfg: InstanceConfig, n_mels: int, device: torch.device | str = "cpu") -> MixBank:
    return MixBank(cfg.bank_size, n_mels, cfg.crop_frames).to(device)


def fit_kmix(load_clip: Callable[[int], np.ndarray], clips: int, cfg: InstanceConfig, seed: int) -> np.ndarray:
    """SLICER's k-mix centroids: spherical k-means on the time averages of a seeded sample of the
    normalised clips (the representation they are later compared with: METHODS.md's defects)."""
    rng = np.random.default_rng([seed, 4099])
    sample = np.sort(rng.choice(clips, size=min(cfg.kmix_sample, clips), replace=False))
    vectors = np.stack([np.asarray(load_clip(int(i)), np.float32).mean(axis=1) for i in sample])
    return spherical_kmeans(vectors, min(cfg.kmix_clusters, len(sample)), seed)


def all_gather_rows(world: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Concatenate a tensor's rows over the ranks (every rank gets all of them; identity on one)."""
    if world == 1:
        return lambda t: t

    def gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world)]
        torch.distributed.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    return gather


def train_instance_epoch(method: nn.Module, optimiser: torch.optim.Optimizer, bank: MixBank,
                         load_clip: Callable[[int], np.ndarray], clips: int, cfg: InstanceConfig, seed: int,
                         epoch: int, device: torch.device, kmix: np.ndarray | None = None,
                         on_step: Callable[[int, int, float], None] | None = None, rank: int = 0, world: int = 1,
                         wrap: Callable[[nn.Module], nn.Module] | None = None, loader_workers: int = 0) -> dict:
    """One epoch of `method` over the clips (`load_clip(i)`: clip i's normalised log-mel).

    `kmix` (SLICER): the k-mix centroids; partners then come from another cluster. With `world` > 1
    this runs on every rank of a torch.distributed group with batch_size / world clips per step
    through `wrap(method)` (DistributedDataParallel); queues and the bank get every rank's rows, so
    they are the same on all ranks and rank 0's copy is the whole state."""
    if cfg.batch_size % world:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of the number of processes ({world})")
    per_rank = cfg.batch_size // world
    order = rank_draws(epoch_order(seed, epoch, clips, cfg.samples_per_epoch), rank, world)
    batches = [order[a:a + per_rank].tolist() for a in range(0, len(order) - per_rank + 1, per_rank)]
    if not batches:
        raise ValueError(f"{clips} clips make no full batch of {per_rank} per process")
    torch.manual_seed(instance_seed(seed, epoch) + 100_003 * rank)  # dropout
    generator = torch.Generator().manual_seed(instance_seed(seed, epoch) + 100_003 * rank)
    centroids = None if kmix is None else torch.as_tensor(kmix, dtype=torch.float32, device=device)
    loader = DataLoader(Clips(load_clip, np.zeros(clips, np.int64)), batch_sampler=batches, collate_fn=pad_batch,
                        num_workers=loader_workers, multiprocessing_context="spawn" if loader_workers else None,
                        pin_memory=device.type == "cuda")
    gather = all_gather_rows(world)
    model = wrap(method) if wrap else method
    method.train()
    total, steps, terms = 0.0, 0, {}
    for steps, (x, lengths, _) in enumerate(loader, 1):
        x, lengths = x.to(device, non_blocking=True), lengths.to(device)
        clusters = None
        if centroids is not None:  # k-mix clusters of the clips, from their un-augmented normalised frames
            clusters = assign_clusters(clip_vectors(x, lengths), centroids)
        view1, view2, crops = two_views(x, lengths, cfg, bank, generator, clusters, centroids)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, stats = model(view1, view2)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        rate = set_learning_rate(optimiser, cfg, epoch * len(batches) + steps - 1, len(batches))
        optimiser.step()
        method.after_step(gather)
        bank.push(gather(crops), None if clusters is None else gather(clusters))
        total += float(loss.detach())
        for name, value in stats.items():
            terms[name] = terms.get(name, 0.0) + float(value)
        if on_step:
            on_step(steps, len(batches), total / steps)
    mean_loss = total / steps
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss is {mean_loss}; lower the learning rate")
    out = {"loss": mean_loss, "steps": steps, "clips": steps * cfg.batch_size, "lr": rate,
           "terms": {k: v / steps for k, v in terms.items()}}
    if world > 1:  # the epoch's mean loss over all ranks
        figure = torch.tensor([mean_loss], dtype=torch.float64)
        torch.distributed.all_reduce(figure)
        out["loss"] = float(figure[0]) / world
    return out


class InstanceNet(nn.Module):
    """The representation an instance method keeps: its student encoder, frozen for evaluation
    (the benchmark, the HEAR module). Same calls as DecarNet's frozen use: represent(x) -> h."""

    def __init__(self, config: InstanceConfig, encoder: nn.Module):
        super().__init__()
        self.config, self.encoder = config, encoder

    @classmethod
    def random_init(cls, config: InstanceConfig, seed: int, n_mels: int = 64) -> "InstanceNet":
        """A fresh encoder of the same kind, the same for the same seed, in eval mode."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config, make_encoder(config, n_mels)).eval()

    @classmethod
    def from_checkpoint(cls, payload: dict, device: torch.device | str = "cpu") -> "InstanceNet":
        config = InstanceConfig(**payload["instance_config"])
        encoder = make_encoder(config, int(payload["feature_config"]["n_mels"]))
        encoder.load_state_dict(payload["encoder"])
        return cls(config, encoder).to(device).eval()

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    embed = represent  # what precise batch-norm statistics run through
