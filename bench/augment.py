"""SpecAugment speed: the batched implementation (model.augment) vs the previous per-example one,
side by side in one run, on batches of log-mel (default 64 x 64 mels x 1001 frames = 10 s clips).

The previous implementation (time warp per example with F.interpolate, torchaudio's iid masks, a
Python loop per example for ragged batches' time masks) is kept here only for this comparison.
Two batches: every clip full length (lengths None), and a ragged one (valid lengths 500..1001).
Default SpecAugment settings (2 x 30 bins, 2 x 40 frames, warp 5). Prints ms per batch (median of
--repeats, old and new interleaved) and the speed-up.

    .venv/bin/python bench/augment.py                  # ~1 min on 2 cores
    .venv/bin/python bench/augment.py --device cuda    # both on a GPU (synchronised timings)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torchaudio.transforms import FrequencyMasking, TimeMasking  # noqa: E402

from model.augment import SpecAugment  # noqa: E402


def _old_lengths_list(lengths, batch: int, frames: int) -> list[int]:
    if lengths is None:
        return [frames] * batch
    return [min(int(n), frames) for n in lengths]


def _old_time_warp(spec: torch.Tensor, max_shift: int) -> torch.Tensor:
    frames = spec.shape[-1]
    if max_shift < 1 or frames < 2 * max_shift + 2:
        return spec
    centre = int(torch.randint(max_shift + 1, frames - max_shift, ()))
    shift = int(torch.randint(-max_shift, max_shift + 1, ()))
    if shift == 0:
        return spec
    rows = spec.unsqueeze(0)
    left = F.interpolate(rows[..., :centre], size=centre + shift, mode="linear", align_corners=True)
    right = F.interpolate(rows[..., centre:], size=frames - centre - shift, mode="linear", align_corners=True)
    return torch.cat([left, right], dim=-1)[0]


class OldSpecAugment(nn.Module):
    """The previous model.augment.SpecAugment (per-example time warp and ragged time masks)."""

    def __init__(self, freq_masks: int = 2, freq_mask_bins: int = 30, time_masks: int = 2,
                 time_mask_frames: int = 40, time_warp: int = 5, fill: float = 0.0):
        super().__init__()
        self.freq_masks = freq_masks if freq_mask_bins > 0 else 0
        self.time_masks = time_masks if time_mask_frames > 0 else 0
        self.time_warp = time_warp
        self.fill = fill
        self.freq_mask = FrequencyMasking(freq_mask_bins, iid_masks=True)
        self.time_mask = TimeMasking(time_mask_frames, iid_masks=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        if not self.training or not (self.freq_masks or self.time_masks or self.time_warp):
            return x
        valid = _old_lengths_list(lengths, x.shape[0], x.shape[-1])
        x = x.clone()
        if self.time_warp:
            for i, n in enumerate(valid):
                x[i, :, :n] = _old_time_warp(x[i, :, :n], self.time_warp)
        x = x.unsqueeze(1)
        for _ in range(self.freq_masks):
            x = self.freq_mask(x, self.fill)
        if self.time_masks:
            if lengths is None or all(n == x.shape[-1] for n in valid):
                for _ in range(self.time_masks):
                    x = self.time_mask(x, self.fill)
            else:
                for i, n in enumerate(valid):
                    part = x[i:i + 1, :, :, :n]
                    for _ in range(self.time_masks):
                        part = self.time_mask(part, self.fill)
                    x[i:i + 1, :, :, :n] = part
        return x.squeeze(1)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mels", type=int, default=64)
    p.add_argument("--frames", type=int, default=1001)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.mels, args.frames, device=device)
    ragged = torch.randint(args.frames // 2, args.frames + 1, (args.batch,), device=device)
    old, new = OldSpecAugment().train(), SpecAugment().train()
    print(f"SpecAugment on {args.batch} x {args.mels} x {args.frames} ({device}, {torch.get_num_threads()} threads), "
          f"median of {args.repeats}")
    print(f"  {'batch':<28} {'old ms':>8} {'new ms':>8} {'speed-up':>8}")
    for name, lengths in (("full length (lengths None)", None), ("ragged (500..1001 frames)", ragged)):
        for _ in range(2):  # warm-up
            old(x, lengths), new(x, lengths)
        t_old, t_new = [], []
        for _ in range(args.repeats):
            t_old.append(timed(lambda lengths=lengths: old(x, lengths), device))
            t_new.append(timed(lambda lengths=lengths: new(x, lengths), device))
        a, b = statistics.median(t_old) * 1e3, statistics.median(t_new) * 1e3
        print(f"  {name:<28} {a:8.1f} {b:8.1f} {a / b:7.1f}x")


if __name__ == "__main__":
    main()
