"""DECAR, the method: one epoch is extract -> cluster -> densify -> sampler -> fresh head -> train
(-> batch-norm statistics for the next extraction).

Pure functions over in-memory objects (networks, arrays, iterables of batches): no paths, no
Prefect. The pipeline's stages (tasks/) call exactly these; `reference_epoch` strings them
together in one place as the executable specification of an epoch (tests/test_decar.py checks
that the pipeline's epoch 0 equals it, labels and tensors).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from model.augment import SpecAugment, random_crop
from model.batchnorm import recompute_batchnorm
from model.clustering import cluster
from model.config import ClusterConfig, TrainConfig
from model.data import Clips, pad_batch
from model.network import DecarNet, add_channel
from model.sampler import UniformClusterSampler

# ---------------------------------------------------------------- seeds (the only place they are derived)

def cluster_seed(seed: int, epoch: int) -> int:
    """k-means seed of an epoch: a new one every epoch (METHODS.md)."""
    return seed * 1000 + epoch


def train_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's training: torch's RNG (head init, SpecAugment), crops and the sampler."""
    return seed * 1009 + epoch


def batchnorm_sample(seed: int, clips: int, count: int) -> np.ndarray:
    """The run's fixed sample of clip indices for batch-norm statistics (the same every epoch)."""
    rng = np.random.default_rng([seed, 2081])
    return np.sort(rng.choice(clips, size=min(count, clips), replace=False))


# ---------------------------------------------------------------- the steps of an epoch

@torch.no_grad()
def embed(net: DecarNet, batches: Iterable[tuple[np.ndarray, np.ndarray]], mean: float, std: float,
          device: torch.device, output: str = "embed") -> np.ndarray:
    """Rows in the order given (never shuffle: row i must stay clip i), in eval mode.

    `batches` yields (log-mel (B, n_mels, T) float32 zero-padded, lengths (B,)); a row of length 0
    (a clip without features) gets a zero vector. output: "embed" (z, clustered each epoch),
    "represent" (h, the representation kept after pre-training: the encoder's own pooling) or "meanmax"
    (the encoder's last map averaged over frequency, then mean and max over time, concatenated)."""
    forward = {"embed": net.embed, "represent": net.represent,
               "meanmax": lambda x: mean_max_over_time(net.encoder.feature_map(x))}[output]
    dim = net.config.embedding_dim if output == "embed" else net.encoder.out_dim * (1 + (output == "meanmax"))
    parts = []
    for batch, lengths in batches:
        out = np.zeros((len(lengths), dim), np.float32)
        valid = np.flatnonzero(np.asarray(lengths) > 0)
        if valid.size:
            x = (torch.from_numpy(batch[valid]) - mean) / std
            out[valid] = forward(add_channel(x).to(device)).float().cpu().numpy()
        parts.append(out)
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def mean_max_over_time(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, F', T') -> (B, 2C): averaged over frequency, then [mean over time, max over time]. Keeps
    how much of a clip has a feature beside whether it ever does (bench/science.py: better than the
    paper's global max for DECAR here)."""
    per_frame = feature_map.mean(dim=2)
    return torch.cat([per_frame.mean(dim=2), per_frame.amax(dim=2)], dim=1)


def densify_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Cluster ids -> 0..C-1 over the non-empty clusters only (the head has C outputs; PIC's C is
    emergent, and a k-means cluster can be empty)."""
    _, dense = np.unique(np.asarray(labels), return_inverse=True)
    return dense, int(dense.max()) + 1 if dense.size else 0


def make_optimisers(net: DecarNet, cfg: TrainConfig) -> tuple[torch.optim.SGD, torch.optim.SGD]:
    """SGD with momentum and weight decay for f and g; a plain SGD for the fresh head p (reference code)."""
    body = [p for name, p in net.named_parameters() if not name.startswith("head.")]
    return (torch.optim.SGD(body, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
            torch.optim.SGD(net.head.parameters(), lr=cfg.head_lr or cfg.lr))


def train_one_epoch(net: DecarNet, batches: Iterable, optimisers: tuple, augment: SpecAugment,
                    device: torch.device, crop_frames: int | None = None, generator: torch.Generator | None = None,
                    on_step: Callable[[int, float], None] | None = None,
                    memory_format: torch.memory_format = torch.contiguous_format, mixed_precision: bool = True) -> dict:
    """Cross-entropy of the head's predictions against the pseudo-labels, every parameter trained.

    `batches` yields (log-mel (B, n_mels, T), lengths (B,), labels (B,)). Returns the mean loss, the
    number of steps and the head's accuracy on the (augmented) training draws."""
    net.train()
    loss_fn = nn.CrossEntropyLoss()
    total, correct, seen, steps = 0.0, 0, 0, 0
    for steps, (x, lengths, y) in enumerate(batches, 1):
        # crops and SpecAugment run as batched tensor ops on the training device
        x, lengths, y = (t.to(device, non_blocking=True) for t in (x, lengths, y))
        if crop_frames:
            x, lengths = random_crop(x, lengths, crop_frames, generator)
        x = augment(x, lengths)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision and device.type == "cuda"):
            logits = net(add_channel(x).contiguous(memory_format=memory_format)).float()
        loss = loss_fn(logits, y)
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for optimiser in optimisers:
            optimiser.step()
        total += loss.item()
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if on_step:
            on_step(steps, total / steps)
    mean_loss = total / max(steps, 1)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss is {mean_loss}; lower the learning rate")
    return {"loss": mean_loss, "steps": steps, "accuracy": correct / max(seen, 1)}


@torch.no_grad()
def centroid_head(head: nn.Linear, z: np.ndarray, dense: np.ndarray, temperature: float) -> None:
    """Prototype head (DeepCluster-v2): row c = the normalised mean of cluster c's normalised z,
    scaled so that logits are about cos(z, c) / temperature. A random head starts every epoch at
    chance and the body then learns through noise for its first steps (bench/science.py)."""
    zn = nn.functional.normalize(torch.from_numpy(np.asarray(z, np.float32)), dim=1)
    sums = torch.zeros(head.out_features, zn.shape[1]).index_add_(0, torch.from_numpy(np.asarray(dense)), zn)
    scale = temperature * float(np.linalg.norm(z, axis=1).mean() + 1e-12)
    head.weight.copy_((nn.functional.normalize(sums, dim=1) / scale).to(head.weight.device))
    head.bias.zero_()


def rank_draws(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s share of the epoch's shuffled draws: every world-th one from position `rank`,
    cut to the same length on every rank (DDP steps in lockstep). Disjoint; world 1 keeps all."""
    return order[rank::world][: len(order) // world]


def train_on_pseudo_labels(net: DecarNet, load_clip: Callable[[int], np.ndarray], labels: np.ndarray,
                           cfg: TrainConfig, seed: int, epoch: int, device: torch.device,
                           on_step: Callable[[int, int, float], None] | None = None, rank: int = 0, world: int = 1,
                           wrap: Callable[[nn.Module], nn.Module] | None = None, loader_workers: int = 0,
                           z: np.ndarray | None = None) -> dict:
    """The training half of an epoch: densify -> sampler -> fresh head -> optimisers -> train.

    `load_clip(i)` gives labelled clip i's normalised log-mel (n_mels, frames); `labels[i]` its
    pseudo-label (`load_clip` must be picklable when `loader_workers` > 0). With `world` > 1 this
    runs on every rank of a torch.distributed group: each rank trains on its share of the draws with
    batch_size / world clips per step, through `wrap(net)` (DistributedDataParallel). `z[i]` (the
    epoch's extracted embeddings) is needed for `head_init="centroids"`. Deterministic for
    (seed, epoch, world) on the CPU."""
    if cfg.batch_size % world:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of the number of processes ({world})")
    torch.manual_seed(train_seed(seed, epoch))  # the same fresh head on every rank
    generator = torch.Generator().manual_seed(train_seed(seed, epoch) + 100_003 * rank)
    dense, clusters = densify_labels(labels)
    draws = cfg.samples_per_epoch or len(dense)
    order = rank_draws(UniformClusterSampler(dense, draws, seed=train_seed(seed, epoch)).indices(), rank, world)
    per_rank = cfg.batch_size // world
    batches = [order[a:a + per_rank].tolist() for a in range(0, len(order), per_rank)]
    if draws > cfg.batch_size and len(batches[-1]) < per_rank:
        batches.pop()  # full batches only (the last partial one would be a noisy step)
    head = net.reset_head(clusters)
    if cfg.head_init == "centroids":
        if z is None:
            raise ValueError("head_init='centroids' needs the epoch's embeddings z")
        centroid_head(head, z, dense, cfg.head_temperature)
    if rank:  # augmentation differs between ranks, as their clips do
        torch.manual_seed(train_seed(seed, epoch) + 100_003 * rank)
    loader = DataLoader(Clips(load_clip, dense), batch_sampler=batches, collate_fn=pad_batch,
                        num_workers=loader_workers, multiprocessing_context="spawn" if loader_workers else None,
                        persistent_workers=False, pin_memory=device.type == "cuda")
    optimisers = make_optimisers(net, cfg)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net.to(memory_format=memory_format)
    if cfg.sync_batchnorm and world > 1:
        check_sync_batchnorm(device)
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # the same DecarNet, its BN layers swapped
    model = wrap(net) if wrap else net
    if cfg.compile:
        model = torch.compile(model)
    try:
        stats = train_one_epoch(model, loader, optimisers, SpecAugment.from_config(cfg), device, cfg.crop_frames,
                                generator, on_step and (lambda step, loss: on_step(step, len(batches), loss)),
                                memory_format, cfg.mixed_precision)
    finally:
        revert_sync_batchnorm(net)  # precise BN and the checkpoint see plain BatchNorm2d again
        net.to(memory_format=torch.contiguous_format)
    if world > 1:  # the epoch's figures over all ranks
        totals = torch.tensor([stats["loss"], stats["accuracy"]], dtype=torch.float64)
        torch.distributed.all_reduce(totals)
        stats.update(loss=float(totals[0]) / world, accuracy=float(totals[1]) / world)
    return {**stats, "clusters": clusters, "draws": draws}


def check_sync_batchnorm(device: torch.device) -> None:
    """torch's SyncBatchNorm synchronises GPU batches only: say so before any work on the CPU."""
    if device.type != "cuda":
        raise ValueError("sync_batchnorm needs GPUs (torch's SyncBatchNorm supports CUDA devices only); on "
                         f"{device.type} processes keep per-process batch-norm statistics")


def revert_sync_batchnorm(module: nn.Module) -> None:
    """Swap every SyncBatchNorm child back to a BatchNorm2d holding the same tensors, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats).to(child.running_mean.device)
            plain.load_state_dict(child.state_dict())
            setattr(module, name, plain)
        else:
            revert_sync_batchnorm(child)


def precise_batchnorm(net: DecarNet, load_clip: Callable[[int], np.ndarray], sample: np.ndarray,
                      batch_size: int, device: torch.device) -> int:
    """Set every batch-norm layer's running statistics to their average over `sample` (clip indices).

    Extraction, the benchmark and the HEAR module run the network in eval mode. With the running
    statistics a fresh EfficientNet starts with, every input maps to the same embedding (METHODS.md);
    the exponential averages that training leaves behind describe the last few augmented batches.
    Running statistics do not enter training-mode forward passes, so replacing them changes nothing
    of the training itself. Returns the number of clips seen (0: sample empty, statistics untouched)."""
    if len(sample) == 0:
        return 0
    batches = (add_channel(pad_batch([(torch.as_tensor(load_clip(int(i))), 0)
                                      for i in sample[a:a + batch_size]])[0])
               for a in range(0, len(sample), batch_size))
    return recompute_batchnorm(net, batches, device, forward=lambda n, x: n.embed(x))


def should_stop(history: list[dict], patience: int) -> bool:
    """Early stop: the epoch-to-epoch NMI has not improved for `patience` epochs."""
    best, since = None, 0
    for m in history:
        if m["nmi"] is None:
            continue
        if best is None or m["nmi"] > best:
            best, since = m["nmi"], 0
        else:
            since += 1
    return since >= patience


# ---------------------------------------------------------------- the specification

def reference_epoch(net: DecarNet, logmels: list[np.ndarray], mean: float, std: float, cluster_cfg: ClusterConfig,
                    train_cfg: TrainConfig, seed: int, epoch: int, embed_batch: int,
                    device: torch.device = torch.device("cpu")) -> tuple[np.ndarray, dict]:
    """One DECAR epoch on clips held in memory; returns (pseudo-labels, training stats).

    The pipeline runs the same calls as separate cached stages (extraction sharded on Dask)."""
    def padded(a: int, b: int):
        width = max(len(x[0]) for x in logmels[a:b])
        batch = np.zeros((b - a, logmels[0].shape[0], width), np.float32)
        for i, x in enumerate(logmels[a:b]):
            batch[i, :, : x.shape[1]] = x
        return batch, np.array([x.shape[1] for x in logmels[a:b]])

    # 1. extract: z for every clip, eval mode, fixed order
    z = embed(net.eval(), (padded(a, min(a + embed_batch, len(logmels)))
                           for a in range(0, len(logmels), embed_batch)), mean, std, device)
    # 2. cluster: PCA-whitening + L2 + k-means (or PIC), a new seed each epoch
    labels = cluster(z, cluster_cfg, cluster_seed(seed, epoch))
    # 3-6. densify -> uniform-over-clusters sampler -> fresh head -> one epoch of SGD
    load_clip = lambda i: (logmels[i] - mean) / std  # noqa: E731
    stats = train_on_pseudo_labels(net, load_clip, labels, train_cfg, seed, epoch, device, z=z)
    # 7. eval-mode statistics for the next extraction: batch norm averaged over the run's fixed sample
    precise_batchnorm(net, load_clip, batchnorm_sample(seed, len(logmels), train_cfg.bn_clips),
                      train_cfg.batch_size, device)
    return labels, stats
