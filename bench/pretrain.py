"""Pre-training speed, measured side by side in one run (issue: pretrain-decar benchmarks).

On a generated demo pool (mirror source, no network):
  1. embedding extraction: the stage's compute path (Zarr reads, normalisation, forward) and
     the whole Dask stage vs a bare forward on random tensors of the same shapes;
  2. training: model.decar's loop (sampler, loader, SpecAugment, two optimisers) vs a bare
     forward+backward+step loop on random tensors of the same shapes;
  3. faiss k-means vs scikit-learn KMeans, 200k x 128, k=512, 20 iterations each;
  4. the wall time of a fully cached rerun of pretrain-decar.

    .venv/bin/python bench/pretrain.py                 # ~5 min on 2 cores
    .venv/bin/python bench/pretrain.py --clips 100 --kmeans-n 20000
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--kmeans-n", type=int, default=200_000)
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="decar-bench-"))
    from demo.prefect_server import local_prefect_api

    with local_prefect_api(work / "prefect"):
        run(args, work)


def run(args, work: Path) -> None:
    import torch
    from kmeans import compare_kmeans, mixture

    from demo.pool import generate_pool
    from flows import cache_features, download_audioset, pretrain_decar
    from model.clustering import nmi
    from storage.features import FeatureReader

    torch.set_num_threads(os.cpu_count() or 1)
    generate_pool(work / "pool", n_clips=args.clips, seconds=args.seconds, seed=0)
    manifest = download_audioset(str(work / "pool" / "balanced_train_segments.csv"), source="mirror",
                                 mirror=str(work / "pool" / "mirror"), data_dir=str(work / "data"))
    store = cache_features(manifest, data_dir=str(work / "data"))
    reader = FeatureReader(store)
    print(f"pool: {len(reader)} clips of {args.seconds:g} s, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, EfficientNet-B0")

    run_dir = Path(pretrain_decar(store, "bench", runs_dir=str(work / "runs"), epochs=1, clusters=16,
                                  batch_size=args.batch_size))
    extraction(reader, run_dir, args.batch_size)
    training(store, run_dir, args.batch_size, len(reader))

    started = time.perf_counter()
    pretrain_decar(store, "bench", runs_dir=str(work / "runs"), epochs=1, clusters=16, batch_size=args.batch_size)
    print(f"\nfully cached rerun of pretrain-decar (1 epoch): {time.perf_counter() - started:.1f} s wall")

    x, _ = mixture(args.kmeans_n, 128, 512)
    r = compare_kmeans(x, 512, 20)
    print(f"\nk-means {args.kmeans_n} x 128, k=512, 20 iterations: faiss {r['faiss_s']:.1f} s, "
          f"sklearn KMeans {r['sklearn_s']:.1f} s -> sklearn/faiss time ratio {r['sklearn_s'] / r['faiss_s']:.2f}x; "
          f"NMI between the two labelings {nmi(r['faiss'], r['sklearn']):.3f}")


def extraction(reader, run_dir: Path, batch_size: int) -> None:
    import torch

    from flows.runners import OnDemandCluster, local_cluster
    from flows.sharded import map_shards
    from model.decar import embed
    from model.network import DecarNet
    from storage.checkpoint import load_checkpoint
    from storage.embeddings import create_embeddings
    from storage.records import read_record
    from storage.sharded import shard_ranges
    from tasks.embed import embed_shard

    payload = load_checkpoint(run_dir / "init" / "checkpoint.pt")
    net = DecarNet.from_checkpoint(payload)
    n = len(reader)
    started = time.perf_counter()
    embed(net, reader.batches(0, n, batch_size), reader.mean, reader.std, torch.device("cpu"))
    pipeline = n / (time.perf_counter() - started)

    widths = [int(reader.lengths[a:a + batch_size].max()) for a in range(0, n, batch_size)]
    started = time.perf_counter()
    with torch.no_grad():
        for a, width in zip(range(0, n, batch_size), widths):
            net.embed(torch.randn(min(batch_size, n - a), 1, 64, width))
    bare = n / (time.perf_counter() - started)

    # the whole Dask stage (2 one-thread workers, cluster start included) on a fresh output
    create_embeddings(run_dir / "bench.zarr", n, 512, 64, "bench")
    ckpt = str(run_dir / "init" / "checkpoint.pt")
    jobs = [dict(embeddings=str(run_dir / "bench.zarr"), features=str(reader.path), checkpoint=ckpt,
                 checkpoint_sha256=read_record(ckpt)["sha256"], shard=s, start=a, stop=b, batch_size=batch_size,
                 device="cpu", key=f"bench-{s}") for s, (a, b) in enumerate(shard_ranges(n, 64))]
    from contextlib import ExitStack

    with local_cluster(2) as address, ExitStack() as stack:
        runner = OnDemandCluster(address, None, stack).task_runner
        started = time.perf_counter()
        map_shards.with_options(task_runner=runner())(embed_shard.name, jobs, [False] * len(jobs), "bench")
        cold = n / (time.perf_counter() - started)  # workers import torch and load the model
        jobs = [{**job, "key": f"bench2-{job['shard']}"} for job in jobs]
        started = time.perf_counter()
        map_shards.with_options(task_runner=runner())(embed_shard.name, jobs, [False] * len(jobs), "bench")
        warm = n / (time.perf_counter() - started)  # what later epochs of a run see
    print(f"\nextraction: bare forward {bare:.1f} clips/s; stage compute path {pipeline:.1f} clips/s "
          f"(ratio {pipeline / bare:.2f}); Dask stage on 2 one-thread workers: first use {cold:.1f} clips/s "
          f"(ratio {cold / bare:.2f}), warm workers {warm:.1f} clips/s (ratio {warm / bare:.2f})")


def training(store: str, run_dir: Path, batch_size: int, clips: int) -> None:
    import torch
    from torch import nn

    from model.config import TrainConfig
    from model.decar import train_on_pseudo_labels
    from model.network import DecarNet
    from storage.checkpoint import load_checkpoint
    from storage.features import FeatureReader
    from storage.labels import read_labels

    reader = FeatureReader(store)
    _, labels, rows = read_labels(run_dir / "epoch-000" / "labels.parquet")
    payload = load_checkpoint(run_dir / "init" / "checkpoint.pt")
    net = DecarNet.from_checkpoint(payload)
    started = time.perf_counter()
    out = train_on_pseudo_labels(net, lambda i: (reader.get(int(rows[i])) - reader.mean) / reader.std, labels,
                                 TrainConfig(batch_size=batch_size), seed=0, epoch=0, device=torch.device("cpu"))
    pipeline = out["steps"] * batch_size / (time.perf_counter() - started)

    net = DecarNet.from_checkpoint(payload).train()
    net.reset_head(16)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    width = int(reader.lengths.max())
    started = time.perf_counter()
    for _ in range(out["steps"]):
        loss = nn.functional.cross_entropy(net(torch.randn(batch_size, 1, 64, width)),
                                           torch.randint(0, 16, (batch_size,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    bare = out["steps"] * batch_size / (time.perf_counter() - started)
    print(f"training: bare forward+backward {bare:.1f} clips/s; train_on_pseudo_labels loop {pipeline:.1f} clips/s "
          f"(ratio {pipeline / bare:.2f}) over {out['steps']} steps")


if __name__ == "__main__":
    main()
