"""SpecAugment and random crops on small normalised log-mel batches.

SpecAugment runs batched (tensor ops on the batch's device); its masks are drawn as torchaudio's
FrequencyMasking/TimeMasking with iid_masks draw them, which the statistics tests check on 5,000
draws against the analytical expectation and against torchaudio itself.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchaudio.transforms import FrequencyMasking, TimeMasking

from model.augment import SpecAugment, random_crop, time_warp, warp_draws, warp_frames

DRAWS = 5000


def batch(b: int = 8, mels: int = 64, frames: int = 200) -> torch.Tensor:
    return torch.randn(b, mels, frames) + 5.0  # offset: no value equals the fill 0 by chance


def coverage(size: int, max_width: int, grid: int = 1000) -> np.ndarray:
    """P(position p is inside one mask) for p in [0, size), by integrating torchaudio's draw
    (width floor(u * max), start trunc(v * (size - u * max)), clipped to [0, size)) over a
    grid x grid midpoint rule in (u, v)."""
    u, v = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid)
    value = (u * max_width).ravel()
    start = np.trunc(v.ravel() * (size - value)).astype(np.int64)
    end = np.clip(start + np.floor(value).astype(np.int64), 0, size)
    start = np.clip(start, 0, size)
    steps = np.bincount(start, minlength=size + 1) - np.bincount(end, minlength=size + 1)
    return np.cumsum(steps)[:size] / value.size


def expected_fraction(mels: int, n: int, aug: SpecAugment) -> float:
    """Expected masked fraction of an example's n valid frames: masks are independent, so a cell
    stays unmasked with probability (1 - f(bin))^freq_masks (1 - t(frame))^time_masks."""
    keep_f = ((1 - coverage(mels, aug.freq_mask_bins)) ** aug.freq_masks).mean()
    keep_t = ((1 - coverage(n, aug.time_mask_frames)) ** aug.time_masks).mean()
    return 1 - keep_f * keep_t


def test_masks_present_shapes_kept_input_untouched():
    torch.manual_seed(0)
    x = batch()
    original = x.clone()
    out = SpecAugment(time_warp=0).train()(x)
    assert out.shape == x.shape
    assert torch.equal(x, original)
    masked_rows = (out == 0).all(dim=2)   # (B, mels): frequency masks
    masked_cols = (out == 0).all(dim=1)   # (B, frames): time masks
    assert masked_rows.any(dim=1).float().mean() > 0.5
    assert masked_cols.any(dim=1).float().mean() > 0.5
    # iid: examples differ in where they are masked
    assert not all(torch.equal(masked_cols[0], masked_cols[i]) for i in range(1, 8))
    assert masked_cols.sum(dim=1).max() <= 2 * 40 and masked_rows.sum(dim=1).max() <= 2 * 30
    # what is masked is exactly what masks() says, filled with fill
    out = SpecAugment(time_warp=0, fill=-1.5).train()(x, generator=torch.Generator().manual_seed(4))
    mask = SpecAugment(time_warp=0).masks(8, 64, 200, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, x.masked_fill(mask, -1.5))


def test_deterministic_under_manual_seed_and_generator():
    x = batch()
    lengths = torch.tensor([200, 150, 90, 30, 12, 200, 200, 77])
    aug = SpecAugment().train()
    torch.manual_seed(3)
    a = aug(x, lengths)
    torch.manual_seed(3)
    assert torch.equal(a, aug(x, lengths))
    assert not torch.equal(a, aug(x, lengths))  # the stream moves on
    g = aug(x, lengths, generator=torch.Generator().manual_seed(5))
    assert torch.equal(g, aug(x, lengths, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(g, aug(x, lengths, generator=torch.Generator().manual_seed(6)))


def test_noop_when_all_counts_zero_and_in_eval_mode():
    x = batch()
    assert torch.equal(SpecAugment(0, 30, 0, 40, 0).train()(x), x)
    assert torch.equal(SpecAugment().eval()(x), x)
    assert torch.equal(SpecAugment().eval()(x, torch.tensor([200, 100, 50, 10, 0, 1, 2, 3])), x)


def test_lengths_are_respected():
    torch.manual_seed(1)
    x = batch(b=6, frames=300)
    lengths = torch.tensor([300, 250, 120, 60, 20, 300])
    for i, n in enumerate(lengths):
        x[i, :, n:] = 0.0  # zero padding, as a collate function makes it
    padded = x.clone()
    out = SpecAugment(freq_masks=0, time_masks=4, time_mask_frames=40, time_warp=5).train()(x, lengths)
    for i, n in enumerate(lengths):
        assert torch.equal(out[i, :, n:], padded[i, :, n:])  # padding untouched
    assert any((out[i, :, :n] == 0).all(dim=0).any() for i, n in enumerate(lengths[:3]))


def test_masks_never_touch_padding():
    """Frequency and time masks over many draws, padding filled with a value that is not the
    fill: every frame at or beyond an example's length keeps its value; lengths as a list, a
    tensor, longer than the batch's frames, or zero."""
    torch.manual_seed(2)
    frames = 120
    lengths = torch.arange(DRAWS) % (frames + 30)  # 0 .. 149: some beyond the batch's frames
    x = torch.randn(DRAWS, 16, frames) + 5.0
    aug = SpecAugment(freq_masks=2, freq_mask_bins=8, time_masks=3, time_mask_frames=50, time_warp=5).train()
    out = aug(x, lengths.tolist())
    padding = torch.arange(frames)[None, None, :] >= lengths[:, None, None]
    assert torch.equal(out[padding.expand_as(out)], x[padding.expand_as(x)])
    assert (out == 0).any()
    assert (aug.masks(DRAWS, 16, frames, lengths) & padding).sum() == 0


def test_mask_widths_uniform_and_starts_as_torchaudio():
    """One frequency mask and one time mask per example, 5,000 draws: the width is uniform on
    {0, ..., max-1} (chi-square) and width and start match torchaudio's own iid masks."""
    mels, frames, bins, width = 64, 200, 30, 40
    aug = SpecAugment(freq_masks=1, freq_mask_bins=bins, time_masks=1, time_mask_frames=width)
    torch.manual_seed(0)
    mask = aug.masks(DRAWS, mels, frames)
    rows, cols = mask.all(dim=2), mask.all(dim=1)  # one mask never covers a whole axis here
    ref = torch.ones(DRAWS, 1, mels, frames)
    ref = TimeMasking(width, iid_masks=True)(FrequencyMasking(bins, iid_masks=True)(ref, 0.0), 0.0)[:, 0] == 0
    for ours, theirs, top in ((rows, ref.all(dim=2), bins), (cols, ref.all(dim=1), width)):
        w = ours.sum(dim=1)
        counts = torch.bincount(w, minlength=top)
        assert len(counts) == top  # widths 0 .. top-1
        expected = DRAWS / top
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < top - 1 + 5 * (2 * (top - 1)) ** 0.5  # mean top-1, sd sqrt(2(top-1))
        w_ref = theirs.sum(dim=1)
        assert abs(w.float().mean() - (top - 1) / 2) < 0.5 and abs(w.float().mean() - w_ref.float().mean()) < 0.7
        # start of the non-empty masks (same support and mean as torchaudio's)
        start = ours.float().argmax(dim=1)[w > 0].float()
        start_ref = theirs.float().argmax(dim=1)[w_ref > 0].float()
        assert start.min() >= 0 and (start + w[w > 0]).max() <= ours.shape[1]
        assert abs(start.mean() - start_ref.mean()) < 2.0 and abs(start.std() - start_ref.std()) < 2.0


@pytest.mark.parametrize("n", [1001, 200, 60, 20])
def test_masked_fraction_matches_expectation(n):
    """Default SpecAugment (2 x 30 bins, 2 x 40 frames), 5,000 examples of n valid frames in a
    ragged batch of 1001 frames: the mean masked fraction of the valid part equals the analytical
    expectation and what torchaudio's masks give on an n-frame batch (the previous implementation:
    torchaudio per example on its valid part); the distribution of per-example fractions too."""
    aug = SpecAugment(time_warp=0)
    mels, frames = 64, 1001
    torch.manual_seed(1)
    lengths = torch.full((DRAWS,), n)
    fraction = torch.cat([aug.masks(500, mels, frames, lengths[:500])[..., :n].float().mean(dim=(1, 2))
                          for _ in range(DRAWS // 500)])
    # torchaudio masks along one axis whatever the other's size: rows and columns drawn apart
    rows, cols = torch.ones(DRAWS, 1, mels, 1), torch.ones(DRAWS, 1, 1, n)
    for _ in range(2):
        rows = FrequencyMasking(30, iid_masks=True)(rows, 0.0)
        cols = TimeMasking(40, iid_masks=True)(cols, 0.0)
    ref_fraction = 1 - (rows != 0).float().mean(dim=(1, 2, 3)) * (cols != 0).float().mean(dim=(1, 2, 3))
    expected = expected_fraction(mels, n, aug)
    sd = float(ref_fraction.std()) / DRAWS ** 0.5
    assert abs(float(fraction.mean()) - expected) < 5 * sd + 1e-3
    assert abs(float(ref_fraction.mean()) - expected) < 5 * sd + 1e-3
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    assert torch.allclose(fraction.quantile(quantiles), ref_fraction.quantile(quantiles), atol=0.02)


def test_time_warp_draws_cover_the_definition():
    """Centre uniform on [W+1, n-W), shift uniform on [-W, W]; too short to warp: no shift."""
    torch.manual_seed(0)
    lengths = torch.tensor([100] * DRAWS + [11, 12, 0])
    centre, shift = warp_draws(lengths, 5)
    c, w = centre[:DRAWS], shift[:DRAWS]
    assert c.min() == 6 and c.max() == 94 and w.min() == -5 and w.max() == 5
    assert abs(c.float().mean() - 50.0) < 1.5 and abs(w.float().mean()) < 0.25
    assert torch.bincount(w + 5).min() > DRAWS / 11 * 0.8
    assert shift[DRAWS] == 0 and shift[DRAWS + 2] == 0  # 11 and 0 frames: too short (< 2W+2)
    assert centre[DRAWS + 1] == 6  # 12 frames: the one possible centre


def test_warp_frames_equals_interpolate_per_example():
    """The batched warp equals the previous per-example F.interpolate (aligned corners) for
    every shift, extreme and middle centres, in a ragged batch whose padding stays as it is."""
    torch.manual_seed(0)
    frames, W = 90, 5
    cases = [(n, c, w) for n in (90, 40, 12) for c in (W + 1, n // 2, n - W - 1) for w in range(-W, W + 1)]
    x = torch.randn(len(cases), 8, frames)
    n, c, w = (torch.tensor(v) for v in zip(*cases))
    out = warp_frames(x, c, w, n)
    for i, (ni, ci, wi) in enumerate(cases):
        rows = x[i:i + 1, :, :ni]
        left = F.interpolate(rows[..., :ci], size=ci + wi, mode="linear", align_corners=True)
        right = F.interpolate(rows[..., ci:], size=ni - ci - wi, mode="linear", align_corners=True)
        assert torch.allclose(out[i, :, :ni], torch.cat([left, right], dim=-1)[0], atol=1e-4), cases[i]
        assert torch.equal(out[i, :, ni:], x[i, :, ni:])
        if wi == 0:
            assert torch.equal(out[i], x[i])


def test_time_warp_keeps_length_endpoints_and_padding():
    torch.manual_seed(0)
    spec = torch.randn(64, 100)
    warped = time_warp(spec, 5)
    assert warped.shape == spec.shape
    assert torch.allclose(warped[:, 0], spec[:, 0]) and torch.allclose(warped[:, -1], spec[:, -1])
    assert torch.equal(time_warp(spec[:, :10], 5), spec[:, :10])  # too short to warp
    x = torch.randn(DRAWS // 10, 4, 120)
    lengths = torch.randint(0, 121, (len(x),))
    torch.manual_seed(1)
    out = time_warp(x, 5, lengths)
    torch.manual_seed(1)
    centre, shift = warp_draws(lengths, 5)
    assert torch.equal(out, warp_frames(x, centre, shift, lengths))
    assert out.shape == x.shape
    for i, (n, c, w) in enumerate(zip(lengths.tolist(), centre.tolist(), shift.tolist())):
        assert torch.equal(out[i, :, n:], x[i, :, n:])  # padding untouched, even when not zero
        if n >= 12:  # warped within [0, n): the first valid frame stays, and the last one unless
            # [c, n) is squeezed onto the single frame n-1 (F.interpolate to size 1 takes frame c)
            assert torch.equal(out[i, :, 0], x[i, :, 0])
            assert torch.allclose(out[i, :, n - 1], x[i, :, c if c + w == n - 1 else n - 1], atol=1e-5)
        else:
            assert torch.equal(out[i], x[i])
    assert not torch.equal(out, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_runs_on_the_batch_device_without_host_syncs():
    x = batch(64, 64, 1001).cuda()
    lengths = torch.randint(1, 1002, (64,), device="cuda")
    aug = SpecAugment().train()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = aug(x, lengths)
        again = aug(x, lengths, generator=torch.Generator("cuda").manual_seed(0))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.device == x.device and again.device == x.device
    padding = torch.arange(1001, device="cuda")[None, None, :] >= lengths[:, None, None]
    assert torch.equal(out[padding.expand_as(out)], x[padding.expand_as(x)])
    assert (out == 0).any()


def test_random_crop_fixed_size_padding_and_generator():
    x = torch.arange(3 * 2 * 50, dtype=torch.float32).reshape(3, 2, 50) + 1.0
    lengths = torch.tensor([50, 30, 10])
    crops, valid = random_crop(x, lengths, 20, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 2, 20) and valid.tolist() == [20, 20, 10]
    assert torch.equal(crops[2, :, :10], x[2, :, :10]) and (crops[2, :, 10:] == 0).all()
    start = int(crops[1, 0, 0] - x[1, 0, 0])
    assert 0 <= start <= 10 and torch.equal(crops[1], x[1, :, start:start + 20])
    again, _ = random_crop(x, lengths, 20, torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)


def test_frequency_shift_moves_whole_spectra_by_uniform_bins():
    from model.augment import frequency_shift

    mels, draws, most = 16, 4000, 3
    ramp = (torch.arange(mels, dtype=torch.float32) + 1)[None, :, None].expand(draws, mels, 5)
    out = frequency_shift(ramp, most, torch.Generator().manual_seed(0))
    # row f holds bin f - s (value f - s + 1) where that bin exists, else 0: recover s per example
    shifts = []
    for example in out[:, :, 0]:
        kept = torch.nonzero(example).flatten()
        s = int(kept[0] - example[kept[0]] + 1)
        assert torch.equal(example[kept], kept.float() - s + 1)  # moved whole, in order
        assert len(kept) == mels - abs(s)  # and zero shifted in
        shifts.append(s)
    assert torch.equal(out[:, :, 0:1].expand_as(out), out)  # every frame alike
    counts = np.bincount(np.array(shifts) + most, minlength=2 * most + 1)
    assert len(counts) == 2 * most + 1
    assert np.all(np.abs(counts / draws - 1 / (2 * most + 1)) < 0.03), counts
    assert torch.equal(frequency_shift(ramp, 0), ramp)
