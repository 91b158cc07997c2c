"""SLICER (METHODS.md): a student and a momentum (EMA) teacher; a symmetric MoCo instance loss with
one queue of teacher keys, plus Contrastive Clustering's cluster-level loss on the student's
cluster head.

Choices:
- The cluster loss uses the STUDENT's cluster probabilities of both views (Contrastive
  Clustering; the authors' SLICER code too). The teacher's cluster output would never enter the
  loss, so the teacher here is encoder + instance head only (no EMA copy of the cluster head).
- Both instance directions (student(v1) vs teacher(v2), student(v2) vs teacher(v1)) are scored
  against the queue as it was at the start of the step; after the step the keys of BOTH views are
  enqueued (view 2's, then view 1's). The reference code enqueues view 2's keys between the two
  directions, so the second direction finds a key of each query's own clip among its negatives;
  this order avoids that.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from model.config import InstanceConfig
from model.contrastive import Queue, cluster_contrastive_loss, ema_update, frozen_copy, info_nce, marginal_entropy
from model.encoders import make_encoder


class Slicer(nn.Module):
    """Student `encoder`, `head` (Linear out_dim -> instance_dim) and `cluster_head`
    (Linear out_dim -> out_dim, ReLU, Linear -> cluster_heads, softmax); frozen EMA copies
    `teacher_encoder`, `teacher_head`; `queue` of teacher keys.

    `encoder` (the student's) is what is kept after pre-training."""

    def __init__(self, cfg: InstanceConfig, n_mels: int = 64):
        super().__init__()
        self.cfg = cfg
        self.encoder = make_encoder(cfg, n_mels)
        dim = self.encoder.out_dim
        self.head = nn.Linear(dim, cfg.instance_dim)
        self.cluster_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, cfg.cluster_heads),
                                          nn.Softmax(dim=1))
        self.teacher_encoder = frozen_copy(self.encoder)
        self.teacher_head = frozen_copy(self.head)
        self.queue = Queue(cfg.queue_size, cfg.instance_dim)
        self._pending: torch.Tensor | None = None  # this step's teacher keys, enqueued by after_step

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        h1, h2 = self.encoder(view1), self.encoder(view2)
        with torch.no_grad():
            k1 = self.teacher_head(self.teacher_encoder(view1))
            k2 = self.teacher_head(self.teacher_encoder(view2))
        negatives, t = self.queue.keys, self.cfg.temperature
        instance = info_nce(self.head(h1), k2, negatives, t) + info_nce(self.head(h2), k1, negatives, t)
        p1, p2 = self.cluster_head(h1), self.cluster_head(h2)
        cluster = cluster_contrastive_loss(p1, p2, self.cfg.cluster_temperature)
        self._pending = torch.cat([k2, k1]).detach().float()
        with torch.no_grad():
            entropy = (marginal_entropy(p1) + marginal_entropy(p2)) / 2
        return instance + cluster, {"instance": instance.item(), "cluster": cluster.item(),
                                    "cluster_entropy": entropy.item()}

    @torch.no_grad()
    def after_step(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """EMA update of the teacher from the just-updated student, then enqueue the gathered keys
        (2B rows per process: view 2's keys, then view 1's)."""
        ema_update(self.teacher_encoder, self.encoder, self.cfg.ema)
        ema_update(self.teacher_head, self.head, self.cfg.ema)
        if self._pending is not None:
            self.queue.enqueue(gather(self._pending))
            self._pending = None
