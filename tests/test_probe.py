"""Linear probe and fine-tuning (model/probe.py): pure torch, no Prefect."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model.data import Clips
from model.probe import finetune, logmel_statistics, standardise, train_linear_probe


def blobs(n: int, classes: int = 3, dim: int = 16, seed: int = 0, scale: float = 1.0):
    """Gaussian blobs around well separated class centres; `scale` multiplies everything."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, dim))
    y = np.arange(n) % classes
    return (scale * (centres[y] + rng.normal(0, 1, (n, dim)))).astype(np.float32), y


def splits(n_train=120, n_valid=30, n_test=60, **kwargs):
    x, y = blobs(n_train + n_valid + n_test, **kwargs)
    a, b = n_train, n_train + n_valid
    return x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:]


def test_probe_learns_a_separable_task():
    result = train_linear_probe(*splits(), epochs=30, lr=1e-2, batch_size=32, seed=0)
    assert result["accuracy"] > 0.95 and result["macro_f1"] > 0.95 and result["valid_accuracy"] > 0.95
    assert 1 <= result["best_epoch"] <= 30


def test_tiny_activations_are_standardised():
    """A random-init EfficientNet gives ~1e-10 activations; without standardising nothing is learnt."""
    result = train_linear_probe(*splits(scale=1e-10), epochs=30, lr=1e-2, batch_size=32, seed=0)
    assert result["accuracy"] > 0.95
    train, test = standardise(np.full((4, 2), 3.0, np.float32), np.ones((2, 2), np.float32))
    assert np.isfinite(test).all() and (train == 0).all()  # constant dims do not divide by zero


def test_shuffled_labels_stay_near_chance():
    x_train, y_train, x_valid, y_valid, x_test, y_test = splits(n_train=300, n_valid=60, n_test=300, classes=4)
    rng = np.random.default_rng(1)
    result = train_linear_probe(x_train, rng.permutation(y_train), x_valid, rng.permutation(y_valid),
                                x_test, rng.permutation(y_test), epochs=20, lr=1e-2, batch_size=64, seed=0)
    assert result["accuracy"] < 0.4  # chance is 0.25
    assert 0.0 <= result["macro_f1"] <= result["accuracy"] + 0.1


def test_probe_is_deterministic_and_selects_on_validation():
    data = splits(n_train=60, n_valid=20, n_test=20)
    first = train_linear_probe(*data, epochs=10, lr=1e-2, batch_size=16, seed=3)
    assert train_linear_probe(*data, epochs=10, lr=1e-2, batch_size=16, seed=3) == first
    # test labels play no part in selection: scrambling them changes the reported score only
    scrambled = train_linear_probe(*data[:5], np.roll(data[5], 1), epochs=10, lr=1e-2, batch_size=16, seed=3)
    assert (scrambled["best_epoch"], scrambled["valid_accuracy"]) == (first["best_epoch"], first["valid_accuracy"])


def test_empty_validation_split_is_an_error():
    x, y, _, _, x_test, y_test = splits()
    with pytest.raises(ValueError, match="valid split is empty"):
        train_linear_probe(x, y, x[:0], y[:0], x_test, y_test, epochs=1)


class TinyEncoder(nn.Module):
    out_dim = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.amax(torch.relu(self.norm(self.conv(x))), dim=(2, 3))


def test_finetune_learns_loud_versus_quiet_clips():
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 1, (8, 10 + i % 5)).astype(np.float32) + 3 * (i % 2) for i in range(80)]
    labels = np.arange(80) % 2

    def data(a, b):
        return Clips(lambda i: clips[a + i], labels[a:b])

    torch.manual_seed(0)
    result = finetune(TinyEncoder(), data(0, 50), data(50, 64), data(64, 80), classes=2, epochs=8, lr=1e-2,
                      batch_size=16, seed=0)
    assert result["accuracy"] >= 0.9 and result["valid_accuracy"] >= 0.9 and 1 <= result["best_epoch"] <= 8


def test_logmel_statistics_are_mean_and_std_per_bin():
    logmel = np.array([[1.0, 3.0], [2.0, 2.0]])
    np.testing.assert_allclose(logmel_statistics(logmel), [2.0, 2.0, 1.0, 0.0])
