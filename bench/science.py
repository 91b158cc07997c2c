"""Does DECAR pre-training learn? A CPU-scale science benchmark on the synthetic sound world.

Pre-trains DECAR in memory on a generated pool (downstream.synth.pretraining_clip: pre-training
sources only) with the project's own pieces (DecarNet, PCA-whitening + k-means, the uniform
cluster sampler, SpecAugment, random crops, the linear probe), then probes the frozen
representation on the generated tasks (downstream.generated: held-out sources only) at several
epochs, against
    random init, default BN   the same initial network, eval mode, untouched running statistics
    random init, precise BN   the same initial network after recompute_batchnorm (= DECAR epoch 0)
    log-mel statistics        mean and std over time of each mel bin
with 95 % bootstrap confidence intervals over test clips (1000 resamples; across seeds the
resampled clips are shared and accuracies averaged). Prints a markdown table and the per-epoch
training loss against ln k; writes every number to a JSON file.

    make science                                           # default size: 2 seeds side by side, merged
    .venv/bin/python bench/science.py                      # the same, seeds one after the other
    .venv/bin/python bench/science.py --clips 600 --epochs 4 --seeds 0 --threads 1

Defaults = the best CPU-scale configuration of the search (/work/scratch/science-log.md): 600 clips
of 2 s, EfficientNet-B0 at width 0.25, 96-frame crops, k 64 on PCA-32 whitened z, 4 x 600 draws
per epoch (37 steps of 64), SGD lr 0.05 (momentum 0.9, wd 1e-5) constant, head initialised from
the L2-normalised cluster centroids of z (DeepCluster-v2), light SpecAugment (1 x 10 mel bins,
1 x 20 frames, warp 5), each clip's mean log-mel removed, precise BN on 256 pool clips before
every extraction and evaluation, 32 epochs, seeds 0 and 1; probes on global max (paper) and on
mean + max over time. The paper's settings (fresh head, heavy SpecAugment, PCA 128, no precise BN)
are all flags: --head fresh --freq-masks 2 --freq-mask-bins 30 --time-masks 2 --time-mask-frames 40
--pca-dim 128 --no-clip-norm --bn-clips 0.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--clips", type=int, default=600, help="pre-training pool size")
    a("--seconds", type=float, default=2.0, help="pool clip length")
    a("--epochs", type=int, default=32, help="pre-training epochs (training passes)")
    a("--eval-epochs", type=int, nargs="*", default=None, help="default: 0, epochs // 2, epochs")
    a("--seeds", type=int, nargs="+", default=[0, 1], help="pre-training seeds (init, pool order, k-means)")
    a("--width", type=float, default=0.25, help="ModelConfig.width_mult")
    a("--embedding-dim", type=int, default=512)
    a("--k", type=int, default=64, help="k-means clusters")
    a("--pca-dim", type=int, default=32, help="PCA-whitening dims before k-means (paper: 128)")
    a("--crop", type=int, default=96, help="TrainConfig.crop_frames (0 = whole clip)")
    a("--batch", type=int, default=64)
    a("--freq-masks", type=int, default=1, help="SpecAugment (paper: 2 masks of up to 30 bins)")
    a("--freq-mask-bins", type=int, default=10)
    a("--time-masks", type=int, default=1, help="SpecAugment (paper: 2 masks of up to 40 frames)")
    a("--time-mask-frames", type=int, default=20)
    a("--time-warp", type=int, default=5)
    a("--freq-shift", type=int, default=0, help="TrainConfig.freq_shift: shift crops by up to this many mel bins")
    a("--lr", type=float, default=0.05, help="body lr (SGD, momentum 0.9, wd 1e-5)")
    a("--head-lr", type=float, default=None, help="head lr (plain SGD); default = --lr")
    a("--schedule", choices=["constant", "cosine"], default="constant", help="body lr over all steps")
    a("--draws", type=float, default=4.0, help="samples per epoch, as a multiple of the pool size")
    a("--head", choices=["fresh", "warmup", "centroids"], default="centroids",
      help="fresh: N(0, 0.01) head (paper); warmup: the fresh head first fitted on the extracted z "
           "with the body frozen; centroids: rows = L2-normalised cluster centroids of z / temperature")
    a("--warmup-steps", type=int, default=20, help="head warm-up: batches (augmented draws, body frozen)")
    a("--warmup-lr", type=float, default=1e-2, help="head warm-up: Adam lr")
    a("--temperature", type=float, default=0.1, help="centroid head: logits = cos(z, c) / T")
    a("--bn-clips", type=int, default=256, help="precise BN sample (0 = never recompute: the paper)")
    a("--clip-norm", action=argparse.BooleanOptionalAction, default=True,
      help="subtract each clip's mean log-mel (one scalar: its loudness) before the network, for every "
           "network model alike (not for the log-mel statistics baseline)")
    a("--pooling", choices=["max", "meanmax", "both"], default="both",
      help="frozen representation: global max over the last map (paper) and/or mean+max over time")
    a("--probe-epochs", type=int, default=200)
    a("--method", choices=["decar", "delores-s", "delores-m", "slicer"], default="decar",
      help="the pre-training method; the instance methods use --lr as AdamW's, their own views and "
           "losses (model/instance.py) and --instance-options")
    a("--instance-options", default="{}", help="JSON of InstanceConfig settings for the instance methods, "
      'e.g. \'{"encoder_dim": 512, "bank_size": 1024}\'')
    a("--task-scale", type=float, default=1.0)
    a("--task-seconds", type=float, default=1.5)
    a("--tasks", nargs="*", default=None, help="default: every generated task")
    a("--resamples", type=int, default=1000)
    a("--threads", type=int, default=2)
    a("--cache", default=None, help="folder caching the generated pool and tasks (log-mel)")
    a("--json", default="science.json", help="where to write all numbers")
    a("--tag", default="", help="a label stored in the JSON")
    a("--merge", nargs="+", default=None, metavar="JSON", help="no run: one report pooling the seeds of these "
      "runs' JSON files (same settings), written to --json")
    return p.parse_args(argv)


# =============================================================================== data

def _cached(cache, name: str, make):
    if cache is None:
        return make()
    path = Path(cache) / f"{name}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


POOL_SEED = 31337  # first element of every pool clip's seed; generated tasks use TASK_SEED


def load_pool(clips: int, seconds: float, cache) -> np.ndarray:
    """(N, n_mels, frames) float32 log-mel of the pre-training pool."""
    from downstream.synth import pretraining_clip
    from model.audio import log_mel
    from model.config import FeatureConfig

    def make():
        audio = np.stack([pretraining_clip(np.random.default_rng([POOL_SEED, i]), seconds) for i in range(clips)])
        return {"logmel": np.concatenate([log_mel(audio[a:a + 256], FeatureConfig()).numpy()
                                          for a in range(0, clips, 256)])}
    return _cached(cache, f"pool-{clips}-{seconds:g}", make)["logmel"]


def load_task(name: str, scale: float, seconds: float, cache) -> dict:
    """split -> (log-mel (N, n_mels, frames) float32, labels (N,))."""
    from downstream.generated import VERSION, task_arrays
    from model.audio import log_mel
    from model.config import FeatureConfig

    def make():
        out = {}
        for split, (audio, labels) in task_arrays(name, scale, seconds).items():
            out[f"{split}_x"] = log_mel(audio, FeatureConfig()).numpy()
            out[f"{split}_y"] = labels
        return out
    d = _cached(cache, f"{name}-v{VERSION}-{scale:g}-{seconds:g}", make)
    return {s: (d[f"{s}_x"], d[f"{s}_y"]) for s in ("train", "valid", "test")}


# =============================================================================== representation

def _batches(x, size):
    for a in range(0, len(x), size):
        yield x[a:a + size]


def precise_bn(net, pool_t, bn_index, batch: int) -> None:
    """Recompute BN statistics on a fixed, seeded sample of whole pool clips (model/batchnorm.py)."""
    from model.batchnorm import recompute_batchnorm

    recompute_batchnorm(net, (x[:, None] for x in _batches(pool_t[bn_index], batch)), "cpu",
                        forward=lambda n, x: n.embed(x))


def extract(net, x_t, batch: int = 128) -> np.ndarray:
    """z = g(f(x)) for every row, in order, eval mode (DECAR's extraction)."""
    import torch

    net.eval()
    with torch.no_grad():
        return np.concatenate([net.embed(b[:, None]).numpy() for b in _batches(x_t, batch)])


def represent(net, x_t, pooling: str, batch: int = 128) -> np.ndarray:
    """The frozen representation: 'max' = global max over f's last map (the paper's h);
    'meanmax' = the map averaged over frequency, then mean + max over time (2 x dims)."""
    import torch

    from model.decar import mean_max_over_time

    net.eval()
    out = []
    with torch.no_grad():
        for b in _batches(x_t, batch):
            fmap = net.encoder.features(b[:, None])
            if pooling == "max":
                out.append(torch.amax(fmap, dim=(2, 3)).numpy())
            else:
                out.append(mean_max_over_time(fmap).numpy())
    return np.concatenate(out)


# =============================================================================== evaluation

def probe(train, valid, test, classes: int, epochs: int) -> tuple[float, np.ndarray]:
    """model.probe.train_linear_probe; returns (test accuracy, per-test-clip correctness).

    train_linear_probe reports only aggregates; its final test scoring goes through
    model.probe.scores(labels, predictions), which we wrap for that one call to keep the
    predictions (the probe itself is unchanged)."""
    import model.probe as mp

    seen = []
    original = mp.scores
    mp.scores = lambda labels, predictions: (seen.append((np.asarray(labels), np.asarray(predictions))),
                                             original(labels, predictions))[1]
    try:
        result = mp.train_linear_probe(*train, *valid, *test, epochs=epochs, seed=0, classes=classes)
    finally:
        mp.scores = original
    labels, predictions = seen[-1]
    correct = (labels == predictions).astype(np.float64)
    assert abs(correct.mean() - result["accuracy"]) < 1e-9
    return result["accuracy"], correct


def bootstrap(correct: list[np.ndarray], resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy over runs and its 95 % CI, resampling test clips (shared across runs)."""
    return mean_ci(np.mean(np.stack(correct), axis=0), resamples, seed)


def mean_ci(values: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-test-clip values and its 95 % bootstrap CI (clips resampled with replacement)."""
    idx = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def paired_difference(correct: list[np.ndarray], reference: list[np.ndarray], resamples: int,
                      seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of `correct` minus that of `reference` (both pooled over runs) and its 95 % CI, the
    same test clips resampled for both: paired, so far tighter than two overlapping intervals."""
    return mean_ci(np.mean(np.stack(correct), axis=0) - np.mean(np.stack(reference), axis=0), resamples, seed)


def random_reference(model: str, models: list[str]) -> str | None:
    """The random init a trained model is compared with: the same pooling and, where both exist, the
    same batch-norm protocol (recomputed statistics vs those the network carries)."""
    label, _, pooling = model.partition("|")
    if label.startswith("random-"):
        return None
    precise = f"random-preciseBN|{pooling}"
    return precise if label.endswith("-preciseBN") and precise in models else f"random-defaultBN|{pooling}"


def evaluate(features, tasks: dict, probe_epochs: int, key: str = "splits") -> dict:
    """features(log-mel split array) -> (N, d); returns task -> {accuracy, correct}.
    key: "splits" (the network's input: normalised tensors) or "raw" (log-mel as computed)."""
    out = {}
    for name, task in tasks.items():
        splits = {s: (features(x), y) for s, (x, y) in task[key].items()}
        acc, correct = probe(splits["train"], splits["valid"], splits["test"], task["classes"], probe_epochs)
        out[name] = {"accuracy": acc, "correct": correct}
    return out


# =============================================================================== DECAR
# One epoch: precise BN -> extract -> cluster -> densify -> sampler -> fresh/warm/centroid head -> train,
# with model/decar.py's steps and seeds (the pipeline's), plus precise BN, head init and lr schedule.

def decar_run(args, seed: int, pool_t, tasks: dict, log) -> dict:
    import copy

    import torch
    from torch import nn

    from model.augment import SpecAugment
    from model.clustering import cluster, cluster_stats, nmi
    from model.config import ClusterConfig, ModelConfig, TrainConfig
    from model.decar import cluster_seed, densify_labels, make_optimisers, train_one_epoch, train_seed
    from model.network import DecarNet
    from model.sampler import UniformClusterSampler

    poolings = ["max", "meanmax"] if args.pooling == "both" else [args.pooling]
    eval_epochs = sorted(set(args.eval_epochs if args.eval_epochs is not None
                             else [0, args.epochs // 2, args.epochs]))
    n, frames = len(pool_t), pool_t.shape[-1]
    draws = int(round(args.draws * n))
    train_cfg = TrainConfig(batch_size=args.batch, lr=args.lr, head_lr=args.head_lr, crop_frames=args.crop or None,
                            samples_per_epoch=draws, freq_masks=args.freq_masks, freq_mask_bins=args.freq_mask_bins,
                            time_masks=args.time_masks, time_mask_frames=args.time_mask_frames,
                            time_warp=args.time_warp, freq_shift=args.freq_shift)
    steps_per_epoch = draws // args.batch  # full batches only
    total_steps = steps_per_epoch * args.epochs
    cluster_cfg = ClusterConfig(clusters=args.k, pca_dim=args.pca_dim)
    bn_index = np.sort(np.random.default_rng([seed, 7]).choice(n, min(args.bn_clips, n), replace=False)) \
        if args.bn_clips else None
    device = torch.device("cpu")
    net = DecarNet.random_init(ModelConfig(width_mult=args.width, embedding_dim=args.embedding_dim), seed)
    result = {"seed": seed, "evals": {}, "epochs": []}

    def run_eval(label: str, network) -> None:
        started = time.perf_counter()
        for pooling in poolings:
            scores = evaluate(lambda x, p=pooling: represent(network, x, p), tasks, args.probe_epochs)
            result["evals"][f"{label}|{pooling}"] = scores
        log(f"  seed {seed} eval {label}: " + ", ".join(
            f"{t} {result['evals'][f'{label}|{p}'][t]['accuracy']:.3f}{'' if p == 'max' else '(mm)'}"
            for t in tasks for p in poolings) + f"  [{time.perf_counter() - started:.0f} s]")

    # (a) random init with default BN statistics: the initial network, untouched, eval mode
    run_eval("random-defaultBN", copy.deepcopy(net))

    previous = None
    for epoch in range(args.epochs + 1):
        started = time.perf_counter()
        # 1. precise BN on a fixed sample of pool clips (before every extraction and evaluation)
        if bn_index is not None:
            precise_bn(net, pool_t, bn_index, 128)
        if epoch in eval_epochs:  # (b) epoch 0 = random init with precise BN
            run_eval(f"decar-{epoch}", net)
        if epoch == args.epochs:
            break
        # 2. extract z, eval mode, fixed order
        z = extract(net, pool_t)
        # 3. cluster: PCA-whitening + L2 + k-means, a new seed each epoch; 4. densify
        labels, clusters = densify_labels(cluster(z, cluster_cfg, cluster_seed(seed, epoch)))
        stats = {"epoch": epoch, "clusters": clusters, "ln_k": math.log(clusters),
                 "nmi_prev": nmi(previous, labels) if previous is not None else None,
                 "largest_fraction": cluster_stats(labels)["largest_fraction"],
                 "z_spread": float(z.std(0).mean() / (np.linalg.norm(z, axis=1).mean() + 1e-30))}
        previous = labels
        # 5. sampler: uniform over clusters, `draws` per epoch (seeded as the pipeline's)
        torch.manual_seed(train_seed(seed, epoch))
        generator = torch.Generator().manual_seed(train_seed(seed, epoch))
        order = UniformClusterSampler(labels, draws, seed=train_seed(seed, epoch)).indices()
        # 6. head: fresh N(0, 0.01) (paper), warmed up on z with the body frozen, or centroids
        head = net.reset_head(clusters)
        if args.head == "centroids":  # DeepCluster-v2: prototypes = normalised centroids, cos / T
            zn = torch.nn.functional.normalize(torch.from_numpy(z), dim=1)
            centroids = torch.zeros(clusters, z.shape[1]).index_add_(0, torch.from_numpy(labels), zn)
            with torch.no_grad():
                head.weight.copy_(torch.nn.functional.normalize(centroids, dim=1)
                                  / (args.temperature * float(np.linalg.norm(z, axis=1).mean() + 1e-12)))
        elif args.head == "warmup":  # fit the fresh head on augmented training draws, body frozen
            from model.augment import random_crop

            spec = SpecAugment.from_config(train_cfg)
            opt = torch.optim.Adam(head.parameters(), lr=args.warmup_lr)
            warm = UniformClusterSampler(labels, args.warmup_steps * args.batch, seed=train_seed(seed, epoch) + 1)
            net.train()
            for rows in torch.from_numpy(warm.indices()).split(args.batch):
                x = pool_t[rows]
                if args.crop:
                    x, _ = random_crop(x, None, args.crop, generator)
                with torch.no_grad():
                    zb = net.embed(spec(x)[:, None])
                loss = nn.functional.cross_entropy(head(zb), torch.from_numpy(labels)[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
            stats["warmup_loss"] = float(loss)
        optimisers = make_optimisers(net, train_cfg)
        # 7. train: crops + SpecAugment, cross-entropy on the pseudo-labels, body and head
        labels_t = torch.from_numpy(labels)
        batches = ((pool_t[rows], torch.full((len(rows),), frames), labels_t[rows])
                   for rows in torch.from_numpy(order[: steps_per_epoch * args.batch]).split(args.batch))
        running = []

        def on_step(step: int, mean_loss: float, running=running, epoch=epoch, optimisers=optimisers) -> None:
            running.append(mean_loss)
            if args.schedule == "cosine":  # body lr over all steps of the run
                done = epoch * steps_per_epoch + step
                optimisers[0].param_groups[0]["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * done / total_steps))

        if args.schedule == "cosine":
            optimisers[0].param_groups[0]["lr"] = args.lr * 0.5 * (
                1 + math.cos(math.pi * epoch * steps_per_epoch / total_steps))
        out = train_one_epoch(net, batches, optimisers, SpecAugment.from_config(train_cfg), device,
                              train_cfg.crop_frames, generator, on_step)
        losses = np.diff(np.arange(len(running) + 1) * np.array([0.0] + running))  # per-step losses
        tail = max(1, len(losses) // 5)
        stats.update(loss=out["loss"], loss_first=float(losses[:tail].mean()), loss_last=float(losses[-tail:].mean()),
                     train_accuracy=out["accuracy"], steps=out["steps"], seconds=time.perf_counter() - started)
        result["epochs"].append(stats)
        log(f"  seed {seed} epoch {epoch}: loss {stats['loss']:.3f} (first {stats['loss_first']:.3f}, last "
            f"{stats['loss_last']:.3f}) ln k {stats['ln_k']:.3f}, head acc {stats['train_accuracy']:.2f}, NMI prev "
            f"{stats['nmi_prev'] if stats['nmi_prev'] is None else round(stats['nmi_prev'], 3)}, largest "
            f"{stats['largest_fraction']:.3f}, spread {stats['z_spread']:.3f}  [{stats['seconds']:.0f} s]")
    return result


# =============================================================================== instance methods
# DeLoRes-S, DeLoRes-M, SLICER: the pipeline's epoch (model/instance.py) on the pool held in memory.

def instance_run(args, seed: int, pool_t, tasks: dict, log) -> dict:
    import copy

    import torch

    from model.config import InstanceConfig
    from model.instance import InstanceNet, epoch_order, fit_kmix, make_optimiser, new_bank, train_instance_epoch
    from model.instance_methods import build_method

    cfg = InstanceConfig(**{"method": args.method, "batch_size": args.batch, "lr": args.lr,
                            "samples_per_epoch": int(round(args.draws * len(pool_t))),
                            **json.loads(args.instance_options)}).planned_for(args.epochs)
    eval_epochs = sorted(set(args.eval_epochs if args.eval_epochs is not None
                             else [0, args.epochs // 2, args.epochs]))
    n_mels, device = pool_t.shape[1], torch.device("cpu")
    load_clip = lambda i: pool_t[i].numpy()  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        method = build_method(cfg, n_mels)
    optimiser, bank = make_optimiser(method, cfg), new_bank(cfg, n_mels)
    kmix = fit_kmix(load_clip, len(pool_t), cfg, seed) if cfg.method == "slicer" else None
    bn_index = np.sort(np.random.default_rng([seed, 7]).choice(len(pool_t), min(args.bn_clips, len(pool_t)),
                                                                replace=False))
    result = {"seed": seed, "evals": {}, "epochs": []}

    def run_eval(label: str, encoder) -> None:
        started = time.perf_counter()
        net = InstanceNet(cfg, encoder).eval()

        def features(x):
            with torch.no_grad():
                return np.concatenate([net.represent(b[:, None]).numpy() for b in _batches(x, 128)])

        scores = evaluate(features, tasks, args.probe_epochs)
        result["evals"][f"{label}|meanmax"] = scores
        log(f"  seed {seed} eval {label}: " + ", ".join(f"{t} {scores[t]['accuracy']:.3f}" for t in tasks)
            + f"  [{time.perf_counter() - started:.0f} s]")

    initial = copy.deepcopy(method.encoder)
    run_eval("random-defaultBN", initial)  # the initial encoder, untouched batch-norm statistics
    precise = copy.deepcopy(initial)
    precise_bn(InstanceNet(cfg, precise), pool_t, bn_index, 128)
    run_eval("random-preciseBN", precise)
    for epoch in range(args.epochs):
        started = time.perf_counter()
        out = train_instance_epoch(method, optimiser, bank, load_clip, len(pool_t), cfg, seed, epoch, device, kmix)
        stats = {"epoch": epoch, "loss": out["loss"], "terms": out["terms"], "steps": out["steps"],
                 "seconds": time.perf_counter() - started, "draws": len(epoch_order(seed, epoch, len(pool_t),
                                                                                    cfg.samples_per_epoch))}
        result["epochs"].append(stats)
        log(f"  seed {seed} epoch {epoch}: loss {out['loss']:.4f} (" + ", ".join(
            f"{k} {v:.3f}" for k, v in out["terms"].items()) + f")  [{stats['seconds']:.0f} s]")
        if epoch + 1 in eval_epochs:  # batch-norm statistics as training left them (the pipeline's), and precise
            run_eval(f"{args.method}-{epoch + 1}", copy.deepcopy(method.encoder))
            recomputed = copy.deepcopy(method.encoder)
            precise_bn(InstanceNet(cfg, recomputed), pool_t, bn_index, 128)
            run_eval(f"{args.method}-{epoch + 1}-preciseBN", recomputed)
    return result


# =============================================================================== report

def print_decar_losses(args, runs) -> None:
    print("\n### Training loss per epoch vs ln k (mean over seeds)\n")
    print("| epoch | loss | first 20 % | last 20 % | ln k | head train acc | NMI prev | largest cluster |")
    print("|---|---|---|---|---|---|---|---|")
    for e in range(args.epochs):
        rows = [r["epochs"][e] for r in runs]
        nm = [x["nmi_prev"] for x in rows if x["nmi_prev"] is not None]
        print(f"| {e} | {np.mean([x['loss'] for x in rows]):.3f} | {np.mean([x['loss_first'] for x in rows]):.3f} | "
              f"{np.mean([x['loss_last'] for x in rows]):.3f} | {np.mean([x['ln_k'] for x in rows]):.3f} | "
              f"{np.mean([x['train_accuracy'] for x in rows]):.3f} | "
              f"{np.mean(nm) if nm else float('nan'):.3f} | {np.mean([x['largest_fraction'] for x in rows]):.3f} |")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.json)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from downstream.generated import GENERATED_TASKS
    from model.probe import logmel_statistics

    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    def centre(x):  # --clip-norm: remove each clip's loudness (its mean log-mel)
        return x - x.mean(axis=(1, 2), keepdims=True) if args.clip_norm else x

    pool = centre(load_pool(args.clips, args.seconds, args.cache))
    mean, std = float(pool.mean()), float(pool.std())
    pool_t = torch.from_numpy((pool - mean) / std)
    names = args.tasks or list(GENERATED_TASKS)
    tasks = {}
    for name in names:
        splits = load_task(name, args.task_scale, args.task_seconds, args.cache)
        tasks[name] = {"classes": len(GENERATED_TASKS[name].classes), "raw": splits,
                       "splits": {s: (torch.from_numpy((centre(x) - mean) / std), y) for s, (x, y) in splits.items()}}
    log(f"pool {pool.shape}, tasks " + ", ".join(f"{n} {tuple(len(t['raw'][s][1]) for s in t['raw'])}"
                                                 for n, t in tasks.items()))

    # (c) log-mel statistics
    logmel = evaluate(lambda x: np.stack([logmel_statistics(m) for m in x]), tasks, args.probe_epochs, "raw")
    log("log-mel stats: " + ", ".join(f"{t} {r['accuracy']:.3f}" for t, r in logmel.items()))

    run = decar_run if args.method == "decar" else instance_run
    runs = [run(args, seed, pool_t, tasks, log) for seed in args.seeds]

    return report(args, names, logmel, runs, time.perf_counter() - t0)


def report(args, names: list[str], logmel: dict, runs: list[dict], wall: float) -> dict:
    """Tables (pooled over the runs' seeds, with bootstrap CIs over test clips) to stdout; every number,
    per-clip correctness included, to args.json (so runs of other seeds can be merged: --merge)."""
    # ------------------------------------------------------------------ tables
    models = list(runs[0]["evals"])
    table = {}
    for name in names:
        table[name] = {"logmel-stats": bootstrap([logmel[name]["correct"]], args.resamples)}
        for m in models:
            table[name][m] = bootstrap([r["evals"][m][name]["correct"] for r in runs], args.resamples)
            for r in runs:
                table[name][f"{m}@seed{r['seed']}"] = bootstrap([r["evals"][m][name]["correct"]], args.resamples)
    print("\n### Frozen linear probe, test accuracy [95 % bootstrap CI], mean over seeds "
          f"{args.seeds} (max = global max pooling, meanmax = mean+max over time)\n")
    cols = ["logmel-stats"] + models
    print("| task | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name in names:
        print(f"| {name} | " + " | ".join("{:.3f} [{:.3f}, {:.3f}]".format(*table[name][c]) for c in cols) + " |")
    print("| mean | " + " | ".join(f"{np.mean([table[n][c][0] for n in names]):.3f}" for c in cols) + " |")
    differences = {}
    for m in models:
        ref = random_reference(m, models)
        if ref is not None:
            differences[m] = {"reference": ref, **{n: paired_difference(
                [r["evals"][m][n]["correct"] for r in runs], [r["evals"][ref][n]["correct"] for r in runs],
                args.resamples) for n in names}}
    print("\n### Trained minus its random init (same pooling, same batch-norm protocol): accuracy difference "
          "[95 % paired bootstrap CI over test clips]; ahead = tasks with a positive difference\n")
    print("| model | reference | " + " | ".join(names) + " | ahead (CI above 0) |")
    print("|---" * (len(names) + 3) + "|")
    for m, d in differences.items():
        ahead, clear = sum(d[n][0] > 0 for n in names), sum(d[n][1] > 0 for n in names)
        print(f"| {m} | {d['reference']} | " + " | ".join("{:+.3f} [{:+.3f}, {:+.3f}]".format(*d[n]) for n in names)
              + f" | {ahead} of {len(names)} ({clear}) |")
    if args.method != "decar":
        print("\n### Training loss per epoch (mean over seeds)\n")
        print("| epoch | loss |\n|---|---|")
        for e in range(args.epochs):
            print(f"| {e} | {np.mean([r['epochs'][e]['loss'] for r in runs]):.4f} |")
    else:
        print_decar_losses(args, runs)
    print(f"\nwall time {wall:.0f} s with {args.threads} threads")

    out = {"args": vars(args), "wall_seconds": wall,
           "table": {n: {m: dict(zip(("accuracy", "ci_low", "ci_high"), v)) for m, v in t.items()}
                     for n, t in table.items()},
           "vs_random": {m: {"reference": d["reference"], **{n: dict(zip(("difference", "ci_low", "ci_high"), d[n]))
                                                           for n in names}} for m, d in differences.items()},
           "logmel": {n: r["accuracy"] for n, r in logmel.items()},
           "logmel_correct": {n: np.asarray(r["correct"]).astype(int).tolist() for n, r in logmel.items()},
           "runs": [{"seed": r["seed"], "epochs": r["epochs"],
                     "evals": {m: {t: v["accuracy"] for t, v in e.items()} for m, e in r["evals"].items()},
                     "correct": {m: {t: np.asarray(v["correct"]).astype(int).tolist() for t, v in e.items()}
                                 for m, e in r["evals"].items()}}
                    for r in runs]}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"numbers written to {args.json}")
    return out


def merge(paths: list[str], json_out: str | None) -> dict:
    """One report over the seeds of several runs of the same configuration (e.g. one process per
    seed, run side by side), from their JSON files."""
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    first = loaded[0]["args"]
    for other, path in zip(loaded[1:], paths[1:]):
        differ = sorted(k for k in first if k not in ("seeds", "json", "tag", "threads", "eval_epochs")
                        and other["args"].get(k) != first[k])
        if differ:
            raise SystemExit(f"--merge: {path} was run with other settings: {differ}")
    runs = [{"seed": r["seed"], "epochs": r["epochs"],
             "evals": {m: {t: {"accuracy": float(np.mean(c)), "correct": np.asarray(c, np.float64)}
                           for t, c in e.items()} for m, e in r["correct"].items()}}
            for data in loaded for r in data["runs"]]
    common = set.intersection(*(set(r["evals"]) for r in runs))  # evaluated in every run
    for r in runs:
        r["evals"] = {m: v for m, v in r["evals"].items() if m in common}
    logmel = {n: {"accuracy": float(np.mean(c)), "correct": np.asarray(c, np.float64)}
              for n, c in loaded[0]["logmel_correct"].items()}
    args = argparse.Namespace(**{**first, "seeds": [r["seed"] for r in runs], "json": json_out})
    return report(args, list(logmel), logmel, runs, sum(d["wall_seconds"] for d in loaded))


if __name__ == "__main__":
    main()
