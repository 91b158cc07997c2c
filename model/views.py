"""The two augmented views of DeLoRes-S, DeLoRes-M and SLICER (METHODS.md).

Each view: a random crop of `crop_frames` frames, mixup with a bank of past inputs (k-mix for
SLICER: a partner from another cluster), then a random resized crop. Everything works on
normalised log-mel batches (B, n_mels, T) as batched tensor ops on the batch's device. All
randomness comes from an explicit CPU `torch.Generator`: numbers are drawn on the CPU and then
moved, so a CPU and a GPU run draw the same crops, ratios and partners.

Mixing domain: the inputs are normalised log-mels y = (log p - mean) / std. The reference
methods mix these normalised inputs as BYOL-A does, log((1 - r) exp(y1) + r exp(y2)); exp(y) =
(p / exp(mean)) ** (1 / std) is a monotone transform of power, so this is a power-like mix (a
true power mix only when std = 1). This module does the same and no more.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.augment import random_crop
from model.config import InstanceConfig

Lengths = torch.Tensor | Sequence[int] | None


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) draws made on the CPU (same numbers on every device), then moved to `device`."""
    return torch.rand(shape, generator=generator).to(device)


# ---------------------------------------------------------------- random resized crop

def resized_crop(x: torch.Tensor, freq_factor: torch.Tensor, time_factor: torch.Tensor,
                 freq_pos: torch.Tensor, time_pos: torch.Tensor) -> torch.Tensor:
    """Per example, the window of size (F * freq_factor, T * time_factor) at relative position
    `pos` in [0, 1], resized back to (F, T) by bilinear interpolation; outside the input is 0.

    Along each axis of size S, a window of size w = S * factor starts at pos * (S - w) (pixel
    edges at integers): pos 0 is flush left, 1 flush right. A window larger than the input
    (factor > 1) gets a negative S - w, so its start lies in [S - w, 0]: the input is always
    wholly inside it, anywhere from its left to its right edge. All factor and pos tensors are (B,).
    """
    batch = x.shape[0]
    theta = x.new_zeros(batch, 2, 3)
    # affine_grid maps output coordinates in [-1, 1] (align_corners=False: pixel edges) to input
    # ones: in = factor * out + (2 * pos - 1) * (1 - factor) places the window as described.
    theta[:, 0, 0] = time_factor
    theta[:, 0, 2] = (2 * time_pos - 1) * (1 - time_factor)
    theta[:, 1, 1] = freq_factor
    theta[:, 1, 2] = (2 * freq_pos - 1) * (1 - freq_factor)
    images = x.unsqueeze(1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(1)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float] = (0.6, 1.5),
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Random resized crop of each example of (B, F, T): frequency and time window sizes are the
    input's times independent U(scale) factors, the window's position is uniform (resized_crop),
    and it is resized back to (F, T). Scale (1, 1) returns the input (to float tolerance)."""
    low, high = scale
    draws = _uniform((4, x.shape[0]), generator, x.device).to(x.dtype)
    factors = low + (high - low) * draws[:2]
    return resized_crop(x, factors[0], factors[1], draws[2], draws[3])


# ---------------------------------------------------------------- mixup

def log_mix(x: torch.Tensor, partner: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """log((1 - r) exp(x) + r exp(partner)) per example, r = ratio (B,) broadcast over the other
    axes; computed as logaddexp(x + log(1 - r), partner + log(r)), so r = 0 gives x and r = 1
    gives partner exactly and nothing overflows. See the module docstring on the domain."""
    r = ratio.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.logaddexp(x + torch.log1p(-r), partner.to(x.dtype) + torch.log(r))


def _nth_true(eligible: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of the (B, N) boolean `eligible` (each with at least one True), the column of a
    uniformly chosen True entry: the floor(u * count)-th one."""
    count = eligible.sum(dim=1)
    nth = (u * count).long().clamp(max=count - 1)
    return (eligible.cumsum(dim=1) > nth[:, None]).int().argmax(dim=1)


class MixBank:
    """A ring buffer of past inputs (size, n_mels, frames): the mixup and k-mix partners.

    Entries are stored as float16 so that a checkpoint of the bank is small and a resumed run mixes
    with exactly the values it saved. Each entry carries the k-mix cluster of its clip (-1: none).
    Filled entries are always rows [0, len(bank)). The bank lives on one device (`device`, or
    `.to(device)`); pushed batches are moved there, mixed batches stay on their own device.
    """

    def __init__(self, size: int, n_mels: int, frames: int, device: torch.device | str = "cpu"):
        self.size = size
        self.data = torch.zeros(size, n_mels, frames, dtype=torch.float16, device=device)
        self.clusters = torch.full((size,), -1, dtype=torch.long, device=device)
        self.filled = 0
        self.position = 0

    @property
    def device(self) -> torch.device:
        return self.data.device

    def to(self, device: torch.device | str) -> "MixBank":
        self.data = self.data.to(device)
        self.clusters = self.clusters.to(device)
        return self

    def __len__(self) -> int:
        return self.filled

    def push(self, x: torch.Tensor, clusters: torch.Tensor | None = None) -> None:
        """Write the batch (B, n_mels, frames) over the oldest entries, with its clips' clusters."""
        if x.shape[1:] != self.data.shape[1:]:
            raise ValueError(f"bank holds {tuple(self.data.shape[1:])} inputs, got {tuple(x.shape[1:])}")
        count = x.shape[0]
        ids = torch.full((count,), -1, dtype=torch.long) if clusters is None else clusters.long()
        kept = min(count, self.size)  # a batch larger than the bank leaves only its newest rows
        rows = (self.position + count - kept + torch.arange(kept)) % self.size  # as if written one by one
        rows = rows.to(self.device)
        self.data[rows] = x[count - kept:].detach().to(self.device, torch.float16)
        self.clusters[rows] = ids[count - kept:].to(self.device)
        self.filled = min(self.filled + count, self.size)
        self.position = (self.position + count) % self.size

    def _eligible(self, own: torch.Tensor, centroids: torch.Tensor | None, rule: str) -> torch.Tensor:
        """(B, filled) boolean: the entries each example may take as its k-mix partner."""
        bank = self.clusters[:self.filled]
        other = (bank[None, :] >= 0) & (bank[None, :] != own[:, None])
        if rule == "other":
            return other
        if rule != "farthest":
            raise ValueError(f"unknown k-mix partner rule {rule!r}")
        if centroids is None:
            raise ValueError("k-mix rule 'farthest' needs the centroids")
        k = centroids.shape[0]
        present = torch.zeros(k, dtype=torch.bool, device=bank.device)
        present[bank[bank >= 0]] = True
        centroids = torch.as_tensor(centroids).to(bank.device, torch.float32)  # spherical_kmeans gives numpy
        similarity = centroids[own] @ centroids.T  # (B, k)
        candidate = present[None, :] & (torch.arange(k, device=bank.device)[None, :] != own[:, None])
        farthest = similarity.masked_fill(~candidate, float("inf")).argmin(dim=1)
        return other & (bank[None, :] == farthest[:, None])

    def partners(self, batch: int, u: torch.Tensor, clusters: torch.Tensor | None = None,
                 centroids: torch.Tensor | None = None, rule: str = "farthest") -> torch.Tensor:
        """Bank rows (B,) of the partners, chosen by the U[0, 1) draws `u` (B,): uniform over the
        filled entries, or with `clusters` over the entries of another cluster (`rule`); an example
        whose rule leaves no entry falls back to any filled entry."""
        u = u.to(self.device)
        if clusters is None:
            return (u * self.filled).long().clamp(max=self.filled - 1)
        eligible = self._eligible(clusters.long().to(self.device), centroids, rule)
        eligible |= ~eligible.any(dim=1, keepdim=True)  # fallback: every entry
        return _nth_true(eligible, u)

    def mix(self, x: torch.Tensor, alpha: float, generator: torch.Generator | None = None,
            clusters: torch.Tensor | None = None, centroids: torch.Tensor | None = None,
            rule: Literal["farthest", "other"] = "farthest") -> torch.Tensor:
        """Mix each example of x (B, n_mels, frames) with a bank entry, log-domain, ratio alpha * U(0, 1).

        With `clusters` (each example's k-mix cluster) the partner comes from another cluster
        (rule "other": any other; "farthest": the non-empty cluster whose centroid, a row of
        `centroids` (k, D) tensor or array, is least similar to the example's own). An empty bank or
        alpha = 0 returns x. `generator` must be a CPU generator (draws are moved to the device)."""
        if self.filled == 0 or alpha == 0:
            return x
        draws = torch.rand((2, x.shape[0]), generator=generator)
        rows = self.partners(x.shape[0], draws[1], clusters, centroids, rule)
        partner = self.data[rows].to(x.device, x.dtype)
        return log_mix(x, partner, alpha * draws[0].to(x.device))

    def state_dict(self) -> dict:
        """CPU tensors and counters: restoring them continues mixing exactly."""
        return {"data": self.data.cpu(), "clusters": self.clusters.cpu(), "filled": self.filled,
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["data"].shape) != tuple(self.data.shape):
            raise ValueError(f"bank state holds {tuple(state['data'].shape)}, this bank {tuple(self.data.shape)}")
        self.data = state["data"].to(self.device, torch.float16)
        self.clusters = state["clusters"].to(self.device, torch.long)
        self.filled = int(state["filled"])
        self.position = int(state["position"])


# ---------------------------------------------------------------- k-mix clusters

def clip_vectors(x: torch.Tensor, lengths: Lengths = None) -> torch.Tensor:
    """Time average of each example of (B, F, T) over its valid frames -> (B, F).

    k-mix centroids must be fitted on the representation they are compared with (a defect of the
    reference code): the NORMALISED, un-augmented crops' vectors, never raw features."""
    batch, _, frames = x.shape
    if lengths is None:
        return x.mean(dim=2)
    valid = torch.as_tensor(lengths, device=x.device).long().reshape(batch).clamp(min=1, max=frames)
    inside = torch.arange(frames, device=x.device)[None, :] < valid[:, None]
    return (x * inside[:, None, :]).sum(dim=2) / valid[:, None].to(x.dtype)


def _unit_rows(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)  # an all-zero row stays zero (cosine 0 with everything)


def _plus_plus_seeds(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with the cosine distance 1 - cos: each next seed drawn with probability
    proportional to its squared distance from the nearest seed so far."""
    seeds = [int(rng.integers(len(points)))]
    distance = 1 - points @ points[seeds[0]]
    for _ in range(1, k):
        weight = np.maximum(distance, 0) ** 2
        total = weight.sum()
        pick = int(rng.choice(len(points), p=weight / total)) if total > 0 else int(rng.integers(len(points)))
        seeds.append(pick)
        distance = np.minimum(distance, 1 - points @ points[pick])
    return points[seeds].copy()


def _reseed_empty(points: np.ndarray, centroids: np.ndarray, labels: np.ndarray, similarity: np.ndarray) -> bool:
    """Move each empty cluster's centroid onto one of the points farthest from its own centroid
    (a different point each); returns whether any cluster was empty."""
    empty = np.setdiff1d(np.arange(len(centroids)), labels)
    if len(empty) == 0:
        return False
    farthest = np.argsort(similarity[np.arange(len(points)), labels], kind="stable")
    for cluster, point in zip(empty, farthest):
        centroids[cluster] = points[point]
        labels[point] = cluster
    return True


def spherical_kmeans(vectors: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Spherical k-means of (N, D) vectors: unit-norm centroids (k, D), points assigned by cosine.

    k-means++-style seeding from `seed`; empty clusters are re-seeded from the points farthest
    from their centroids; stops early once assignments no longer change. Deterministic for a seed."""
    points = _unit_rows(np.asarray(vectors, dtype=np.float64))
    if len(points) < k:
        raise ValueError(f"need at least k = {k} vectors, got {len(points)}")
    centroids = _plus_plus_seeds(points, k, np.random.default_rng(seed))
    labels = None
    for _ in range(iterations):
        similarity = points @ centroids.T
        new = similarity.argmax(axis=1)
        reseeded = _reseed_empty(points, centroids, new, similarity)
        if labels is not None and not reseeded and np.array_equal(new, labels):
            break
        labels = new
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, points)
        filled = np.bincount(labels, minlength=k) > 0
        centroids[filled] = _unit_rows(sums[filled])
    return centroids.astype(np.float32)


def assign_clusters(vectors: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cluster (B,) of each row of `vectors` (B, D): the centroid (k, D) of largest cosine."""
    centroids = torch.as_tensor(centroids).to(vectors.device, torch.float32)
    return (F.normalize(vectors.float(), dim=1) @ F.normalize(centroids, dim=1).T).argmax(dim=1)


# ---------------------------------------------------------------- the two views

def two_views(x: torch.Tensor, lengths: Lengths, cfg: InstanceConfig, bank: MixBank,
              generator: torch.Generator | None = None, clusters: torch.Tensor | None = None,
              centroids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views of each clip of x (B, n_mels, T): independent random crops of cfg.crop_frames,
    each mixed with the bank (cfg.mixup_alpha; k-mix with rule cfg.kmix_partner when `clusters`,
    the clips' k-mix clusters, are given), then random resized crop (cfg.rrc_scale).

    Returns (view1, view2, crops): the views (B, 1, n_mels, crop_frames) and the un-augmented
    first crops (B, n_mels, crop_frames). It does not push to the bank: the caller pushes `crops`
    (with `clusters`) once it has gathered them across processes."""
    crops, _ = random_crop(x, lengths, cfg.crop_frames, generator)
    other, _ = random_crop(x, lengths, cfg.crop_frames, generator)
    views = []
    for crop in (crops, other):
        mixed = bank.mix(crop, cfg.mixup_alpha, generator, clusters, centroids, cfg.kmix_partner)
        views.append(random_resized_crop(mixed, tuple(cfg.rrc_scale), generator).unsqueeze(1))
    return views[0], views[1], crops
