"""DeLoRes-M (METHODS.md): a student and a momentum (EMA) teacher of the same encoder; MoCo v2's
instance loss with a queue of teacher keys, plus one Barlow Twins term per encoder block.

Choices (the authors' code, Sreyan88/LAPE, does the same; METHODS.md is silent):
- A block's feature is its output averaged over time only, then flattened over channels x
  frequency (B, C_i * F_i): frequency position stays information the block has to agree on
  (byola, 64 mel bins: 2048, 1024 and 512 dims).
- Each block has its own projector (3 layers of cfg.projector_dim), and the SAME projector maps
  the student's and the teacher's block feature. The teacher's encoder runs without gradient,
  but the projector is trained from both sides; a teacher copy of the projector would leave
  the projector half-trained and add nothing the EMA encoder does not already give.
- Not symmetric by default: student on view 1, teacher on view 2, as in the reference code; the
  teacher's keys of view 2 are what after_step enqueues. `symmetric` adds the reverse direction
  (the two losses summed, both directions' keys enqueued), as SLICER does.
- The instance head is the reference code's Linear by default; `instance_head="mlp"` is MoCo v2's
  two-layer head.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from model.config import InstanceConfig
from model.contrastive import Queue, barlow_twins_loss, ema_update, frozen_copy, info_nce, projector
from model.encoders import make_encoder


def time_averaged(block_output: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) -> (B, C * F): mean over time, channels x frequency flattened."""
    return block_output.mean(dim=3).flatten(1)


@torch.no_grad()
def block_dims(encoder: nn.Module, n_mels: int, frames: int) -> list[int]:
    """C_i * F_i of each block, read from one eval-mode pass on zeros (F_i depends on the
    encoder's pooling, which only a pass tells generally). Eval mode: no dropout draw and no
    batch-norm statistics update, so building a model leaves RNG and statistics as they were."""
    was_training = encoder.training
    encoder.eval()
    try:
        maps, _ = encoder.blocks(torch.zeros(2, 1, n_mels, frames))
    finally:
        encoder.train(was_training)
    return [time_averaged(m).shape[1] for m in maps]


def instance_head(in_dim: int, cfg: InstanceConfig) -> nn.Module:
    """linear: Linear in_dim -> instance_dim; mlp (MoCo v2): Linear in_dim -> in_dim, ReLU, Linear -> instance_dim."""
    if cfg.instance_head == "linear":
        return nn.Linear(in_dim, cfg.instance_dim)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, cfg.instance_dim))


class DeLoResM(nn.Module):
    """Student `encoder` + `head` (instance_head: out_dim -> instance_dim); frozen EMA copies
    `teacher_encoder`, `teacher_head`; `queue` of teacher keys; `projectors[i]` for block i.

    `encoder` (the student's) is what is kept after pre-training."""

    def __init__(self, cfg: InstanceConfig, n_mels: int = 64):
        super().__init__()
        self.cfg = cfg
        self.encoder = make_encoder(cfg, n_mels)
        self.head = instance_head(self.encoder.out_dim, cfg)
        self.projectors = nn.ModuleList(projector(d, cfg.projector_dim)
                                        for d in block_dims(self.encoder, n_mels, cfg.crop_frames))
        self.teacher_encoder = frozen_copy(self.encoder)
        self.teacher_head = frozen_copy(self.head)
        self.queue = Queue(cfg.queue_size, cfg.instance_dim)
        self._pending: torch.Tensor | None = None  # this step's teacher keys, enqueued by after_step

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        directions = [(view1, view2), (view2, view1)] if self.cfg.symmetric else [(view1, view2)]
        loss, stats, keys = 0.0, {}, []
        for student_view, teacher_view in directions:
            direction_loss, direction_stats, direction_keys = self._direction(student_view, teacher_view)
            loss = loss + direction_loss
            stats = {k: stats.get(k, 0.0) + v for k, v in direction_stats.items()}
            keys.append(direction_keys)
        self._pending = torch.cat(keys).detach().float()
        return loss, stats

    def _direction(self, student_view: torch.Tensor, teacher_view: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """The loss of the student on one view against the teacher on the other, and the teacher's keys."""
        student_maps, student_embedding = self.encoder.blocks(student_view)
        with torch.no_grad():
            teacher_maps, teacher_embedding = self.teacher_encoder.blocks(teacher_view)
            keys = self.teacher_head(teacher_embedding)
        instance = info_nce(self.head(student_embedding), keys, self.queue.keys, self.cfg.temperature)
        stats = {"instance": instance.item()}
        loss = instance
        for i, (proj, s, t) in enumerate(zip(self.projectors, student_maps, teacher_maps)):
            term = barlow_twins_loss(proj(time_averaged(s)), proj(time_averaged(t)), self.cfg.barlow_lambda)
            stats[f"block{i}"] = term.item()
            loss = loss + self.cfg.block_weight * term
        return loss, stats, keys

    @torch.no_grad()
    def after_step(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """EMA update of the teacher from the just-updated student, then enqueue the gathered keys."""
        ema_update(self.teacher_encoder, self.encoder, self.cfg.ema)
        ema_update(self.teacher_head, self.head, self.cfg.ema)
        if self._pending is not None:
            self.queue.enqueue(gather(self._pending))
            self._pending = None
