"""DECAR's encoder behind the HEAR benchmark API (hearbenchmark.com).

    model = load_model("runs/<run>/epoch-NNN/checkpoint.pt")   # or load_model(None): random init
    scene = get_scene_embeddings(audio, model)                  # audio: (n, samples) at 16 kHz
    frames, timestamps_ms = get_timestamp_embeddings(audio, model)

Scene embedding: f's pooled output h (global max over the last feature map),
1280 * width dims, as in the paper's downstream evaluation; for a DeLoRes-S/-M or SLICER
checkpoint, its encoder's embedding (max + mean over time). Timestamp
embeddings: the last feature map max-pooled over frequency gives one vector
per block of about 32 log-mel frames (320 ms); these are linearly
interpolated to one vector every `timestamp_hop_ms` (50 ms), centred on the
timestamps returned. Clips are processed in fixed-size chunks in eval mode
(BatchNorm uses its running statistics), so a clip's embedding does not
depend on what else is in the batch.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.audio import log_mel
from model.config import FeatureConfig, ModelConfig
from model.instance import InstanceNet
from model.network import DecarNet, add_channel
from storage.checkpoint import load_checkpoint

__all__ = ["DecarEmbedding", "load_model", "get_scene_embeddings", "get_timestamp_embeddings"]


class DecarEmbedding(nn.Module):
    sample_rate = 16000

    def __init__(self, encoder: nn.Module, feature_config: FeatureConfig, mean: float = 0.0, std: float = 1.0,
                 chunk_size: int = 16, timestamp_hop_ms: float = 50.0):
        super().__init__()
        if feature_config.sample_rate != self.sample_rate:
            raise ValueError(f"the checkpoint's features are at {feature_config.sample_rate} Hz; "
                             f"the HEAR module expects {self.sample_rate} Hz")
        if not std > 0:
            raise ValueError(f"normalisation std must be positive, got {std}")
        self.encoder = encoder
        self.feature_config = feature_config
        self.mean, self.std = float(mean), float(std)
        self.chunk_size = chunk_size
        self.timestamp_hop_ms = timestamp_hop_ms
        self.scene_embedding_size = encoder.out_dim
        self.timestamp_embedding_size = encoder.out_dim
        self.eval()

    def inputs(self, audio: torch.Tensor) -> torch.Tensor:
        """(b, samples) -> normalised log-mel (b, 1, n_mels, frames) on the model's device."""
        features = log_mel(audio.float().cpu(), self.feature_config).to(self.device)
        return add_channel((features - self.mean) / self.std)

    def feature_map(self, audio: torch.Tensor) -> torch.Tensor:
        """(b, samples) -> last feature map (b, C, F', T') (an instance method's BYOL-A encoder: F' = 1)."""
        return self.encoder.feature_map(self.inputs(audio))

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device


def load_model(path: str | Path | None = None, width_mult: float = 1.0,
               mean: float = 0.0, std: float = 1.0) -> DecarEmbedding:
    """A decar-checkpoint-v1 file's encoder; None or "" gives a random-init encoder (baseline rows),
    normalising log-mels with `mean` / `std` (pass the task data's: random weights saturate otherwise)."""
    if not path:  # the random baseline is the same network every time
        net = DecarNet.random_init(ModelConfig(width_mult=width_mult), seed=0)
        return DecarEmbedding(net.encoder, FeatureConfig(), mean=mean, std=std)
    checkpoint = load_checkpoint(path)
    # a DECAR checkpoint, or an instance method's (DeLoRes-S/-M, SLICER: the checkpoint says which)
    net = InstanceNet.from_checkpoint(checkpoint) if "method" in checkpoint else DecarNet.from_checkpoint(checkpoint)
    norm = checkpoint.get("norm") or {}
    return DecarEmbedding(net.encoder, FeatureConfig(**checkpoint["feature_config"]),
                          mean=float(norm.get("mean", 0.0)), std=float(norm.get("std", 1.0)))


def _check_audio(audio: torch.Tensor) -> torch.Tensor:
    if audio.ndim != 2:
        raise ValueError(f"audio must be (n_clips, samples) at 16 kHz, got shape {tuple(audio.shape)}")
    return audio


def _chunks(audio: torch.Tensor, model: DecarEmbedding, fn) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():  # not inference_mode: its tensors cannot feed a trained probe
        return [fn(model.feature_map(audio[i:i + model.chunk_size]))
                for i in range(0, audio.shape[0], model.chunk_size)]


def get_scene_embeddings(audio: torch.Tensor, model: DecarEmbedding) -> torch.Tensor:
    """(n, samples) -> (n, scene_embedding_size) float32."""
    audio = _check_audio(audio)
    if audio.shape[0] == 0:
        return torch.zeros(0, model.scene_embedding_size, device=model.device)
    model.eval()
    with torch.no_grad():  # the encoder's own pooling: DECAR's global max, the instance methods' max + mean
        return torch.cat([model.encoder(model.inputs(audio[i:i + model.chunk_size]))
                          for i in range(0, audio.shape[0], model.chunk_size)])


def get_timestamp_embeddings(audio: torch.Tensor, model: DecarEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, samples) -> embeddings (n, T, timestamp_embedding_size), timestamps_ms (n, T), T >= 1."""
    audio = _check_audio(audio)
    n, samples = audio.shape
    config = model.feature_config
    steps = int(samples / config.sample_rate * 1000 // model.timestamp_hop_ms) + 1
    timestamps = torch.arange(steps, dtype=torch.float32) * model.timestamp_hop_ms
    frames = samples // config.hop_length + 1  # log-mel frame k is centred on sample k * hop
    frame_position = timestamps / 1000 * config.sample_rate / config.hop_length

    def per_step(fmap: torch.Tensor) -> torch.Tensor:
        blocks = torch.amax(fmap, dim=2)  # (b, C, T'): max over frequency
        # block j covers frames [j, j + 1) * frames / T'; interpolate between block centres
        per_block = frames / blocks.shape[2]
        position = (frame_position.to(blocks.device) + 0.5) / per_block - 0.5
        position = position.clamp(0, blocks.shape[2] - 1)
        low = position.floor().long()
        high = (low + 1).clamp(max=blocks.shape[2] - 1)
        weight = (position - low).to(blocks.dtype)
        mixed = blocks[:, :, low] * (1 - weight) + blocks[:, :, high] * weight
        return mixed.transpose(1, 2)  # (b, T, C)

    if n == 0:
        return (torch.zeros(0, steps, model.timestamp_embedding_size, device=model.device),
                torch.zeros(0, steps, device=model.device))
    embeddings = torch.cat(_chunks(audio, model, per_step))
    return embeddings, timestamps.to(embeddings.device).expand(n, steps).clone()
