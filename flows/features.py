"""Flow cache-features: a manifest's ok clips -> log-mel features in a sharded Zarr store."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger

from flows.artifacts import publish_feature_summary
from flows.runners import OnDemandCluster
from flows.sharded import fill_shards
from model.audio import frame_count
from model.config import FeatureConfig
from storage.features import create_store
from storage.layout import DataLayout
from storage.manifest import manifest_key, ok_rows, read_manifest, resolve_audio
from storage.records import is_complete, stable_key
from tasks.caching import run_stage
from tasks.features import compute_feature_shard, finalize_features

STORE_VERSION = 1  # bump when the store's layout or the computation changes


@flow(name="cache-features")
def cache_features(manifest: str, data_dir: str = "data", config: FeatureConfig | None = None,
                   shard_size: int = 64, dask_address: str | None = None,
                   n_workers: int | None = None) -> str:
    """Compute log-mel features of a manifest's ok clips; returns the Zarr store's path.

    Resumable by shard; a rerun with the same manifest content and config is a cache hit;
    another config gives another store.

    Args:
        manifest: Parquet manifest written by download-audioset (or a task recipe).
        data_dir: root of data/; the store goes to data/features/<manifest>-<key>.zarr.
        config: log-mel front end (25 ms / 10 ms, 64 mel bins, 60-7800 Hz by default).
        shard_size: clips per shard, the unit of resume and of Dask work.
        dask_address: an existing Dask scheduler (tcp://host:8786); default: a local cluster.
        n_workers: worker processes of the local cluster (default: up to 4, one per core).
    """
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
    longest = max(float(r.get("duration_s") or config.max_seconds) for r in rows)
    frames = min(config.max_frames, frame_count(int(np.ceil(longest * config.sample_rate)), config))

    def create() -> None:
        create_store(store, [r["clip_id"] for r in rows], config.n_mels, frames, shard_size,
                     {"feature_key": key, "feature_config": config.model_dump(),
                      "manifest": str(manifest_path.resolve()), "manifest_key": manifest_key(rows)})

    def job(shard: int, start: int, stop: int) -> dict:
        return dict(store=str(store), shard=shard, start=start, clip_ids=[r["clip_id"] for r in rows[start:stop]],
                    paths=[str(resolve_audio(manifest_path, r["path"])) for r in rows[start:stop]],
                    frames=frames, config=config.model_dump())

    with ExitStack() as stack:
        shards = len(range(0, len(rows), shard_size))
        if not is_complete(store, key):
            shards = fill_shards(compute_feature_shard.name, store, key, len(rows), shard_size, create, job,
                                 OnDemandCluster(dask_address, n_workers, stack), "log-mel features",
                                 key_attr="feature_key")
    summary = run_stage(finalize_features, key, store=str(store), shards=shards)
    logger.info("cache-features: %d clips, mean %.3f std %.3f, %d failed to decode -> %s",
                len(rows), summary["mean"], summary["std"], summary["decode_failures"], store)
    publish_feature_summary(store, len(rows), summary)
    return str(store)
