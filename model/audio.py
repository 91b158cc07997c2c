"""Log-mel front end shared by pre-training, benchmarks and the HEAR module."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torchaudio

from model.config import FeatureConfig


@lru_cache(maxsize=4)
def mel_transform(config: FeatureConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=config.sample_rate,
        n_fft=config.n_fft,
        win_length=config.win_length,
        hop_length=config.hop_length,
        f_min=config.f_min,
        f_max=config.f_max,
        n_mels=config.n_mels,
        power=config.power,
    )


def log_mel(waveform: np.ndarray | torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """Mono waveform (samples,) or batch (n, samples) at config.sample_rate -> (..., n_mels, frames)."""
    x = torch.as_tensor(waveform, dtype=torch.float32)
    with torch.no_grad():
        return torch.log(mel_transform(config)(x) + config.log_eps)


def frame_count(samples: int, config: FeatureConfig) -> int:
    return samples // config.hop_length + 1
