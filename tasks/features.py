"""Feature stages: one log-mel shard (decode, resample, cut, log-mel, write), and the store's completion."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
import torchaudio

from model.audio import log_mel
from model.config import FeatureConfig
from model.runtime import set_threads
from storage.features import FAILED_STATUS, OK_STATUS, finalize_store, write_shard
from storage.records import write_record
from storage.sharded import shard_done, shard_record
from tasks.caching import stage


def load_mono(path: str, config: FeatureConfig) -> np.ndarray:
    """Read any soundfile-readable file as mono float32 at config.sample_rate, cut to max_seconds."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != config.sample_rate:
        audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, config.sample_rate).numpy()
    audio = audio[: int(config.max_seconds * config.sample_rate)]
    if audio.size == 0:
        raise ValueError("no samples")
    if not np.isfinite(audio).all():
        raise ValueError("non-finite samples")
    return audio


def finite_log_mel(path: str, config: FeatureConfig, frames: int) -> np.ndarray:
    """A clip's log-mel, at most `frames` long; ValueError when a value would be stored as NaN or Inf
    (training and extraction never see one: the clip is marked failed instead)."""
    features = log_mel(load_mono(path, config), config).numpy()[:, :frames]
    bad = int((~np.isfinite(features.astype(np.float16))).sum())
    if bad:
        raise ValueError(f"{bad} of {features.size} log-mel values are NaN or Inf (or beyond float16's range)")
    return features


@stage(name="compute-feature-shard", retries=1, retry_delay_seconds=2)
def compute_feature_shard(store: str, shard: int, start: int, clip_ids: list[str], paths: list[str],
                          frames: int, config: dict, key: str, threads: int = 1) -> dict:
    """Compute and write shard `shard` (rows start .. start+len(paths)); returns its statistics.

    Idempotent: a shard whose record matches `key` is not recomputed."""
    if shard_done(store, shard, key):
        return shard_record(store, shard)
    set_threads(threads)
    cfg = FeatureConfig(**config)
    n = len(paths)
    logmels = np.zeros((n, cfg.n_mels, frames), dtype=np.float16)
    lengths = np.zeros(n, dtype=np.int32)
    status = np.full(n, OK_STATUS, dtype=np.int8)
    total = total_sq = 0.0
    count = 0
    failures = []
    for i, path in enumerate(paths):
        try:
            features = finite_log_mel(path, cfg, frames)
        except Exception as exc:  # any decode problem marks the clip, never the shard
            status[i] = FAILED_STATUS
            failures.append({"clip_id": clip_ids[i], "error": f"{type(exc).__name__}: {exc}"})
            continue
        lengths[i] = features.shape[1]
        logmels[i, :, : features.shape[1]] = features
        values = features.astype(np.float64)
        total += values.sum()
        total_sq += np.square(values).sum()
        count += values.size
    write_shard(store, shard, start, logmels, lengths, status, key,
                sum=total, sum_sq=total_sq, count=count, failures=failures)
    return shard_record(store, shard)


@stage(name="finalize-features", output="store")
def finalize_features(store: str, shards: int, key: str) -> dict:
    """Dataset mean/std from the shards' statistics; then the store's completion record."""
    records = [shard_record(store, s) for s in range(shards)]
    total = sum(r["sum"] for r in records)
    total_sq = sum(r["sum_sq"] for r in records)
    count = sum(r["count"] for r in records)
    if count == 0:
        raise RuntimeError(f"no clip in {store} could be decoded: see the shard records' failures")
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 1e-12)))
    failures = [f for r in records for f in r["failures"]]
    finalize_store(store, mean=mean, std=std, decode_failures=len(failures))
    write_record(store, key, mean=mean, std=std, decode_failures=failures)
    return {"store": store, "mean": mean, "std": std, "decode_failures": len(failures)}
