"""Encoders of the instance methods (DeLoRes-S, DeLoRes-M, SLICER; METHODS.md).

Both take a normalised log-mel batch (B, 1, n_mels, T) and return one embedding per clip,
max over time plus mean over time, so that a short loud event and a steady background both
count. `blocks(x)` also returns intermediate block outputs from the same forward pass, for
DeLoRes-M's per-block losses (a second pass would draw a second dropout mask and update
batch-norm statistics twice).
"""
from __future__ import annotations

import torch
from torch import nn

from model.config import InstanceConfig
from model.network import Encoder


def _pool_time(x: torch.Tensor) -> torch.Tensor:
    """(B, D, T) -> (B, D): max over time plus mean over time."""
    return x.amax(dim=2) + x.mean(dim=2)


def _remove_clip_mean(x: torch.Tensor) -> torch.Tensor:
    """Subtract each clip's mean log-mel (its loudness): as model.network.Encoder does with clip_norm."""
    return x - x.mean(dim=(2, 3), keepdim=True)


class ByolaEncoder(nn.Module):
    """BYOL-A's audio CNN: three conv3x3(64)-BN-ReLU-maxpool2 blocks, then per time step
    Linear(64 * n_mels/8 -> d)-ReLU-Dropout(0.3)-Linear(d -> d)-ReLU; embedding = max + mean over time.

    Frequency and time are pooled with floor division (odd sizes drop their last row or frame),
    so T must be at least 8 and n_mels at least 8.
    """

    def __init__(self, n_mels: int = 64, dim: int = 2048, clip_norm: bool = False):
        super().__init__()
        if n_mels < 8:
            raise ValueError(f"n_mels must be at least 8 (three 2x poolings), got {n_mels}")
        self.clip_norm = clip_norm
        self.n_mels = n_mels
        self.convs = nn.ModuleList(self._block(1 if i == 0 else 64) for i in range(3))
        self.block_channels = [64, 64, 64]
        self.mlp = nn.Sequential(nn.Linear(64 * (n_mels // 8), dim), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(dim, dim), nn.ReLU())
        self.out_dim = dim

    @staticmethod
    def _block(in_channels: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                             nn.MaxPool2d(2))

    def _frames(self, last: torch.Tensor) -> torch.Tensor:
        """Last block output (B, 64, F/8, T/8) -> one MLP vector per time step (B, dim, T/8)."""
        batch, channels, bins, frames = last.shape
        steps = last.permute(0, 3, 1, 2).reshape(batch, frames, channels * bins)
        return self.mlp(steps).transpose(1, 2)

    def _embed(self, last: torch.Tensor) -> torch.Tensor:
        return _pool_time(self._frames(last))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per time step vectors as a map (B, dim, 1, T/8): what the HEAR module's timestamps use."""
        out = _remove_clip_mean(x) if self.clip_norm else x
        for conv in self.convs:
            out = conv(out)
        return self._frames(out).unsqueeze(2)

    def blocks(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The three conv block outputs (B, 64, F_i, T_i) and the embedding (B, out_dim), in one pass."""
        if x.shape[-1] < 8:
            raise ValueError(f"need at least 8 frames, got {x.shape[-1]}")
        out = _remove_clip_mean(x) if self.clip_norm else x
        maps = []
        for conv in self.convs:
            out = conv(out)
            maps.append(out)
        return maps, self._embed(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)[1]


def _stage_channels(stage: nn.Module) -> int:
    """Output channels of one torchvision EfficientNet `features` stage."""
    last = stage if hasattr(stage, "out_channels") else stage[-1]
    return int(last.out_channels)


class EfficientNetEncoder(nn.Module):
    """DECAR's EfficientNet-B0 (model.network.Encoder) with the instance methods' pooling: the last
    feature map averaged over frequency, then max + mean over time -> (B, out_dim)."""

    block_stages = (2, 4, 6, 8)  # stride 4, 16, 32 and the last (1x1 conv) map

    def __init__(self, width_mult: float = 1.0, clip_norm: bool = False):
        super().__init__()
        self.encoder = Encoder(width_mult, clip_norm)
        self.out_dim = self.encoder.out_dim
        self.block_channels = [_stage_channels(self.encoder.features[i]) for i in self.block_stages]

    @staticmethod
    def _pool(feature_map: torch.Tensor) -> torch.Tensor:
        return _pool_time(feature_map.mean(dim=2))

    def blocks(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Outputs of features[2], [4], [6] and the last map (B, C_i, F_i, T_i) and the embedding, in one pass."""
        out = _remove_clip_mean(x) if self.encoder.clip_norm else x
        maps = []
        for index, stage in enumerate(self.encoder.features):
            out = stage(out)
            if index in self.block_stages:
                maps.append(out)
        return maps, self._pool(out)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.feature_map(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self.encoder.feature_map(x))


def make_encoder(cfg: InstanceConfig, n_mels: int = 64) -> nn.Module:
    """The encoder `cfg.encoder` names: byola (width cfg.encoder_dim) or efficientnet (cfg.width_mult)."""
    if cfg.encoder == "byola":
        return ByolaEncoder(n_mels, cfg.encoder_dim, cfg.clip_norm)
    if cfg.encoder == "efficientnet":
        return EfficientNetEncoder(cfg.width_mult, cfg.clip_norm)
    raise ValueError(f"unknown encoder {cfg.encoder!r}")
