"""Training-time augmentation of normalised log-mel batches (B, n_mels, T)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.transforms import FrequencyMasking, TimeMasking


def _lengths_list(lengths: torch.Tensor | Sequence[int] | None, batch: int, frames: int) -> list[int]:
    if lengths is None:
        return [frames] * batch
    out = [min(int(n), frames) for n in lengths]
    if len(out) != batch:
        raise ValueError(f"got {len(out)} lengths for a batch of {batch}")
    return out


def time_warp(spec: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Move a random centre frame c by w in [-W, W]: the parts before and after c are
    stretched/squeezed linearly (F.interpolate; the reference's torch.solve is gone)."""
    frames = spec.shape[-1]
    if max_shift < 1 or frames < 2 * max_shift + 2:
        return spec
    centre = int(torch.randint(max_shift + 1, frames - max_shift, ()))
    shift = int(torch.randint(-max_shift, max_shift + 1, ()))
    if shift == 0:
        return spec
    rows = spec.unsqueeze(0)  # (1, n_mels, frames): mel bins as channels, time as length
    left = F.interpolate(rows[..., :centre], size=centre + shift, mode="linear", align_corners=True)
    right = F.interpolate(rows[..., centre:], size=frames - centre - shift, mode="linear", align_corners=True)
    return torch.cat([left, right], dim=-1)[0]


class SpecAugment(nn.Module):
    """Time warp, frequency masks and time masks, each example drawn independently.

    Masks are filled with `fill` (0 = the dataset mean once log-mel is normalised).
    With `lengths`, warp and time masks stay within each example's valid frames.
    Identity in eval mode. Uses the global torch RNG: reproducible under torch.manual_seed.
    """

    def __init__(self, freq_masks: int = 2, freq_mask_bins: int = 30, time_masks: int = 2,
                 time_mask_frames: int = 40, time_warp: int = 5, fill: float = 0.0):
        super().__init__()
        self.freq_masks = freq_masks if freq_mask_bins > 0 else 0
        self.time_masks = time_masks if time_mask_frames > 0 else 0
        self.time_warp = time_warp
        self.fill = fill
        self.freq_mask = FrequencyMasking(freq_mask_bins, iid_masks=True)
        self.time_mask = TimeMasking(time_mask_frames, iid_masks=True)

    @classmethod
    def from_config(cls, config) -> "SpecAugment":
        """From a TrainConfig (freq_masks, freq_mask_bins, time_masks, time_mask_frames, time_warp)."""
        return cls(config.freq_masks, config.freq_mask_bins, config.time_masks,
                   config.time_mask_frames, config.time_warp)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        if not self.training or not (self.freq_masks or self.time_masks or self.time_warp):
            return x
        if x.dim() != 3:
            raise ValueError(f"expected (batch, n_mels, frames), got shape {tuple(x.shape)}")
        valid = _lengths_list(lengths, x.shape[0], x.shape[-1])
        x = x.clone()
        if self.time_warp:
            for i, n in enumerate(valid):
                x[i, :, :n] = time_warp(x[i, :, :n], self.time_warp)
        # torchaudio's iid masks draw one mask per leading index: use (B, 1, F, T)
        x = x.unsqueeze(1)
        for _ in range(self.freq_masks):
            x = self.freq_mask(x, self.fill)
        if self.time_masks:
            if lengths is None or all(n == x.shape[-1] for n in valid):
                for _ in range(self.time_masks):
                    x = self.time_mask(x, self.fill)
            else:  # ragged batch: mask each example's valid part on its own
                for i, n in enumerate(valid):
                    part = x[i:i + 1, :, :, :n]
                    for _ in range(self.time_masks):
                        part = self.time_mask(part, self.fill)
                    x[i:i + 1, :, :, :n] = part
        return x.squeeze(1)


def random_crop(x: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None, crop_frames: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One random crop_frames window per example from its valid frames.

    Clips shorter than crop_frames are kept whole and zero-padded. Returns the
    crops (B, n_mels, crop_frames) and their valid lengths (B,).
    """
    batch, mels, frames = x.shape
    valid = torch.tensor(_lengths_list(lengths, batch, frames), device=x.device)
    room = (valid - crop_frames).clamp(min=0)
    start = (torch.rand(batch, generator=generator).to(x.device) * (room + 1)).long().clamp(max=room)
    positions = start[:, None] + torch.arange(crop_frames, device=x.device)[None]
    inside = positions < valid[:, None]
    index = positions.clamp(max=frames - 1)[:, None, :].expand(batch, mels, crop_frames)
    crops = torch.where(inside[:, None, :], x.gather(2, index), torch.zeros((), dtype=x.dtype, device=x.device))
    return crops, inside.sum(dim=1)
