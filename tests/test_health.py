"""Representation health measures and the degenerate-clustering guard (model/health.py)."""
import json
import math

import numpy as np
import pytest

from model.health import (
    DegenerateClustering,
    check_clustering,
    cluster_health,
    collapse_warnings,
    embedding_health,
    training_health,
)

BALANCED = np.arange(1000) % 10


def healthy(n: int = 1000, d: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_constant_embeddings_have_no_spread_one_row_and_are_refused():
    # what a fresh EfficientNet with default batch-norm statistics gives: z = ReLU(b) for every clip
    z = np.tile(np.maximum(np.random.default_rng(0).normal(size=64), 0), (1000, 1)).astype(np.float32)
    h = embedding_health(z)
    assert h["relative_spread"] == 0.0 and h["distinct_rows"] == 1 and h["effective_rank"] == 0.0
    assert (h["rows"], h["dims"]) == (1000, 64)
    with pytest.raises(DegenerateClustering, match=r"relative_spread = 0 < min_spread.*precise BN") as raised:
        check_clustering(h, BALANCED)
    assert "distinct_rows = 1" in str(raised.value) and "allow_degenerate=True" in str(raised.value)
    warnings = " | ".join(collapse_warnings(h))
    assert "relative_spread" in warnings and "distinct_rows" in warnings and "effective_rank" in warnings


def test_near_constant_embeddings_are_refused_though_all_rows_differ():
    rng = np.random.default_rng(1)
    z = (1.0 + 1e-9 * rng.normal(size=(1000, 16))).astype(np.float64)
    h = embedding_health(z)
    assert h["distinct_rows"] == 1000 and 0 < h["relative_spread"] < 1e-8
    with pytest.raises(DegenerateClustering, match="relative_spread"):
        check_clustering(h, BALANCED)


def test_all_zero_embeddings_do_not_divide_by_zero():
    h = embedding_health(np.zeros((50, 8), np.float32))
    assert h["relative_spread"] == 0.0 and h["distinct_rows"] == 1 and h["effective_rank"] == 0.0


def test_one_cluster_is_refused():
    h = embedding_health(healthy())
    with pytest.raises(DegenerateClustering, match=r"clusters = 1 < 2.*PIC.*allow_degenerate"):
        check_clustering(h, np.zeros(1000, np.int64))


def test_a_cluster_holding_90_percent_is_refused_and_the_threshold_is_a_parameter():
    h = embedding_health(healthy())
    labels = np.where(np.arange(1000) < 900, 0, 1 + np.arange(1000) % 5)
    with pytest.raises(DegenerateClustering, match=r"largest_fraction = 0\.9 > max_largest_fraction 0\.5"):
        check_clustering(h, labels)
    check_clustering(h, labels, max_largest_fraction=0.95)


def test_healthy_embeddings_and_balanced_labels_pass():
    z = healthy()
    h = embedding_health(z)
    check_clustering(h, BALANCED)
    # per-dimension std 1, row norm ~sqrt(32): spread ~1/sqrt(32)
    assert h["relative_spread"] == pytest.approx(1 / math.sqrt(32), rel=0.05)
    assert h["distinct_rows"] == 1000 and h["effective_rank"] > 25
    c = cluster_health(BALANCED)
    assert c["size_entropy"] == pytest.approx(math.log(10)) and c["size_entropy_ratio"] == pytest.approx(1.0)
    t = training_health(loss=1.2, clusters=10, accuracy=0.6)
    assert collapse_warnings({**h, **c, **t}) == []
    json.dumps({**h, **c, **t})


@pytest.mark.parametrize("rank", [1, 3, 12])
def test_effective_rank_of_rank_r_data_with_equal_singular_values_is_r(rank):
    rng = np.random.default_rng(rank)
    basis = np.linalg.qr(rng.normal(size=(40, rank)))[0].T  # r orthonormal directions in 40 dims
    scores = rng.normal(size=(2000, rank))
    scores = np.linalg.qr(scores - scores.mean(axis=0))[0]  # centred orthonormal columns: equal singular values
    z = 5.0 + 30.0 * scores @ basis  # an offset: the rank is that of the centred data
    h = embedding_health(z)
    assert h["effective_rank"] == pytest.approx(rank, rel=1e-3)


def test_effective_rank_uses_a_seeded_subsample_of_large_inputs():
    z = healthy(30_000, 8)
    h = embedding_health(z, svd_rows=5000)
    assert h["svd_rows"] == 5000 and 7.5 < h["effective_rank"] <= 8
    assert embedding_health(z, svd_rows=5000) == h  # seeded


def test_cluster_health_of_skewed_sizes():
    labels = np.repeat([0, 1, 2, 3, 7], [80, 10, 5, 3, 2])  # label 4-6 empty: not counted
    c = cluster_health(labels)
    p = np.array([0.8, 0.1, 0.05, 0.03, 0.02])
    assert c["clusters"] == 5 and c["largest_fraction"] == pytest.approx(0.8)
    assert c["size_entropy"] == pytest.approx(-(p * np.log(p)).sum())
    assert c["size_entropy_ratio"] == pytest.approx(c["size_entropy"] / math.log(5))
    assert any("largest_fraction = 0.8" in w for w in collapse_warnings(c))


def test_loss_at_chance_warns_and_a_learnt_loss_does_not():
    k = 64
    stuck = training_health(loss=math.log(k) * 0.995, clusters=k, accuracy=1 / k)
    assert stuck["loss_vs_chance"] == pytest.approx(0.995) and stuck["chance_accuracy"] == pytest.approx(1 / k)
    (warning,) = collapse_warnings(stuck)
    assert "loss_vs_chance = 0.995 > 0.98" in warning
    learnt = training_health(loss=math.log(k) * 0.8, clusters=k, accuracy=0.3)
    assert collapse_warnings(learnt) == []
    # the pipeline may log the three groups nested
    assert len(collapse_warnings({"training": stuck, "clusters": cluster_health(BALANCED)})) == 1
