"""SpecAugment and random crops on small normalised log-mel batches."""
import torch

from model.augment import SpecAugment, random_crop, time_warp


def batch(b: int = 8, mels: int = 64, frames: int = 200) -> torch.Tensor:
    return torch.randn(b, mels, frames) + 5.0  # offset: no value equals the fill 0 by chance


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


def test_deterministic_under_manual_seed():
    x = batch()
    aug = SpecAugment().train()
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    assert torch.equal(a, aug(x))


def test_noop_when_all_counts_zero_and_in_eval_mode():
    x = batch()
    assert torch.equal(SpecAugment(0, 30, 0, 40, 0).train()(x), x)
    assert torch.equal(SpecAugment().eval()(x), x)


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


def test_time_warp_keeps_length_and_endpoints():
    torch.manual_seed(0)
    spec = torch.randn(64, 100)
    warped = time_warp(spec, 5)
    assert warped.shape == spec.shape
    assert torch.allclose(warped[:, 0], spec[:, 0]) and torch.allclose(warped[:, -1], spec[:, -1])
    assert torch.equal(time_warp(spec[:, :10], 5), spec[:, :10])  # too short to warp


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
