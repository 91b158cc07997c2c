"""Feature caching vs decoding alone, measured side by side in one run (issue 11).

On generated 10 s FLAC clips (16 kHz mono, tones + noise) listed in a manifest:
  1. decode only (tasks.features.load_mono: soundfile read, mono, cut), one thread, in this process;
  2. decode + log-mel (tasks.features.finite_log_mel, what a shard task computes per clip), one thread;
  3. the whole cache-features flow (Dask shard tasks writing the Zarr store, records, statistics) on
     a local cluster of 1 and of 2 one-thread workers, each on a fresh copy of the data folder (the
     flow starts its cluster: worker start is included, as a user sees it).

    .venv/bin/python bench/features.py                  # ~2 min on 2 cores
    .venv/bin/python bench/features.py --clips 1000 --shard-size 64
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=160)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    return p.parse_args()


def make_clips(data: Path, clips: int, seconds: float, rate: int = 16000) -> Path:
    """FLAC clips under data/audio and their manifest data/manifests/bench.parquet."""
    import numpy as np
    import soundfile as sf

    from storage.manifest import write_manifest

    rng = np.random.default_rng(0)
    (data / "audio").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    rows = []
    for i in range(clips):
        f0 = rng.uniform(100, 2000)
        audio = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t)))
        audio = (audio + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        rel = f"audio/clip{i:05d}.flac"
        sf.write(data / rel, audio, rate, format="FLAC")
        rows.append(dict(clip_id=f"clip{i:05d}", path=rel, duration_s=seconds, sample_rate=rate, status="ok",
                         error="", error_kind="", source="bench"))
    return write_manifest(data / "manifests" / "bench.parquet", rows)


def main() -> None:
    args = parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="decar-bench-features-"))
    from demo.prefect_server import local_prefect_api

    with local_prefect_api(work / "prefect"):
        run(args, work)


def run(args, work: Path) -> None:
    import shutil

    import torch

    from flows import cache_features
    from model.config import FeatureConfig
    from storage.features import FeatureReader
    from storage.manifest import read_manifest, resolve_audio
    from tasks.features import finite_log_mel, load_mono

    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    manifest = make_clips(work / "data", args.clips, args.seconds)
    paths = [str(resolve_audio(manifest, r["path"])) for r in read_manifest(manifest)]
    config = FeatureConfig()
    n = len(paths)

    started = time.perf_counter()
    for p in paths:
        load_mono(p, config)
    decode = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for p in paths:
        finite_log_mel(p, config, config.max_frames)
    compute = n / (time.perf_counter() - started)
    print(f"{n} clips of {args.seconds:g} s (FLAC 16 kHz), shard size {args.shard_size}")
    print(f"   decode only, 1 thread: {decode:.1f} clips/s; decode + log-mel, 1 thread: {compute:.1f} clips/s "
          f"(ratio {compute / decode:.2f})")

    rates = {}
    for workers in (1, 2):
        data = work / f"data-{workers}"
        shutil.copytree(work / "data", data)
        started = time.perf_counter()
        store = cache_features(str(data / "manifests" / "bench.parquet"), data_dir=str(data),
                               shard_size=args.shard_size, n_workers=workers)
        rates[workers] = n / (time.perf_counter() - started)
        assert len(FeatureReader(store).usable) == n
        print(f"   cache-features flow, {workers} one-thread Dask worker(s), cluster start included: "
              f"{rates[workers]:.1f} clips/s (ratio to decode only {rates[workers] / decode:.2f}, "
              f"to decode + log-mel {rates[workers] / compute:.2f})")
    print(f"   2 workers over 1: {rates[2] / rates[1]:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")


if __name__ == "__main__":
    main()
