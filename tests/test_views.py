"""Encoders and two-view augmentation of the instance methods (model/encoders.py, model/views.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import InstanceConfig
from model.encoders import ByolaEncoder, EfficientNetEncoder, make_encoder
from model.views import (
    MixBank,
    assign_clusters,
    clip_vectors,
    log_mix,
    random_resized_crop,
    resized_crop,
    spherical_kmeans,
    two_views,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- encoders

@pytest.mark.parametrize("frames", [8, 13, 40])
def test_byola_shapes_and_blocks(frames):
    torch.manual_seed(0)
    enc = ByolaEncoder(n_mels=32, dim=48, clip_norm=True).eval()
    x = torch.randn(3, 1, 32, frames)
    maps, z = enc.blocks(x)
    assert z.shape == (3, enc.out_dim) == (3, 48)
    assert [m.shape[1] for m in maps] == enc.block_channels == [64, 64, 64]
    assert [m.shape[2:] for m in maps] == [(16, frames // 2), (8, frames // 4), (4, frames // 8)]
    torch.testing.assert_close(z, enc(x))


def test_byola_clip_norm_ignores_loudness():
    torch.manual_seed(0)
    enc = ByolaEncoder(n_mels=16, dim=8, clip_norm=True).eval()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(enc(x), enc(x + 3.0))


@pytest.mark.parametrize("frames", [8, 21])
def test_efficientnet_shapes_and_blocks(frames):
    torch.manual_seed(0)
    enc = EfficientNetEncoder(width_mult=0.25).eval()
    x = torch.randn(2, 1, 64, frames)
    maps, z = enc.blocks(x)
    assert z.shape == (2, enc.out_dim)
    assert [m.shape[1] for m in maps] == enc.block_channels
    assert maps[-1].shape[1] == enc.out_dim
    torch.testing.assert_close(z, enc(x))


def test_make_encoder_follows_config():
    byola = make_encoder(InstanceConfig(method="delores-s", encoder_dim=16, clip_norm=True), n_mels=16)
    assert isinstance(byola, ByolaEncoder) and byola.out_dim == 16 and byola.clip_norm
    effnet = make_encoder(InstanceConfig(method="slicer", encoder="efficientnet", width_mult=0.25))
    assert isinstance(effnet, EfficientNetEncoder) and not effnet.encoder.clip_norm


# ---------------------------------------------------------------- random resized crop

def test_rrc_unit_scale_is_identity():
    x = torch.randn(4, 8, 20)
    torch.testing.assert_close(random_resized_crop(x, (1.0, 1.0), _gen()), x)


def _time_ramp(batch: int = 1, bins: int = 4, frames: int = 16) -> torch.Tensor:
    """x[b, f, t] = t + 1: values tell where each output frame was sampled."""
    return (torch.arange(frames, dtype=torch.float32) + 1).expand(batch, bins, frames).clone()


def test_resized_crop_zoom_matches_hand_computation():
    frames = 16
    one, half = torch.ones(1), torch.full((1,), 0.5)
    # window of 8 frames centred: starts at 4, output frame j samples position 4 + (j + 0.5) * 0.5,
    # i.e. fractional frame index (centres at k + 0.5) 3.75 + 0.5 j, whose ramp value is 4.75 + 0.5 j
    out = resized_crop(_time_ramp(frames=frames), one, half, half, half)
    expected = 4.75 + 0.5 * torch.arange(frames, dtype=torch.float32)
    torch.testing.assert_close(out[0], expected.expand(4, frames))
    # flush left: frame index -0.25 + 0.5 j; frame 0 blends with the zero outside: 0.75 * 1
    left = resized_crop(_time_ramp(frames=frames), one, half, half, torch.zeros(1))[0, 0]
    torch.testing.assert_close(left, torch.cat([torch.tensor([0.75]), 0.75 + 0.5 * torch.arange(1, 16.0)]))


def test_resized_crop_larger_window_pads_with_zeros():
    frames = 16
    two, one, half = torch.full((1,), 2.0), torch.ones(1), torch.full((1,), 0.5)
    # a 32-frame window centred: starts at -8; output frame j samples index -7.5 + 2 j
    out = resized_crop(_time_ramp(frames=frames), one, two, half, half)[0, 0]
    index = -7.5 + 2 * torch.arange(frames, dtype=torch.float32)
    assert torch.all(out[index < -1] == 0) and torch.all(out[index > frames] == 0)
    inside = (index >= 0) & (index <= frames - 1)
    torch.testing.assert_close(out[inside], index[inside] + 1)


def test_rrc_draws_depend_on_generator_only():
    x = torch.randn(5, 8, 24)
    a = random_resized_crop(x, (0.6, 1.5), _gen(3))
    torch.manual_seed(123)  # the global RNG plays no part
    b = random_resized_crop(x, (0.6, 1.5), _gen(3))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, random_resized_crop(x, (0.6, 1.5), _gen(4)))
    assert not torch.allclose(a[0], a[1])  # examples draw independently


# ---------------------------------------------------------------- log mix and the bank

def test_log_mix_limits_and_formula():
    x, p = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(log_mix(x, p, torch.zeros(3)), x)
    torch.testing.assert_close(log_mix(x, p, torch.ones(3)), p)
    r = torch.tensor([0.1, 0.4, 0.9])
    expected = torch.log((1 - r)[:, None, None] * x.exp() + r[:, None, None] * p.exp())
    torch.testing.assert_close(log_mix(x, p, r), expected)
    big = torch.full((1, 2, 2), 200.0)  # exp overflows float32; the mix must not
    torch.testing.assert_close(log_mix(big, big, torch.tensor([0.3])), big)


def test_bank_ring_and_fill():
    bank = MixBank(size=5, n_mels=2, frames=3)
    assert len(bank) == 0
    x = torch.randn(4, 2, 3)
    assert bank.mix(x, 0.4, _gen()) is x  # empty bank: nothing to mix with
    bank.push(torch.full((3, 2, 3), 1.0))
    assert len(bank) == 3
    bank.push(torch.stack([torch.full((2, 3), v) for v in (2.0, 3.0, 4.0)]))
    assert len(bank) == 5 and bank.position == 1
    assert bank.data[:, 0, 0].tolist() == [4.0, 1.0, 1.0, 2.0, 3.0]  # the oldest row was overwritten
    # larger than the bank: as if written one by one from row 1, so 10 and 11 are overwritten by 15 and 16
    bank.push(torch.stack([torch.full((2, 3), float(v)) for v in range(10, 17)]))
    assert bank.data[:, 0, 0].tolist() == [14.0, 15.0, 16.0, 12.0, 13.0] and bank.position == 3
    assert bank.data.dtype == torch.float16


def test_bank_state_roundtrip_continues_exactly():
    torch.manual_seed(0)
    batches = [torch.randn(4, 3, 6) for _ in range(4)]
    clusters = [torch.randint(0, 3, (4,)) for _ in range(4)]
    x = torch.randn(4, 3, 6)

    def run(restore: bool) -> torch.Tensor:
        gen, bank = _gen(7), MixBank(size=6, n_mels=3, frames=6)
        out = []
        for i, (batch, ids) in enumerate(zip(batches, clusters)):
            if restore and i == 2:
                state = bank.state_dict()
                bank = MixBank(size=6, n_mels=3, frames=6)
                bank.load_state_dict(state)
            out.append(bank.mix(x, 0.4, gen, clusters[0], rule="other"))
            bank.push(batch, ids)
        return torch.stack(out)

    plain = run(False)
    torch.testing.assert_close(run(True), plain, rtol=0, atol=0)
    assert not torch.equal(plain[1], x)  # mixing did happen


def _cluster_bank(ids: list[int]) -> MixBank:
    """A bank whose entry i is filled with the value i and belongs to cluster ids[i]."""
    bank = MixBank(size=len(ids), n_mels=1, frames=1)
    bank.push(torch.arange(len(ids), dtype=torch.float32).reshape(-1, 1, 1), torch.tensor(ids))
    return bank


def _three_centroids() -> torch.Tensor:
    """Cluster 0 is close to 1 (cos 0.8) and farthest from 2 (cos -0.6); 1 and 2 are orthogonal."""
    return torch.tensor([[1.0, 0.0], [0.8, 0.6], [-0.6, 0.8]])


@pytest.mark.parametrize("rule", ["other", "farthest"])
def test_kmix_partners_come_from_another_cluster(rule):
    ids = [0, 0, 0, 1, 1, 2, 2, 2, 0, 1]
    bank = _cluster_bank(ids)
    own = torch.tensor([0, 1, 2] * 100)
    rows = bank.partners(len(own), torch.rand(len(own), generator=_gen()), own, _three_centroids(), rule)
    partner = torch.tensor(ids)[rows]
    assert torch.all(partner != own)
    if rule == "other":  # every other cluster's entries get used
        assert set(partner[own == 0].tolist()) == {1, 2}
        assert set(rows[own == 0].tolist()) == {3, 4, 5, 6, 7, 9}


def test_kmix_farthest_picks_least_similar_centroid():
    ids = [0, 0, 1, 1, 2, 2]
    bank = _cluster_bank(ids)
    own = torch.tensor([0, 1, 2] * 50)
    rows = bank.partners(len(own), torch.rand(len(own), generator=_gen(1)), own, _three_centroids(), "farthest")
    partner = torch.tensor(ids)[rows]
    # 0 -> 2 (cos -0.6 < 0.8); 1 -> 2 (cos 0 < 0.8); 2 -> 0 (cos -0.6 < 0)
    assert partner[own == 0].unique().tolist() == [2]
    assert partner[own == 1].unique().tolist() == [2]
    assert partner[own == 2].unique().tolist() == [0]
    assert set(rows[own == 0].tolist()) == {4, 5}  # uniform within the chosen cluster


def test_kmix_farthest_skips_empty_clusters_and_falls_back():
    bank = _cluster_bank([0, 0, 1])  # cluster 2, the farthest from 0, holds nothing
    rows = bank.partners(20, torch.rand(20, generator=_gen()), torch.zeros(20, dtype=torch.long),
                         _three_centroids(), "farthest")
    assert rows.unique().tolist() == [2]
    only_own = _cluster_bank([1, 1, 1])  # no other cluster: any entry
    rows = only_own.partners(60, torch.rand(60, generator=_gen()), torch.ones(60, dtype=torch.long),
                             _three_centroids(), "other")
    assert set(rows.tolist()) == {0, 1, 2}


def test_kmix_mix_uses_other_cluster_values():
    bank = MixBank(size=4, n_mels=2, frames=3)
    bank.push(torch.cat([torch.full((2, 2, 3), -20.0), torch.full((2, 2, 3), 5.0)]), torch.tensor([0, 0, 1, 1]))
    x = torch.full((8, 2, 3), -20.0)
    mixed = bank.mix(x, 1.0, _gen(), clusters=torch.zeros(8, dtype=torch.long),
                     centroids=np.eye(2, dtype=np.float32), rule="farthest")  # numpy, as spherical_kmeans gives
    assert torch.all(mixed > -20.0 + 1e-3)  # every partner was a loud cluster-1 entry


# ---------------------------------------------------------------- k-mix clusters

def test_clip_vectors_average_valid_frames():
    x = torch.zeros(2, 3, 6)
    x[0, :, :4] = 2.0
    x[1] = 1.0
    torch.testing.assert_close(clip_vectors(x, [4, 6]), torch.tensor([[2.0] * 3, [1.0] * 3]))
    torch.testing.assert_close(clip_vectors(x)[1], torch.ones(3))


def _four_directions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    directions = np.eye(8)[:4] * 5
    labels = np.repeat(np.arange(4), 40)
    return directions[labels] + 0.3 * rng.standard_normal((160, 8)), labels


def test_spherical_kmeans_recovers_directions_and_is_deterministic():
    vectors, labels = _four_directions()
    centroids = spherical_kmeans(vectors, 4, seed=0)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    found = assign_clusters(torch.from_numpy(vectors).float(), torch.from_numpy(centroids)).numpy()
    # agreement 1.0: the found clusters are the true ones up to renaming
    pairs = {(int(a), int(b)) for a, b in zip(labels, found)}
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    np.testing.assert_array_equal(spherical_kmeans(vectors, 4, seed=0), centroids)
    for seed in (1, 2):
        other = spherical_kmeans(vectors, 4, seed=seed)
        again = assign_clusters(torch.from_numpy(vectors).float(), torch.from_numpy(other)).numpy()
        assert len({(int(a), int(b)) for a, b in zip(labels, again)}) == 4


def test_spherical_kmeans_fills_every_cluster():
    vectors, _ = _four_directions()
    centroids = spherical_kmeans(vectors, 6, seed=0)  # more clusters than directions
    found = assign_clusters(torch.from_numpy(vectors).float(), torch.from_numpy(centroids))
    assert found.unique().numel() == 6


# ---------------------------------------------------------------- two views

def test_two_views_shapes():
    cfg = InstanceConfig(method="slicer", crop_frames=12)
    x, lengths = torch.randn(5, 8, 30), torch.tensor([30, 20, 9, 12, 30])
    bank = MixBank(cfg.bank_size, 8, 12)
    v1, v2, crops = two_views(x, lengths, cfg, bank, _gen())
    assert v1.shape == v2.shape == (5, 1, 8, 12) and crops.shape == (5, 8, 12)
    bank.push(crops, torch.arange(5) % 2)
    centroids = torch.eye(8)[:2]
    v1, v2, _ = two_views(x, lengths, cfg, bank, _gen(1), torch.arange(5) % 2, centroids)
    assert v1.shape == v2.shape == (5, 1, 8, 12) and torch.isfinite(v1).all() and torch.isfinite(v2).all()
    assert len(bank) == 5  # two_views never pushes


def test_two_views_without_mixing_or_rrc_are_plain_crops():
    cfg = InstanceConfig(method="delores-s", crop_frames=10, mixup_alpha=0.0, rrc_scale=(1.0, 1.0))
    x = torch.arange(3 * 4 * 40, dtype=torch.float32).reshape(3, 4, 40)
    bank = MixBank(8, 4, 10)
    bank.push(torch.randn(8, 4, 10))
    v1, v2, crops = two_views(x, None, cfg, bank, _gen(5))
    torch.testing.assert_close(v1[:, 0], crops)
    for view in (v1[:, 0], v2[:, 0]):  # each view is a contiguous window of its clip
        start = (view[:, 0, 0] - x[:, 0, 0]).long()
        for b in range(3):
            torch.testing.assert_close(view[b], x[b, :, start[b]:start[b] + 10])
    assert not torch.equal(v1, v2)
