"""The executable specification: model.decar.reference_epoch on clips in memory gives the same
pseudo-labels and the same network as the pipeline's epoch 0 (Prefect stages, Dask extraction,
Zarr and Parquet in between)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from flows import cache_features, pretrain_decar
from model.config import ClusterConfig, ModelConfig, TrainConfig
from model.decar import batchnorm_sample, densify_labels, precise_batchnorm, reference_epoch
from model.health import embedding_health
from model.network import DecarNet
from model.runtime import set_threads
from storage.checkpoint import load_checkpoint
from storage.features import FeatureReader
from storage.layout import RunLayout
from tests.helpers import tone_manifest

SETTINGS = dict(clusters=4, batch_size=8, width_mult=0.25, samples_per_epoch=48, embed_shard_size=16, seed=3,
                allow_degenerate=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory, dask_address) -> str:
    data = tmp_path_factory.mktemp("data")
    return cache_features(str(tone_manifest(data, n=40, seconds=1.0)), data_dir=str(data),
                          dask_address=dask_address)


@pytest.fixture
def one_thread():
    """Extraction workers run on one thread; so do this process's clustering and training here, so
    that float sums add up in the same order on both sides and the comparison can be exact."""
    threads = torch.get_num_threads()
    set_threads(1)
    yield
    set_threads(threads)


def test_reference_epoch_equals_the_pipelines_epoch_zero(store, tmp_path, dask_address, one_thread):
    run = RunLayout(pretrain_decar(store, "spec", runs_dir=str(tmp_path), epochs=1, device="cpu",
                                   dask_address=dask_address, **SETTINGS))
    reader = FeatureReader(store)
    logmels = [reader.get(int(r)) for r in reader.usable]
    train = TrainConfig(batch_size=8, samples_per_epoch=48)
    net = DecarNet.random_init(ModelConfig(width_mult=0.25), seed=3)
    normalised = lambda i: (logmels[i] - reader.mean) / reader.std  # noqa: E731
    precise_batchnorm(net, normalised, batchnorm_sample(3, len(logmels), train.bn_clips), 8, torch.device("cpu"))

    labels, stats = reference_epoch(net, logmels, reader.mean, reader.std, ClusterConfig(clusters=4), train,
                                    seed=3, epoch=0, embed_batch=8)

    pipeline = pq.read_table(run.labels(0)).to_pydict()
    assert pipeline["clip_id"] == [reader.clip_ids[r] for r in reader.usable]
    assert np.array_equal(densify_labels(pipeline["label"])[0], densify_labels(labels)[0])
    checkpoint = load_checkpoint(run.checkpoint(0))
    for name, tensor in {**net.encoder.state_dict(), **{f"p.{k}": v for k, v in net.projection.state_dict().items()},
                         **{f"h.{k}": v for k, v in net.head.state_dict().items()}}.items():
        part, key = ("projection", name[2:]) if name.startswith("p.") else (
            ("head", name[2:]) if name.startswith("h.") else ("encoder", name))
        assert torch.equal(checkpoint[part][key], tensor), name
    assert stats["steps"] == 48 // 8 and stats["clusters"] == checkpoint["clusters"] == 4


def test_fresh_network_embeds_varied_inputs_apart_after_precise_batchnorm():
    """Default running statistics: every input gets the same z; recomputed ones: a real spread."""
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal((64, 100)).astype(np.float32) * (1 + i % 4) for i in range(32)]
    net = DecarNet.random_init(ModelConfig(width_mult=0.25), seed=0).eval()

    def z() -> np.ndarray:
        with torch.no_grad():
            return net.embed(torch.from_numpy(np.stack(clips))[:, None]).numpy()

    before = embedding_health(z())
    precise_batchnorm(net, lambda i: clips[i], np.arange(32), 8, torch.device("cpu"))
    after = embedding_health(z())
    assert before["relative_spread"] < 1e-4, before
    assert after["relative_spread"] > 1e-2 and after["distinct_rows"] == 32, after


def test_centroid_head_predicts_the_nearest_centroid():
    """head_init="centroids": before any step, the head already assigns each z to its own cluster."""
    from torch import nn

    from model.decar import centroid_head

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16)) * 4
    dense = np.repeat(np.arange(5), 20)
    z = (centres[dense] + rng.standard_normal((100, 16))).astype(np.float32)
    head = nn.Linear(16, 5)
    centroid_head(head, z, dense, temperature=0.1)
    with torch.no_grad():
        predicted = head(torch.from_numpy(z)).argmax(1).numpy()
    assert (predicted == dense).mean() > 0.95 and torch.all(head.bias == 0)
