"""The HEAR API over a real (small) decar-checkpoint-v1 file."""
from __future__ import annotations

import pytest
import torch

from hear_decar import get_scene_embeddings, get_timestamp_embeddings, load_model
from model.audio import log_mel
from model.config import FeatureConfig, ModelConfig
from model.network import DecarNet, add_channel
from storage.checkpoint import save_checkpoint

MEAN, STD = -4.0, 3.0


@pytest.fixture(scope="module")
def trained_net():
    """A narrow DecarNet whose BatchNorm statistics have seen data (fresh ones make eval outputs ~1e-10)."""
    torch.manual_seed(0)
    net = DecarNet(ModelConfig(width_mult=0.25))
    net.train()
    with torch.no_grad():
        for _ in range(10):
            net.encoder(torch.randn(4, 1, 64, 101))
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(trained_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 0, "model_config": trained_net.config.model_dump(),
                           "feature_config": FeatureConfig().model_dump(), "norm": {"mean": MEAN, "std": STD},
                           "encoder": trained_net.encoder.state_dict(),
                           "projection": trained_net.projection.state_dict(), "head": None, "clusters": 8},
                    key="test")
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def audio():
    torch.manual_seed(1)
    return torch.randn(3, 16000) * 0.1


def test_model_attributes(model):
    assert model.sample_rate == 16000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 320  # 1280 * 0.25
    assert not model.training


def test_scene_embeddings_are_the_checkpoint_encoders_pooled_output(model, trained_net, audio):
    scene = get_scene_embeddings(audio, model)
    assert scene.shape == (3, 320) and scene.dtype == torch.float32
    assert scene.std() > 1e-3  # not a degenerate network
    expected = trained_net.encoder(add_channel((log_mel(audio, FeatureConfig()) - MEAN) / STD))
    torch.testing.assert_close(scene, expected.detach(), atol=1e-5, rtol=1e-4)


def test_deterministic_and_batch_independent(model, audio):
    scene = get_scene_embeddings(audio, model)
    assert torch.equal(scene, get_scene_embeddings(audio, model))
    frames, _ = get_timestamp_embeddings(audio, model)
    for i in range(audio.shape[0]):
        torch.testing.assert_close(get_scene_embeddings(audio[i:i + 1], model), scene[i:i + 1], atol=1e-5, rtol=0)
        alone, _ = get_timestamp_embeddings(audio[i:i + 1], model)
        torch.testing.assert_close(alone, frames[i:i + 1], atol=1e-5, rtol=0)
    model.chunk_size = 2  # chunking changes nothing either
    try:
        torch.testing.assert_close(get_scene_embeddings(audio, model), scene, atol=1e-5, rtol=0)
    finally:
        model.chunk_size = 16


@pytest.mark.parametrize("seconds", [0.3, 1.0, 2.5])
def test_timestamp_embeddings(model, seconds):
    audio = torch.randn(3, int(16000 * seconds)) * 0.1
    frames, timestamps = get_timestamp_embeddings(audio, model)
    steps = int(seconds * 1000 // 50) + 1
    assert frames.shape == (3, steps, 320) and frames.dtype == torch.float32
    assert timestamps.shape == (3, steps)
    assert torch.all(timestamps[:, 1:] > timestamps[:, :-1])
    assert timestamps[0, 0] == 0 and timestamps[0, -1] <= seconds * 1000
    assert torch.isfinite(frames).all()


def test_random_init_baseline_is_reproducible(audio):
    first, second = load_model(None, width_mult=0.25), load_model("", width_mult=0.25)
    assert torch.equal(get_scene_embeddings(audio, first), get_scene_embeddings(audio, second))
    assert first.scene_embedding_size == 320


def test_bad_input_shape_is_an_error(model):
    with pytest.raises(ValueError, match="n_clips, samples"):
        get_scene_embeddings(torch.zeros(16000), model)
