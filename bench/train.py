"""Training and extraction throughput, measured side by side in one run (issue 11: scale out pre-training).

On a generated feature store of 10 s clips (64 x 1001 float16 log-mels written with
storage.features.create_store/write_shard; no Prefect for the store):
  1. training stage (ClipLoader -> DataLoader -> batched SpecAugment -> step, through
     model.decar.train_on_pseudo_labels) vs a bare forward/backward/step on tensors already on the
     device, for 0, 1 and 2 loader workers;
  2. loader only (the training DataLoader without a model): clips/s and MB/s per worker, with the
     store read from Zarr and held in RAM (ClipLoader preload);
  3. 1 vs 2 training processes (gloo, tasks.launch.run_processes) with the same global batch:
     clips/s and the epoch's loss of both;
  4. the Dask extraction stage (flows.sharded.fill_shards on 2 one-thread workers) vs a bare forward,
     one task per shard (before) and one task per worker batch of shards (now).

    .venv/bin/python bench/train.py                    # a few minutes on 2 cores (narrow network)
    .venv/bin/python bench/train.py --full --clips 512 --draws 256 --extract-clips 20000
    .venv/bin/python bench/train.py --parts extract --extract-clips 2000
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

CLIP_MB = 64 * 1001 * 2 / 1e6  # one 10 s clip of float16 log-mel


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="train,loader,ddp,extract", help="comma-separated subset")
    p.add_argument("--clips", type=int, default=256, help="clips in the training store (10 s each)")
    p.add_argument("--draws", type=int, default=320, help="training draws per measurement")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--full", action="store_true", help="EfficientNet-B0 (default: width_mult 0.25)")
    p.add_argument("--workers", default="0,1,2", help="loader workers to compare")
    p.add_argument("--extract-clips", type=int, default=2000)
    p.add_argument("--extract-seconds", type=float, default=2.0, help="clip length for extraction")
    p.add_argument("--extract-shard-size", type=int, default=256, help="embed_shard_size (the flow's default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training parts (2 threads on this "
                   "shared, loaded 2-core machine ran ~8x slower than 1: OpenMP threads spin against other work)")
    p.add_argument("--launcher-threads", action="store_true", help="part 3 also with 1 process on the launcher's "
                   "default threads (cores / processes)")
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    return p.parse_args()


def make_store(path: Path, clips: int, seconds: float, shard_size: int = 256, seed: int = 0) -> str:
    """A feature store of `clips` random log-mels of `seconds` (varying by up to 10% shorter)."""
    import numpy as np

    from storage.features import create_store, finalize_store, write_shard

    frames = int(round(seconds * 100)) + 1
    rng = np.random.default_rng(seed)
    create_store(path, [f"clip{i:06d}" for i in range(clips)], 64, frames, shard_size,
                 {"feature_config": {}, "feature_key": "bench"})
    for s, a in enumerate(range(0, clips, shard_size)):
        n = min(shard_size, clips - a)
        x = rng.normal(-4.0, 2.0, (n, 64, frames)).astype(np.float16)
        lengths = rng.integers(int(frames * 0.9), frames + 1, n)
        for j, length in enumerate(lengths):
            x[j, :, length:] = 0
        write_shard(path, s, a, x, lengths, np.zeros(n, np.int8), "bench")
    finalize_store(path, mean=-4.0, std=2.0)
    return str(path)


def network(width: float, seed: int = 0):
    from model.config import ModelConfig
    from model.network import DecarNet

    return DecarNet.random_init(ModelConfig(width_mult=width), seed)


def train_config(args):
    from model.config import TrainConfig

    return TrainConfig(batch_size=args.batch_size, samples_per_epoch=args.draws, bn_clips=0)


def labels_for(clips: int, clusters: int):
    import numpy as np

    return np.random.default_rng(1).integers(0, clusters, clips)


def train_step(net, optimisers, loss_fn, x, y) -> float:
    """One forward/backward/step of the DECAR network on a batch already in memory (both optimisers)."""
    from model.network import add_channel

    loss = loss_fn(net(add_channel(x)), y)
    for o in optimisers:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in optimisers:
        o.step()
    return loss.item()


def bare_step(width: float, cfg, clusters: int, steps: int, frames: int) -> float:
    """Clips/s of forward/backward/step on tensors already on the device (same optimisers, same shapes)."""
    import torch
    from torch import nn

    from model.decar import make_optimisers

    net = network(width).train()
    net.reset_head(clusters)
    optimisers = make_optimisers(net, cfg)
    x = torch.randn(cfg.batch_size, 64, frames)
    y = torch.randint(0, clusters, (cfg.batch_size,))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        train_step(net, optimisers, loss_fn, x, y)

    step()  # warm-up, as the stage's first step is excluded below
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * cfg.batch_size / (time.perf_counter() - started)


def stage_step(store: str, width: float, cfg, labels, workers: int, preload: bool | None = None) -> dict:
    """train_on_pseudo_labels with `workers` loader workers: whole-call and steady (after step 1) clips/s."""
    import torch

    from model.decar import train_on_pseudo_labels
    from storage.features import ClipLoader

    net = network(width)
    marks = {}

    def on_step(step, steps, loss):
        marks.setdefault(step, time.perf_counter())

    started = time.perf_counter()
    out = train_on_pseudo_labels(net, ClipLoader(store, preload=preload), labels, cfg, seed=0, epoch=0,
                                 device=torch.device("cpu"), on_step=on_step, loader_workers=workers)
    ended = time.perf_counter()
    steps = out["steps"]
    return {"whole": steps * cfg.batch_size / (ended - started),
            "steady": (steps - 1) * cfg.batch_size / (marks[steps] - marks[1]), "loss": out["loss"], "steps": steps}


def time_split(store: str, clips: int, width: float, cfg, clusters: int, steps: int, preload: bool) -> dict:
    """Milliseconds per batch spent in the loader (0 workers), in SpecAugment and in the step, timed
    around each piece of the stage's loop: the ratio's complement, robust to load drifting."""
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from model.augment import SpecAugment
    from model.data import Clips, pad_batch
    from model.decar import make_optimisers
    from storage.features import ClipLoader

    net = network(width).train()
    net.reset_head(clusters)
    optimisers, augment, loss_fn = make_optimisers(net, cfg), SpecAugment.from_config(cfg), nn.CrossEntropyLoss()
    order = np.random.default_rng(0).permutation(clips)
    batches = [order[a:a + cfg.batch_size].tolist() for a in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    dataset = Clips(ClipLoader(store, preload=preload), np.zeros(clips, int))
    loader = iter(DataLoader(dataset, batch_sampler=batches[:steps + 1], collate_fn=pad_batch))
    spent = {"loader": 0.0, "augment": 0.0, "step": 0.0}
    for step in range(steps + 1):
        t0 = time.perf_counter()
        x, lengths, y = next(loader)
        t1 = time.perf_counter()
        x = augment(x, lengths)
        t2 = time.perf_counter()
        train_step(net, optimisers, loss_fn, x, torch.randint(0, clusters, (len(y),)))
        if step:  # the first batch warms caches and allocators
            spent["loader"] += t1 - t0
            spent["augment"] += t2 - t1
            spent["step"] += time.perf_counter() - t2
    return {k: 1000 * v / steps for k, v in spent.items()}


def part_train(args, store: str) -> None:
    import torch

    width = 1.0 if args.full else 0.25
    cfg = train_config(args)
    labels = labels_for(args.clips, args.clusters)
    steps = args.draws // args.batch_size
    print(f"\n1. training stage vs bare step: {'EfficientNet-B0' if args.full else 'B0 x0.25'}, batch "
          f"{args.batch_size}, {steps} steps of 10 s clips, {torch.get_num_threads()} torch threads")
    # The bare step is timed before and after the stages: on a shared machine the load drifts within
    # minutes, and the mean of the two brackets the stages' conditions (both printed).
    bare_before = bare_step(width, cfg, args.clusters, steps - 1, 1001)
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        rows.append((f"{w} loader workers, Zarr reads", stage_step(store, width, cfg, labels, w, preload=False)))
    rows.append(("0 loader workers, store in RAM (the default when it fits)",
                 stage_step(store, width, cfg, labels, 0, preload=True)))
    bare_after = bare_step(width, cfg, args.clusters, steps - 1, 1001)
    bare = (bare_before + bare_after) / 2
    print(f"   bare forward/backward/step: {bare_before:.1f} clips/s before the stages, {bare_after:.1f} after")
    for name, r in rows:
        print(f"   {name}: stage {r['steady']:.1f} clips/s after step 1 (ratio {r['steady'] / bare:.2f}), "
              f"{r['whole']:.1f} clips/s whole call incl. worker start (ratio {r['whole'] / bare:.2f})")
    for preload in (False, True):
        ms = time_split(store, args.clips, width, cfg, args.clusters, steps - 1, preload)
        share = (ms["loader"] + ms["augment"]) / sum(ms.values())
        print(f"   where a 0-worker batch's time goes ({'store in RAM' if preload else 'Zarr reads'}): loader "
              f"{ms['loader']:.0f} ms, SpecAugment {ms['augment']:.0f} ms, forward/backward/step {ms['step']:.0f} ms: "
              f"input work {share:.1%} of the batch (ratio bound {1 - share:.2f})")


def loader_rate(store: str, args, workers: int, preload: bool | None) -> float:
    from torch.utils.data import DataLoader

    from model.data import Clips, pad_batch
    from storage.features import ClipLoader

    labels = labels_for(args.clips, args.clusters)
    order = [int(i) for i in __import__("numpy").random.default_rng(2).integers(0, args.clips, 4 * args.clips)]
    batches = [order[a:a + args.batch_size] for a in range(0, len(order), args.batch_size)]
    loader = DataLoader(Clips(ClipLoader(store, preload=preload), labels), batch_sampler=batches,
                        collate_fn=pad_batch, num_workers=workers,
                        multiprocessing_context="spawn" if workers else None)
    started, n = None, 0
    for x, _, _ in loader:
        if started is None:
            started = time.perf_counter()  # after the first batch: workers started, store opened (and preloaded)
            continue
        n += len(x)
    return n / (time.perf_counter() - started)


def part_loader(args, store: str) -> None:
    print(f"\n2. loader only (training DataLoader, random rows, batch {args.batch_size}, no model); "
          f"{CLIP_MB:.3f} MB of float16 per clip")
    for preload in (False, True):
        for w in [int(x) for x in args.workers.split(",")]:
            rate = loader_rate(store, args, w, preload)
            per = rate / max(w, 1)
            print(f"   {'RAM (preload)' if preload else 'Zarr          '} {w} workers: {rate:.0f} clips/s "
                  f"({rate * CLIP_MB:.0f} MB/s); per worker {per:.0f} clips/s ({per * CLIP_MB:.0f} MB/s)")


def ddp_rank(job: dict, rank: int, world: int, device, report=None) -> dict:
    """One rank of the 1-vs-2-process comparison (what tasks.train.train_rank does, minus the checkpoint)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from model.config import TrainConfig
    from model.decar import train_on_pseudo_labels
    from storage.features import ClipLoader

    if job.get("threads"):
        torch.set_num_threads(job["threads"])  # else the launcher's cores / processes
    net = network(job["width"])
    marks = {}
    started = time.perf_counter()
    out = train_on_pseudo_labels(net, ClipLoader(job["store"]), labels_for(job["clips"], job["clusters"]),
                                 TrainConfig(**job["cfg"]), seed=0, epoch=0, device=device,
                                 on_step=lambda s, n, loss: marks.setdefault(s, time.perf_counter()), rank=rank,
                                 world=world, wrap=(lambda m: DistributedDataParallel(m)) if world > 1 else None)
    ended = time.perf_counter()
    clips = out["steps"] * TrainConfig(**job["cfg"]).batch_size  # global batch per step
    return {"loss": out["loss"], "steps": out["steps"], "threads": torch.get_num_threads(),
            "whole": clips / (ended - started),
            "steady": (clips - clips // out["steps"]) / (marks[out["steps"]] - marks[1])}


def part_ddp(args, store: str) -> None:
    from tasks.launch import run_processes

    width = 1.0 if args.full else 0.25
    job = dict(store=store, width=width, clips=args.clips, clusters=args.clusters,
               cfg=train_config(args).model_dump())
    print(f"\n3. 1 vs 2 training processes (gloo, tasks.launch.run_processes), global batch {args.batch_size}, "
          f"{args.draws} draws")
    results = {}
    for world, threads in ((1, 1), (2, 1), (1, None)):
        if threads is None and not args.launcher_threads:
            continue  # the launcher's default for 1 process: every core
        started = time.perf_counter()
        r = run_processes(ddp_rank, {**job, "threads": threads}, ["cpu"] * world)
        results.setdefault(world, r)
        print(f"   {world} process(es) x {r['threads']} threads: {r['steady']:.1f} clips/s after step 1, "
              f"{r['whole']:.1f} clips/s in train_on_pseudo_labels, {time.perf_counter() - started:.1f} s with "
              f"spawn; epoch loss {r['loss']:.4f} over {r['steps']} steps")
    print(f"   2 processes over 1 (1 thread each): speed {results[2]['steady'] / results[1]['steady']:.2f}x, "
          f"loss difference {results[2]['loss'] - results[1]['loss']:+.4f}")


def part_extract(args, work: Path) -> None:
    from demo.prefect_server import local_prefect_api

    with local_prefect_api(work / "prefect"):
        extraction(args, work)


def extraction(args, work: Path) -> None:
    from contextlib import ExitStack

    import torch
    from prefect import flow

    import flows.sharded as sharded
    from flows.runners import OnDemandCluster, local_cluster
    from storage.checkpoint import save_checkpoint
    from storage.embeddings import create_embeddings
    from storage.features import FeatureReader
    from storage.records import read_record
    from tasks.embed import embed_shard

    n, size, batch = args.extract_clips, args.extract_shard_size, 64
    store = make_store(work / f"extract-{n}.zarr", n, args.extract_seconds)
    reader = FeatureReader(store)
    net = network(1.0).eval()
    ckpt = str(work / "init.pt")
    save_checkpoint(ckpt, {"epoch": -1, "model_config": net.config.model_dump(), "feature_config": {},
                           "norm": {"mean": reader.mean, "std": reader.std}, **net.state(), "clusters": 0}, "bench")
    sha = read_record(ckpt)["sha256"]

    sample = min(n, 512)  # the in-process bare rate on a sample of the clips (same shapes)
    widths = [int(reader.lengths[a:a + batch].max()) for a in range(0, sample, batch)]
    bares = {}
    for threads in (1, os.cpu_count() or 1):
        torch.set_num_threads(threads)
        started = time.perf_counter()
        with torch.no_grad():
            for a, width in zip(range(0, sample, batch), widths):
                net.embed(torch.randn(min(batch, sample - a), 1, 64, width))
        bares[threads] = sample / (time.perf_counter() - started)

    @flow(name="bench-extraction")
    def stage(out: str, key: str, address: str) -> float:
        with ExitStack() as stack:
            cluster = OnDemandCluster(address, None, stack)
            began = time.perf_counter()
            sharded.fill_shards(
                embed_shard.name, out, key, n, size, create=lambda: create_embeddings(out, n, 512, size, key),
                job=lambda s, a, b: dict(embeddings=out, features=store, checkpoint=ckpt, checkpoint_sha256=sha,
                                         shard=s, start=a, stop=b, batch_size=batch, device="cpu"),
                cluster=cluster, what="embeddings")
            return time.perf_counter() - began

    print(f"\n4. extraction, {n} clips of {args.extract_seconds:g} s, EfficientNet-B0, batch {batch}, "
          f"embed_shard_size {size} ({len(range(0, n, size))} shards); bare forward in this process "
          + ", ".join(f"{v:.1f} clips/s on {t} thread(s)" for t, v in bares.items()))
    print("   reference: a bare forward of the same shapes (up to 1,000 clips) on the same 2 Dask workers (random "
          "tensors, no Prefect, no I/O), measured before and after the stage runs (mean of the two)")
    with local_cluster(2) as address:
        bare_before = bare_on_workers(address, min(n, 1000), widths, batch)
        batched = set(sharded.BATCHED_STAGES)
        rates = {}
        for label, per_batch in (("first stage run (model load), task per worker batch", True),
                                 ("task per shard (before)", False), ("task per worker batch (now)", True)):
            sharded.BATCHED_STAGES.clear()
            if per_batch:
                sharded.BATCHED_STAGES.update(batched)
            out = str(work / f"emb-{label[:12].replace(' ', '-')}-{time.monotonic_ns()}.zarr")
            rates[label] = n / stage(out, f"bench-{time.monotonic_ns()}", address)
        sharded.BATCHED_STAGES.update(batched)
        bare_after = bare_on_workers(address, min(n, 1000), widths, batch)
    bare = (bare_before + bare_after) / 2
    print(f"   bare forward on the 2 workers: {bare_before:.1f} clips/s before, {bare_after:.1f} after")
    for label, rate in rates.items():
        print(f"   Dask stage on 2 one-thread workers, {label}: {rate:.1f} clips/s (ratio {rate / bare:.2f})")


def bare_on_workers(address: str, n: int, widths: list[int], batch: int) -> float:
    """Clips/s of a bare forward of n clips split over the cluster's workers, run at the same time."""
    from distributed import Client

    def forward(clips: int) -> float:
        import torch

        torch.set_num_threads(1)
        net = network(1.0).eval()
        with torch.no_grad():
            net.embed(torch.randn(2, 1, 64, widths[0]))  # warm-up
            started = time.perf_counter()
            for i, a in enumerate(range(0, clips, batch)):
                net.embed(torch.randn(min(batch, clips - a), 1, 64, widths[i % len(widths)]))
        return time.perf_counter() - started

    with Client(address) as client:
        workers = list(client.scheduler_info()["workers"])
        share = n // len(workers)
        futures = [client.submit(forward, share, workers=[w], pure=False) for w in workers]
        return share * len(workers) / max(client.gather(futures))


def main() -> None:
    args = parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="decar-bench-train-"))
    parts = set(args.parts.split(","))
    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    if parts & {"train", "loader", "ddp"}:
        store = make_store(work / "train.zarr", args.clips, 10.0)
    if "train" in parts:
        part_train(args, store)
    if "loader" in parts:
        part_loader(args, store)
    if "ddp" in parts:
        part_ddp(args, store)
    if "extract" in parts:
        part_extract(args, work)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")


if __name__ == "__main__":
    main()
