"""cache-features: real flows on a real Dask cluster, real Zarr."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from flows import cache_features
from model.config import FeatureConfig
from storage.features import FeatureReader
from storage.manifest import read_manifest, write_manifest
from storage.records import record_path
from tests.helpers import task_states, tone_manifest


def test_logmel_matches_direct_torchaudio(tmp_path, dask_address):
    manifest = tone_manifest(tmp_path, n=5, rate=44100)  # resampled on the way
    store = cache_features(str(manifest), data_dir=str(tmp_path), shard_size=2, dask_address=dask_address)
    reader = FeatureReader(store)
    assert reader.clip_ids == [f"clip{i:03d}" for i in range(5)]
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=1024, win_length=400, hop_length=160,
                                               f_min=60.0, f_max=7800.0, n_mels=64, power=2.0)
    for i, row in enumerate(read_manifest(manifest)):
        audio, rate = sf.read(tmp_path / row["path"], dtype="float32")
        audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000)
        expected = torch.log(mel(audio) + 1e-5).numpy()
        got = reader.get(i)
        assert got.shape == expected.shape == (64, reader.lengths[i])
        np.testing.assert_allclose(got, expected, atol=0.02, rtol=0.01)  # float16 storage
    assert reader.logmel.shape[0] == 5 and reader.logmel.chunks == (1, 64, reader.logmel.shape[2])
    everything = np.concatenate([reader.get(i).ravel() for i in range(5)]).astype(np.float64)
    assert reader.mean == pytest.approx(everything.mean(), abs=0.01)
    assert reader.std == pytest.approx(everything.std(), abs=0.01)


def test_rerun_is_a_cache_hit_and_config_change_is_a_new_store(tmp_path, dask_address):
    manifest = tone_manifest(tmp_path, n=6)
    first = cache_features(str(manifest), data_dir=str(tmp_path), shard_size=4, dask_address=dask_address)
    records = {p: p.stat().st_mtime_ns for p in Path(first, "shards").glob("*.json")}
    state = cache_features(str(manifest), data_dir=str(tmp_path), shard_size=4, dask_address=dask_address,
                           return_state=True)
    assert state.result() == first
    assert task_states(state.state_details.flow_run_id) == {"finalize-features": ["Cached"]}
    assert {p: p.stat().st_mtime_ns for p in records} == records
    other = cache_features(str(manifest), data_dir=str(tmp_path), shard_size=4, dask_address=dask_address,
                           config=FeatureConfig(n_mels=32))
    assert other != first and FeatureReader(other).logmel.shape[1] == 32


def test_failed_rows_skipped_and_undecodable_clips_marked(tmp_path, dask_address):
    manifest = tone_manifest(tmp_path, n=6, bad={2: b"not audio at all"})
    rows = read_manifest(manifest)
    rows[4].update(status="failed", error="HTTP 404", error_kind="unavailable")
    write_manifest(manifest, rows)
    reader = FeatureReader(cache_features(str(manifest), data_dir=str(tmp_path), dask_address=dask_address))
    assert "clip004" not in reader.clip_ids and len(reader) == 5
    bad = reader.clip_ids.index("clip002")
    assert reader.status[bad] == 1 and reader.lengths[bad] == 0
    assert bad not in reader.usable and len(reader.usable) == 4
    assert reader.attrs["decode_failures"] == 1


def test_non_finite_logmel_never_reaches_a_store(tmp_path, dask_address):
    """Finite samples of absurd amplitude (a float WAV at 1e30) overflow the power spectrum: the
    clip is marked failed, and the store holds finite values only."""
    manifest = tone_manifest(tmp_path, n=4)
    rows = read_manifest(manifest)
    huge = tmp_path / "audio" / "tones" / "huge.wav"
    sf.write(huge, 1e30 * np.random.default_rng(0).uniform(-1, 1, 16000).astype(np.float32), 16000, subtype="FLOAT")
    rows[1].update(path=str(huge.relative_to(tmp_path)))
    write_manifest(manifest, rows)
    reader = FeatureReader(cache_features(str(manifest), data_dir=str(tmp_path), shard_size=2,
                                          dask_address=dask_address))
    bad = reader.clip_ids.index("clip001")
    assert reader.status[bad] == 1 and reader.lengths[bad] == 0 and bad not in reader.usable
    assert np.isfinite(reader.logmel[:].astype(np.float32)).all()
    assert np.isfinite(reader.mean) and np.isfinite(reader.std) and reader.attrs["decode_failures"] == 1


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        cache_features(str(tmp_path / "nope.parquet"), data_dir=str(tmp_path))


def test_default_local_cluster(tmp_path):
    manifest = tone_manifest(tmp_path, n=3)
    store = cache_features(str(manifest), data_dir=str(tmp_path), shard_size=2, n_workers=1)
    assert len(FeatureReader(store).usable) == 3


def test_resume_after_kill(tmp_path, dask_address, subprocess_env):
    """Kill -9 the flow's process while shards are being written; the rerun keeps finished shards
    and ends with a store equal to an uninterrupted run."""
    manifest = tone_manifest(tmp_path / "a", n=40, seconds=2.0)
    code = ("import sys; from flows import cache_features; "
            f"cache_features({str(manifest)!r}, data_dir={str(tmp_path / 'a')!r}, shard_size=2, n_workers=1)")
    child = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "a" / "features").glob("*/shards/*.done.json")):
        assert child.poll() is None, "flow finished or died before it could be killed"
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    survivors = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "features").glob("*/shards/*.done.json")}
    assert 0 < len(survivors) < 20
    store = cache_features(str(manifest), data_dir=str(tmp_path / "a"), shard_size=2, dask_address=dask_address)
    assert {p: p.stat().st_mtime_ns for p in survivors} == survivors  # not redone
    assert record_path(store).exists()

    clean = tone_manifest(tmp_path / "b", n=40, seconds=2.0)
    reference = FeatureReader(cache_features(str(clean), data_dir=str(tmp_path / "b"), shard_size=2,
                                             dask_address=dask_address))
    resumed = FeatureReader(store)
    np.testing.assert_array_equal(resumed.lengths, reference.lengths)
    np.testing.assert_array_equal(resumed.logmel[:], reference.logmel[:])
    assert resumed.mean == pytest.approx(reference.mean) and resumed.std == pytest.approx(reference.std)
