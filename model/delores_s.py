"""DeLoRes-S (METHODS.md): Barlow Twins on two augmented views of each clip.

One encoder, one projector, no teacher and no queue: the redundancy-reduction loss alone keeps
the embedding from collapsing. The interface is the one every instance method shares (see
model/instance_methods.py): forward(view1, view2) -> (loss, stats), after_step(gather).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from model.config import InstanceConfig
from model.contrastive import barlow_twins_loss, projector
from model.encoders import make_encoder


class DeLoResS(nn.Module):
    """encoder -> projector (3 x cfg.projector_dim) on both views; Barlow Twins loss with cfg.barlow_lambda.

    `encoder` is what is kept after pre-training; the projector is discarded."""

    def __init__(self, cfg: InstanceConfig, n_mels: int = 64):
        super().__init__()
        self.cfg = cfg
        self.encoder = make_encoder(cfg, n_mels)
        self.projector = projector(self.encoder.out_dim, cfg.projector_dim)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        z1 = self.projector(self.encoder(view1))
        z2 = self.projector(self.encoder(view2))
        loss = barlow_twins_loss(z1, z2, self.cfg.barlow_lambda)
        return loss, {"barlow": loss.item()}

    def after_step(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Nothing to do: no teacher, no queue."""
