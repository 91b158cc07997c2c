"""bench/science.py's paired comparison of a trained model with its random init."""
import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("science", Path(__file__).parents[1] / "bench" / "science.py")
science = importlib.util.module_from_spec(spec)
spec.loader.exec_module(science)


def test_paired_difference_is_exact_on_identical_and_shifted_answers():
    rng = np.random.default_rng(0)
    reference = (rng.random(120) < 0.6).astype(float)
    assert science.paired_difference([reference], [reference], 200) == (0.0, 0.0, 0.0)
    better = reference.copy()
    better[np.flatnonzero(reference == 0)[:12]] = 1  # 12 more of 120 right, nothing else changed
    diff, low, high = science.paired_difference([better], [reference], 1000)
    assert diff == 0.1 and 0 < low < diff < high
    # unpaired intervals of 0.6 vs 0.7 on 120 clips overlap; the paired one excludes 0
    assert science.bootstrap([better], 1000)[1] < science.bootstrap([reference], 1000)[2]


def test_paired_difference_pools_runs_before_differencing():
    a, b = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])
    diff, _, _ = science.paired_difference([a, b], [b, b], 100)
    assert diff == (a.mean() + b.mean()) / 2 - b.mean()


def test_random_reference_matches_pooling_and_batchnorm_protocol():
    models = ["random-defaultBN|meanmax", "random-preciseBN|meanmax", "slicer-8|meanmax",
              "slicer-8-preciseBN|meanmax"]
    assert science.random_reference("slicer-8|meanmax", models) == "random-defaultBN|meanmax"
    assert science.random_reference("slicer-8-preciseBN|meanmax", models) == "random-preciseBN|meanmax"
    assert science.random_reference("random-preciseBN|meanmax", models) is None
    # DECAR runs carry one random protocol per pooling
    assert science.random_reference("decar-32|max", ["random-defaultBN|max", "decar-32|max"]) == "random-defaultBN|max"
