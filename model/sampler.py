"""Sampling uniformly over pseudo-labels (DeepCluster's UnifLabelSampler, fixed).

Indices are dataset ROWS and labels[i] is row i's pseudo-label: nothing assumes the
dataset is stored in cluster order. (The reference code returned original sample
ids into a dataset stored in cluster order, so its draws followed cluster sizes.)
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class UniformClusterSampler(Sampler[int]):
    """num_samples row indices per epoch, each non-empty cluster drawn equally often.

    Every cluster gets num_samples // C draws and a random subset of clusters one
    more (the remainder); within a cluster rows are drawn uniformly, with
    replacement only when the cluster is smaller than its quota. The order is
    shuffled. Deterministic for (seed, epoch).
    """

    def __init__(self, labels: np.ndarray, num_samples: int, seed: int = 0):
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        order = np.argsort(labels, kind="stable")
        _, starts = np.unique(labels[order], return_index=True)
        self.members = np.split(order, starts[1:])  # row indices of each non-empty cluster
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        clusters = len(self.members)
        quota = np.full(clusters, self.num_samples // clusters)
        quota[rng.choice(clusters, self.num_samples % clusters, replace=False)] += 1
        draws = [rng.choice(rows, size=q, replace=len(rows) < q)
                 for rows, q in zip(self.members, quota) if q > 0]
        drawn = np.concatenate(draws)
        rng.shuffle(drawn)
        return drawn

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
