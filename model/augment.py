"""Training-time augmentation of normalised log-mel batches (B, n_mels, T).

SpecAugment works on the whole batch as tensor ops on the device the batch is on (CPU or GPU):
no per-example Python loop and no host round trip.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _lengths_list(lengths: torch.Tensor | Sequence[int] | None, batch: int, frames: int) -> list[int]:
    if lengths is None:
        return [frames] * batch
    out = [min(int(n), frames) for n in lengths]
    if len(out) != batch:
        raise ValueError(f"got {len(out)} lengths for a batch of {batch}")
    return out


def _lengths_tensor(lengths: torch.Tensor | Sequence[int] | None, batch: int, frames: int,
                    device: torch.device) -> torch.Tensor:
    """Valid frames per example as a (B,) int64 tensor on `device`, at most `frames`."""
    if lengths is None:
        return torch.full((batch,), frames, dtype=torch.long, device=device)
    valid = torch.as_tensor(lengths, device=device).long().reshape(-1)
    if valid.shape[0] != batch:
        raise ValueError(f"got {valid.shape[0]} lengths for a batch of {batch}")
    return valid.clamp(min=0, max=frames)


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=device, dtype=torch.float32, generator=generator)


def mask_intervals(size: torch.Tensor, max_width: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per example, drawn as torchaudio's `mask_along_axis_iid` draws it along an axis of
    `size` (B,) positions: width w = floor(U * max_width), start = trunc(V * (size - U * max_width)),
    U, V ~ U[0, 1). Returns [start, end) as (B,) int64 tensors; callers clip to [0, size)."""
    value = _rand(tuple(size.shape), size.device, generator) * max_width
    start = (_rand(tuple(size.shape), size.device, generator) * (size - value)).long()
    return start, start + value.long()


def warp_draws(lengths: torch.Tensor, max_shift: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of n = lengths valid frames, a centre c ~ U{W+1, ..., n-W-1} and a shift
    w ~ U{-W, ..., W} (W = max_shift). Examples too short to warp (n < 2W+2) get c = n, w = 0."""
    n = lengths.long()
    rows = tuple(n.shape)
    warpable = n >= 2 * max_shift + 2
    span = (n - 2 * max_shift - 1).clamp(min=1)  # number of possible centres
    centre = max_shift + 1 + (_rand(rows, n.device, generator) * span).long().clamp(max=span - 1)
    shift = (_rand(rows, n.device, generator) * (2 * max_shift + 1)).long().clamp(max=2 * max_shift) - max_shift
    return torch.where(warpable, centre, n), torch.where(warpable, shift, torch.zeros_like(shift))


def warp_frames(x: torch.Tensor, centre: torch.Tensor, shift: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Move frame c = centre of each example (B, n_mels, T) by w = shift within its n = lengths
    valid frames: [0, c) is stretched linearly onto [0, c+w) and [c, n) onto [c+w, n), with
    aligned corners as F.interpolate(mode="linear", align_corners=True) does. Frames at or beyond
    n, and every output frame that lands on a whole source frame, are exact copies (finite values);
    w = 0 is the identity. Needs 1 <= c+w and c+w < n where w != 0."""
    batch, mels, frames = x.shape
    c, w, n = centre.long()[:, None], shift.long()[:, None], lengths.long()[:, None]
    t = torch.arange(frames, device=x.device)[None]
    left = t < c + w
    out_right = n - c - w
    # source position of output frame t as the exact fraction num / den
    num = torch.where(left, t * (c - 1), c * (out_right - 1).clamp(min=1) + (t - c - w) * (n - c - 1))
    den = torch.where(left, c + w - 1, out_right - 1).clamp(min=1)
    index = num.div(den, rounding_mode="floor")
    rest = num - index * den
    inside = t < n
    index = torch.where(inside, index, t)  # padding: its own frame, weight 0
    rest = torch.where(inside, rest, torch.zeros_like(rest))
    upper = (index + (rest > 0).long()).clamp(max=frames - 1)  # = index at whole positions: exact copies
    warped = x.gather(2, index[:, None, :].expand(batch, mels, frames))
    weight = (rest.to(x.dtype) / den.to(x.dtype))[:, None, :]
    return warped.lerp_(x.gather(2, upper[:, None, :].expand(batch, mels, frames)), weight)


def time_warp(x: torch.Tensor, max_shift: int, lengths: torch.Tensor | Sequence[int] | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Time warp of each example (warp_draws, then warp_frames): a random centre frame
    c in [W+1, n-W) of its n valid frames moves by w in [-W, W], both sides stretched linearly.
    Examples with fewer than 2W+2 valid frames and all padding are left as they are.

    `x` is (B, n_mels, T) or one (n_mels, T) spectrogram; returns a tensor of the same shape.
    """
    if x.dim() == 2:
        return time_warp(x.unsqueeze(0), max_shift, lengths, generator)[0]
    batch, _, frames = x.shape
    if max_shift < 1 or frames < 2 * max_shift + 2:
        return x
    valid = _lengths_tensor(lengths, batch, frames, x.device)
    centre, shift = warp_draws(valid, max_shift, generator)
    return warp_frames(x, centre, shift, valid)


def frequency_shift(x: torch.Tensor, max_bins: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Move each example's spectrogram (B, n_mels, T) up or down by s ~ U{-S..S} mel bins (S =
    max_bins), zero (the dataset mean) shifted in: a crude pitch/formant shift, so that pseudo-labels
    learnt from one voice carry over to a slightly higher or lower one (bench/science.py)."""
    batch, mels, frames = x.shape
    shift = (_rand((batch,), x.device, generator) * (2 * max_bins + 1)).long().clamp(max=2 * max_bins) - max_bins
    source = torch.arange(mels, device=x.device)[None] - shift[:, None]  # output bin f reads bin f - s
    inside = (source >= 0) & (source < mels)
    moved = x.gather(1, source.clamp(0, mels - 1)[:, :, None].expand(batch, mels, frames))
    return torch.where(inside[:, :, None], moved, torch.zeros((), dtype=x.dtype, device=x.device))


class SpecAugment(nn.Module):
    """Time warp, frequency masks and time masks, each example drawn independently, for the whole
    batch at once on the batch's device.

    Masks are drawn as torchaudio's FrequencyMasking/TimeMasking with iid_masks draw them: per
    example and per mask a width w = floor(U * max) (uniform on 0..max-1) and a start
    trunc(V * (size - U * max)); time masks use each example's valid frames as the size and are
    clipped to them. Masks are filled with `fill` (0 = the dataset mean once log-mel is normalised).
    With `lengths`, warp and time masks stay within each example's valid frames. Identity in eval
    mode. Draws from `generator` (on the batch's device) when given, else from the device's global
    RNG: reproducible under torch.manual_seed.
    """

    def __init__(self, freq_masks: int = 2, freq_mask_bins: int = 30, time_masks: int = 2,
                 time_mask_frames: int = 40, time_warp: int = 5, fill: float = 0.0, freq_shift: int = 0):
        super().__init__()
        self.freq_shift = freq_shift
        self.freq_masks = freq_masks if freq_mask_bins > 0 else 0
        self.time_masks = time_masks if time_mask_frames > 0 else 0
        self.freq_mask_bins = freq_mask_bins
        self.time_mask_frames = time_mask_frames
        self.time_warp = time_warp
        self.fill = fill

    @classmethod
    def from_config(cls, config) -> "SpecAugment":
        """From a TrainConfig (freq_masks, freq_mask_bins, time_masks, time_mask_frames, time_warp, freq_shift)."""
        return cls(config.freq_masks, config.freq_mask_bins, config.time_masks,
                   config.time_mask_frames, config.time_warp, freq_shift=config.freq_shift)

    def masks(self, batch: int, mels: int, frames: int, lengths: torch.Tensor | Sequence[int] | None = None,
              device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        """The (B, n_mels, T) boolean mask of the frequency and time masks that forward fills."""
        device = torch.device(device)
        valid = _lengths_tensor(lengths, batch, frames, device)[:, None]
        rows = torch.zeros(batch, mels, dtype=torch.bool, device=device)
        cols = torch.zeros(batch, frames, dtype=torch.bool, device=device)
        f = torch.arange(mels, device=device)[None]
        t = torch.arange(frames, device=device)[None]
        size = torch.full((batch,), float(mels), device=device)
        for _ in range(self.freq_masks):
            start, end = mask_intervals(size, self.freq_mask_bins, generator)
            rows |= (f >= start[:, None]) & (f < end[:, None])
        size = valid[:, 0].float()
        for _ in range(self.time_masks):
            start, end = mask_intervals(size, self.time_mask_frames, generator)
            cols |= (t >= start[:, None]) & (t < end[:, None])
        return (rows[:, :, None] | cols[:, None, :]) & (t < valid)[:, None, :]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training or not (self.freq_masks or self.time_masks or self.time_warp or self.freq_shift):
            return x
        if x.dim() != 3:
            raise ValueError(f"expected (batch, n_mels, frames), got shape {tuple(x.shape)}")
        batch, mels, frames = x.shape
        valid = _lengths_tensor(lengths, batch, frames, x.device)
        out = time_warp(x, self.time_warp, valid, generator) if self.time_warp else x
        if self.freq_shift:  # after the warp: no draw changes when it is off (the paper's stream)
            out = frequency_shift(out, self.freq_shift, generator)
        out = out.clone() if out is x else out  # never write into the caller's batch
        if self.freq_masks or self.time_masks:
            out.masked_fill_(self.masks(batch, mels, frames, valid, x.device, generator), self.fill)
        return out


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
