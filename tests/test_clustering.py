"""Clustering on tiny inputs with real faiss: preprocessing pitfalls, k-means, PIC, NMI."""
import json

import numpy as np
import pytest

from model import clustering
from model.clustering import (cluster, cluster_stats, l2_normalise, nmi, preprocess_features, run_kmeans,
                              run_pic)
from model.config import ClusterConfig


def blobs(centres: int, per_blob: int, dim: int = 32, spread: float = 10.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(centres), per_blob)
    x = rng.normal(size=(centres, dim)) * spread
    return (x[truth] + rng.normal(size=(len(truth), dim))).astype(np.float32), truth


def test_preprocess_whitens_normalises_and_survives_zero_and_nan_rows():
    x = np.random.default_rng(0).normal(size=(300, 256)).astype(np.float32)
    x[:4] = 0.0
    x[4, 7] = np.nan
    x[5, 1] = np.inf
    out = preprocess_features(x, 128)
    assert out.shape == (300, 128) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)


def test_preprocess_small_inputs_reduce_pca_dim():
    rng = np.random.default_rng(1)
    assert preprocess_features(rng.normal(size=(20, 512)).astype(np.float32), 128).shape == (20, 20)
    assert preprocess_features(rng.normal(size=(500, 16)).astype(np.float32), 128).shape == (500, 16)
    identical = np.ones((50, 64), np.float32)  # zero variance everywhere: rows become zero, not NaN
    assert np.isfinite(preprocess_features(identical, 8)).all()


def test_kmeans_keeps_k_nonempty_clusters_on_degenerate_data_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = np.zeros((200, 16), np.float32)
    x[190:] = rng.normal(size=(10, 16))
    labels = run_kmeans(x, 8, seed=3)
    assert labels.dtype == np.int64 and labels.shape == (200,)
    assert set(labels.tolist()) == set(range(8))
    np.testing.assert_array_equal(labels, run_kmeans(x, 8, seed=3))
    exactly_k = run_kmeans(np.ones((8, 4), np.float32), 8)  # N == k, all identical
    assert sorted(exactly_k.tolist()) == list(range(8))


def test_kmeans_uses_all_points_and_recovers_blobs():
    x, truth = blobs(5, 80)
    assert nmi(run_kmeans(preprocess_features(x, 16), 5, seed=0), truth) > 0.99


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="k=10.*N=5"):
        run_kmeans(np.zeros((5, 3), np.float32), 10)


def test_pic_finds_components_of_complete_blobs():
    # blobs of neighbours+1 points: each blob's kNN graph is complete, one maximum each
    x, truth = blobs(20, 6)
    labels = run_pic(l2_normalise(x))
    assert nmi(labels, truth) > 0.99
    assert labels.min() == 0 and labels.max() == 19


def test_pic_never_merges_separate_components_and_has_no_singletons():
    # larger blobs: PIC over-segments (one cluster per local maximum of v) but stays pure
    x, truth = blobs(4, 100)
    labels = run_pic(l2_normalise(x))
    assert homogeneity_score_ok(truth, labels)
    stats = cluster_stats(labels)
    assert stats["singletons"] == 0 and stats["clusters"] >= 4


def test_pic_ivf_path_for_large_inputs(monkeypatch):
    monkeypatch.setattr(clustering, "PIC_EXACT_MAX", 100)
    x, truth = blobs(4, 150)
    labels = run_pic(l2_normalise(x))
    assert homogeneity_score_ok(truth, labels)


def homogeneity_score_ok(truth, labels) -> bool:
    from sklearn.metrics import homogeneity_score

    return homogeneity_score(truth, labels) > 0.999


def test_cluster_dispatches_on_config():
    # as many blobs as PCA dims: whitening then leaves no pure-noise direction
    x, truth = blobs(17, 12, dim=64)
    km = cluster(x, ClusterConfig(algorithm="kmeans", clusters=17, pca_dim=16), seed=1)
    assert len(set(km.tolist())) == 17 and nmi(km, truth) > 0.9  # k-means may merge/split a pair
    pic = cluster(x, ClusterConfig(algorithm="pic", pca_dim=16), seed=1)
    assert homogeneity_score_ok(truth, pic)


def test_nmi_identity_permutation_and_independence():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 10, 5000)
    assert nmi(a, a) == pytest.approx(1.0)
    permuted = np.array([3, 7, 1, 0, 9, 2, 8, 5, 4, 6])[a]
    assert nmi(a, permuted) == pytest.approx(1.0)
    assert nmi(a, rng.integers(0, 10, 5000)) < 0.01


def test_cluster_stats_is_json_ready():
    stats = cluster_stats(np.array([0, 0, 0, 1, 5, 5]))
    assert stats["clusters"] == 3 and stats["singletons"] == 1 and stats["smallest"] == 1
    assert stats["largest_fraction"] == pytest.approx(0.5)
    json.dumps(stats)


def test_set_threads():
    import faiss
    import torch

    before = torch.get_num_threads()
    clustering.set_threads(1)
    assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    clustering.set_threads(before)
