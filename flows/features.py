"""Flow cache-features: a manifest's ok clips -> log-mel features in a sharded Zarr store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.runners import dask_runner
from flows.sharded import run_sharded
from model.audio import frame_count
from model.config import FeatureConfig
from storage.features import (create_store, finalize_store, shard_done, shard_ranges, shard_record,
                              laid_out)
from storage.layout import DataLayout
from storage.manifest import manifest_key, ok_rows, read_manifest, resolve_audio
from storage.records import is_complete, stable_key, write_record
from tasks.caching import run_stage, stage
from tasks.features import compute_feature_shard

STORE_VERSION = 1  # bump when the store's layout or the computation changes


@flow(name="compute-feature-shards")
def compute_feature_shards(store: str, jobs: list[dict], done: list[bool]) -> list[dict]:
    """Runs on the Dask task runner: each worker writes only its own shards."""
    return run_sharded(compute_feature_shard, jobs, done, what="log-mel features")


@stage(name="finalize-features")
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


@flow(name="cache-features")
def cache_features(manifest: str, data_dir: str = "data", config: FeatureConfig | None = None,
                   shard_size: int = 64, dask_address: str | None = None,
                   n_workers: int | None = None) -> str:
    """Compute log-mel features of the manifest's ok clips; returns the Zarr store's path.

    Resumable by shard; a rerun with the same manifest content and config is a cache hit;
    another config gives another store."""
    logger = get_run_logger()
    config = config or FeatureConfig()
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    manifest_path = Path(manifest)
    rows = ok_rows(read_manifest(manifest_path))
    if not rows:
        raise ValueError(f"manifest {manifest_path} has no rows with status 'ok': nothing to compute")
    key = stable_key(STORE_VERSION, config.model_dump(), manifest_key(rows), shard_size)
    store = DataLayout(data_dir).features(manifest_path.stem, key)

    if not is_complete(store, key):
        longest = max(float(r.get("duration_s") or config.max_seconds) for r in rows)
        frames = min(config.max_frames, frame_count(int(np.ceil(longest * config.sample_rate)), config))
        if not laid_out(store, key):
            create_store(store, [r["clip_id"] for r in rows], config.n_mels, frames, shard_size,
                         {"feature_key": key, "feature_config": config.model_dump(),
                          "manifest": str(manifest_path.resolve()), "manifest_key": manifest_key(rows)})
        ranges = shard_ranges(len(rows), shard_size)
        jobs = [dict(store=str(store), shard=s, start=a,
                     clip_ids=[r["clip_id"] for r in rows[a:b]],
                     paths=[str(resolve_audio(manifest_path, r["path"])) for r in rows[a:b]],
                     frames=frames, config=config.model_dump(), key=f"{key}-{s}")
                for s, (a, b) in enumerate(ranges)]
        done = [shard_done(store, s, job["key"]) for s, job in enumerate(jobs)]
        logger.info("cache-features: %d clips in %d shards (%d already done) -> %s",
                    len(rows), len(jobs), sum(done), store)
        if not all(done):
            runner = dask_runner(dask_address, n_workers)
            compute_feature_shards.with_options(task_runner=runner)(str(store), jobs, done)
    summary = run_stage(finalize_features, store, key, store=str(store),
                        shards=len(shard_ranges(len(rows), shard_size)))
    logger.info("cache-features: %d clips, mean %.3f std %.3f, %d failed to decode -> %s",
                len(rows), summary["mean"], summary["std"], summary["decode_failures"], store)
    create_markdown_artifact(
        f"### Features\n- store: `{store}`\n- clips: {len(rows)}\n- decode failures: "
        f"{summary['decode_failures']}\n- mean / std: {summary['mean']:.3f} / {summary['std']:.3f}\n",
        key="cache-features-summary")
    return str(store)
