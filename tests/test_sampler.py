"""The uniform-over-pseudo-labels sampler draws each cluster equally often, by row index."""
import numpy as np
import pytest

from model.sampler import UniformClusterSampler


def skewed_labels(seed: int = 0) -> np.ndarray:
    """80/10/5/3/2 % of 1000 rows, shuffled so no cluster order can be relied on."""
    labels = np.repeat([4, 0, 2, 1, 3], [800, 100, 50, 30, 20])
    return np.random.default_rng(seed).permutation(labels)


def test_skewed_clusters_are_drawn_uniformly():
    labels = skewed_labels()
    drawn = np.fromiter(UniformClusterSampler(labels, 1000, seed=0), dtype=np.int64)
    assert len(drawn) == 1000
    counts = np.bincount(labels[drawn], minlength=5)
    assert np.all(np.abs(counts - 200) <= 1), counts


def test_remainder_is_spread_and_small_clusters_use_replacement():
    labels = skewed_labels()
    drawn = UniformClusterSampler(labels, 1003, seed=1).indices()
    counts = np.bincount(labels[drawn], minlength=5)
    assert sorted(counts.tolist()) == [200, 200, 201, 201, 201]
    big = drawn[labels[drawn] == 4]
    assert len(np.unique(big)) == len(big)  # 800 rows, quota ~200: no repeats needed
    assert len(np.unique(drawn[labels[drawn] == 3])) <= 20


def test_indices_are_rows_with_the_right_labels():
    labels = np.array([7, 7, 3, 9, 3, 7, 9, 9, 9, 9])
    drawn = UniformClusterSampler(labels, 300, seed=2).indices()
    assert drawn.min() >= 0 and drawn.max() < len(labels)
    assert np.bincount(labels[drawn])[[3, 7, 9]].tolist() == [100, 100, 100]


def test_deterministic_per_seed_and_epoch():
    labels = skewed_labels()
    a = UniformClusterSampler(labels, 500, seed=5)
    first = list(a)
    assert first == list(UniformClusterSampler(labels, 500, seed=5))
    assert first != list(UniformClusterSampler(labels, 500, seed=6))
    a.set_epoch(1)
    assert list(a) != first
    assert len(a) == 500


def test_works_with_a_dataloader():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    labels = skewed_labels()
    data = TensorDataset(torch.arange(1000), torch.as_tensor(labels))
    loader = DataLoader(data, batch_size=100, sampler=UniformClusterSampler(labels, 1000, seed=0))
    rows, got = map(torch.cat, zip(*loader))
    assert torch.equal(got, torch.as_tensor(labels)[rows])
    assert torch.bincount(got).tolist() == [200] * 5


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        UniformClusterSampler(np.array([], dtype=int), 10, seed=0)
    with pytest.raises(ValueError):
        UniformClusterSampler(np.array([1, 2]), 0, seed=0)
