"""DECAR's network: encoder f (EfficientNet-B0, 1-channel stem, global max pool),
projection g (Linear 1280->512 + ReLU) and a prediction head p made fresh each epoch."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import efficientnet_b0
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

from model.config import ModelConfig


class Encoder(nn.Module):
    """f: log-mel (B, 1, n_mels, T) -> h (B, 1280 * width) by global max pooling."""

    def __init__(self, width_mult: float = 1.0, clip_norm: bool = False):
        super().__init__()
        self.clip_norm = clip_norm
        if width_mult == 1.0:
            net = efficientnet_b0(weights=None)
        else:  # a narrower B0 keeps tests fast; same blocks, fewer channels
            settings, last = _efficientnet_conf("efficientnet_b0", width_mult=width_mult, depth_mult=1.0)
            net = EfficientNet(settings, dropout=0.2, last_channel=last)
        stem = net.features[0][0]
        net.features[0][0] = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride,
                                       stem.padding, bias=False)
        self.features = net.features
        self.out_dim = net.classifier[1].in_features

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (B, C, F', T'). With clip_norm, each clip's mean log-mel (its
        loudness, one scalar) is removed first: pseudo-labels then follow content, not level."""
        if self.clip_norm:
            x = x - x.mean(dim=(2, 3), keepdim=True)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(self.feature_map(x), dim=(2, 3))


class DecarNet(nn.Module):
    def __init__(self, config: ModelConfig, clusters: int | None = None):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.width_mult, config.clip_norm)
        self.projection = nn.Sequential(nn.Linear(self.encoder.out_dim, config.embedding_dim), nn.ReLU())
        self.head: nn.Linear | None = None
        if clusters:
            self.reset_head(clusters)

    @classmethod
    def random_init(cls, config: ModelConfig, seed: int) -> "DecarNet":
        """A fresh network, the same for the same seed, without touching the caller's RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config)

    @classmethod
    def from_checkpoint(cls, payload: dict, device: torch.device | str = "cpu") -> "DecarNet":
        """The network of a loaded checkpoint (encoder f and projection g; the head is per epoch), in eval mode."""
        net = cls(ModelConfig(**payload["model_config"]))
        net.encoder.load_state_dict(payload["encoder"])
        net.projection.load_state_dict(payload["projection"])
        return net.to(device).eval()

    def state(self) -> dict:
        """The tensors a checkpoint holds (encoder, projection, head or None)."""
        return {"encoder": self.encoder.state_dict(), "projection": self.projection.state_dict(),
                "head": None if self.head is None else self.head.state_dict()}

    def reset_head(self, clusters: int) -> nn.Linear:
        """A fresh prediction head p: weights N(0, 0.01), zero bias (DeepCluster/DECAR)."""
        head = nn.Linear(self.config.embedding_dim, clusters)
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        self.head = head.to(next(self.encoder.parameters()).device)
        return self.head

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """h: the 1280-d representation kept after pre-training."""
        return self.encoder(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """z = g(f(x)): what is clustered each epoch."""
        return self.projection(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("no prediction head: call reset_head(k) first")
        return self.head(self.embed(x))


def add_channel(batch: torch.Tensor) -> torch.Tensor:
    """(B, n_mels, T) -> (B, 1, n_mels, T)."""
    return batch.unsqueeze(1)
