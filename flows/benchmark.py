"""Flow benchmark-downstream: a checkpoint's downstream scores beside random init and log-mel statistics.

Per task: recipe -> manifest -> cache-features (subflow) -> frozen clip embeddings of each model
(sharded on Dask, cached per checkpoint content and feature store) -> per mode one cached
evaluation stage (linear probe, or fine-tuning of encoder + linear layer).

Results (one row per task, mode and model):
    <results_dir>/<name>/<task>-<mode>.parquet   each evaluation stage's rows (+ .done.json record)
    <results_dir>/<name>.parquet                 all rows of this call (returned)
where results_dir defaults to <run_dir>/benchmarks for a checkpoint inside a pretrain-decar run,
else <data_dir>/benchmarks, and name is the checkpoint's epoch folder (epoch-NNN) in a run, else
the first 12 hex digits of its sha256. Frozen embeddings live in
<data_dir>/embeddings/<model>-<key>/embeddings.zarr, shared by every run of the same checkpoint.
"""
from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

from prefect import flow, get_run_logger

from downstream import RECIPES
from flows.artifacts import publish_benchmark, slug
from flows.features import cache_features
from flows.runners import OnDemandCluster
from flows.sharded import fill_shards
from storage.checkpoint import load_checkpoint
from storage.embeddings import create_embeddings
from storage.features import FeatureReader
from storage.layout import RunLayout
from storage.manifest import ok_rows, read_manifest
from storage.records import file_sha256, is_complete, read_record, stable_key
from tasks.caching import run_stage
from tasks.embed import MODELS, NETWORKS, embed_shard, finish_embeddings, network_config, representation_dim
from tasks.probe import SPLITS, evaluate_task, prepare_task, write_scores

MODES = ("frozen", "finetune")
KEY_VERSION = 1
SHARD_SIZE = 256  # clips per embedding shard (one Dask task each)


# ---------------------------------------------------------------- parameters

def resolve_checkpoint(spec: str) -> Path:
    """A checkpoint.pt path, `<run_dir>:latest` (the highest finished epoch) or `<run_dir>:<epoch>`."""
    base, sep, which = str(spec).rpartition(":")
    if sep and base and (which == "latest" or which.isdigit()):
        run = RunLayout(base)
        if not run.root.is_dir():
            raise FileNotFoundError(f"checkpoint {spec!r}: run folder {base} does not exist")
        finished = [e for e in run.epochs() if read_record(run.checkpoint(e)) and run.checkpoint(e).is_file()]
        if which == "latest":
            if not finished:
                raise FileNotFoundError(f"checkpoint {spec!r}: {base} has no finished epoch "
                                        "(no epoch-NNN/checkpoint.pt with a completion record)")
            return run.checkpoint(finished[-1])
        if int(which) not in finished:
            raise FileNotFoundError(f"checkpoint {spec!r}: epoch {int(which)} of {base} has no finished "
                                    f"checkpoint; finished epochs: {finished or 'none'}")
        return run.checkpoint(int(which))
    path = Path(spec)
    if path.is_dir() and RunLayout(path).config.exists():
        return resolve_checkpoint(f"{spec}:latest")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {spec!r} not found: give a checkpoint.pt file, "
                                "<run_dir>:latest or <run_dir>:<epoch>")
    return path


def run_of(checkpoint: Path) -> tuple[Path | None, str | None]:
    """(run folder, epoch folder name) when the checkpoint sits in a pretrain-decar run."""
    folder = checkpoint.resolve().parent
    if (re.fullmatch(r"epoch-\d{3}", folder.name) or folder.name == "init") and (folder.parent / "run.json").exists():
        return checkpoint.parent.parent, folder.name
    return None, None


def known_tasks() -> str:
    return ", ".join([*RECIPES, "folder:<path>", "csv:<path>"])


def validate(checkpoint: str, tasks: list[str], modes: list[str], epochs: int, batch_size: int, lr: float,
             sources: dict | None) -> Path:
    """Fail before any work, naming the parameter; returns the checkpoint's path."""
    if not tasks:
        raise ValueError(f"tasks: give at least one task; known tasks: {known_tasks()}")
    for name in tasks:
        kind, _, where = name.partition(":")
        if kind in ("folder", "csv") and where:
            if not Path(where).expanduser().exists():
                raise FileNotFoundError(f"tasks: {name!r}: {where} does not exist")
        elif name not in RECIPES:
            raise ValueError(f"tasks: unknown task {name!r}; known tasks: {known_tasks()}")
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty list of {MODES}, got {modes!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1 or not lr > 0:
        raise ValueError(f"batch_size must be >= 1 and lr > 0, got batch_size={batch_size}, lr={lr}")
    stray = sorted(set(sources or {}) - set(tasks))
    if stray:
        raise ValueError(f"sources: {stray} are not among tasks {tasks}")
    return resolve_checkpoint(checkpoint)


# ---------------------------------------------------------------- stages

POOLINGS = {"encoder": "represent", "meanmax": "meanmax"}  # benchmark pooling -> embed_shard's output


def embedding_keys(sha256: str, payload: dict, feature_key: str, seed: int, pooling: str = "encoder") -> dict[str, str]:
    """Each model's embedding identity: what it is computed from, never paths or run names."""
    pooled = () if pooling == "encoder" else (pooling,)  # the default keeps the keys it always had
    return {"decar": stable_key(KEY_VERSION, "decar", sha256, feature_key, *pooled),
            "random-init": stable_key(KEY_VERSION, "random-init", network_config(payload), payload["norm"], seed,
                                      feature_key, *pooled),
            "random-init-bn": stable_key(KEY_VERSION, "random-init-bn", network_config(payload), payload["norm"],
                                         seed, feature_key, *pooled),
            "logmel-stats": stable_key(KEY_VERSION, "logmel-stats", feature_key)}


def ensure_embeddings(paths: dict[str, Path], keys: dict[str, str], features: str, checkpoint: str, sha256: str,
                      represent_dim: int, seed: int, batch_size: int, device: str,
                      cluster: OnDemandCluster, pooling: str = "encoder") -> None:
    """Extract whatever frozen embeddings are missing (one sharded stage per model), then record them."""
    reader = FeatureReader(features)
    dims = {"logmel-stats": 2 * reader.logmel.shape[1]}
    for model, path in paths.items():
        shards = len(range(0, len(reader), SHARD_SIZE))
        if not is_complete(path, keys[model]):
            dim = dims.get(model) or represent_dim * (2 if pooling == "meanmax" else 1)
            shards = fill_shards(
                embed_shard.name, path, keys[model], len(reader), SHARD_SIZE,
                create=lambda p=path, d=dim, k=keys[model]: create_embeddings(p, len(reader), d, SHARD_SIZE, k),
                job=lambda s, a, b, p=path, m=model: dict(
                    embeddings=str(p), features=features, model=m, output=POOLINGS[pooling], checkpoint=checkpoint,
                    checkpoint_sha256=sha256, seed=seed, shard=s, start=a, stop=b, batch_size=batch_size,
                    device=device),
                cluster=cluster, what=f"benchmark embeddings ({model})")
        run_stage(finish_embeddings, keys[model], embeddings=str(path), shards=shards)


def label_key(manifest: str) -> str:
    """Identity of the task's labels and splits (the feature key only covers clips and files)."""
    return stable_key(sorted((r["clip_id"], str(r["label"]), r["split"]) for r in ok_rows(read_manifest(manifest))))


def file_label(task_name: str, manifest: str) -> str:
    """The task's name in file names; folder: / csv: tasks use their recipe name (holds a path hash)."""
    return Path(manifest).stem.removeprefix("task-") if ":" in task_name else slug(task_name)


def check_splits(name: str, manifest: str) -> None:
    present = {r["split"] for r in ok_rows(read_manifest(manifest))}
    missing = [s for s in SPLITS if s not in present]
    if missing:
        raise ValueError(f"tasks: task {name!r} ({manifest}) has no usable clips in split(s) {missing}; "
                         "model selection needs train and valid, the report needs test")


# ---------------------------------------------------------------- the flow

@flow(name="benchmark-downstream")
def benchmark_downstream(checkpoint: str, tasks: list[str], modes: list[str] = ["frozen"], data_dir: str = "data",
                         epochs: int = 50, seed: int = 0, batch_size: int = 64, lr: float = 1e-3,
                         device: str = "auto", dask_address: str | None = None, n_workers: int | None = None,
                         sources: dict[str, str] | None = None, results_dir: str | None = None,
                         pooling: str = "encoder") -> str:
    """Evaluate a checkpoint on downstream tasks beside random init and log-mel statistics
    (DECAR's protocol, METHODS.md); returns the results Parquet.

    An unchanged checkpoint with the same tasks and config is a cache hit.

    Args:
        checkpoint: a checkpoint.pt, `<run_dir>:latest` or `<run_dir>:<epoch>`.
        tasks: recipe names (the paper's tasks), generated tasks, folder:<path> or csv:<path>.
        modes: "frozen" (linear probe on frozen embeddings) and/or "finetune" (encoder + linear layer).
        data_dir: where task data, features and frozen embeddings are cached.
        epochs: training epochs of the probe / fine-tuning (the best on validation is reported).
        seed: seeds the probes and the random-init baseline network.
        batch_size: clips per step (and per extraction batch).
        lr: Adam learning rate of the probe / fine-tuning.
        device: "auto", "cpu", "cuda" or "cuda:N" for extraction and fine-tuning.
        dask_address: an existing Dask scheduler; default: a local cluster.
        n_workers: worker processes of the local Dask cluster.
        sources: per task, a local folder or base URL for its data (recipe source override).
        results_dir: where score Parquets go (default: <run>/benchmarks, or <data_dir>/benchmarks).
        pooling: the frozen representation: "encoder" (the network's own: DECAR's global max over the
            last map, as the paper; the instance methods' max + mean over time) or "meanmax" (the last map
            averaged over frequency, then mean and max over time concatenated: 2 x the dimensions).
    """
    logger = get_run_logger()
    path = validate(checkpoint, tasks, modes, epochs, batch_size, lr, sources)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    sha256 = file_sha256(path)
    payload = load_checkpoint(path)
    run_dir, epoch_tag = run_of(path)
    name = epoch_tag or sha256[:12]
    out_dir = Path(results_dir or (run_dir / "benchmarks" if run_dir else Path(data_dir) / "benchmarks"))
    config = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    logger.info("benchmark-downstream: %s (sha256 %s) on %s, modes %s", path, sha256[:12], tasks, modes)
    rows: list[dict] = []
    with ExitStack() as stack:
        cluster = OnDemandCluster(dask_address, n_workers, stack)  # started only if something is extracted
        for task_name in dict.fromkeys(tasks):
            manifest = prepare_task(task_name, data_dir, (sources or {}).get(task_name))
            check_splits(task_name, manifest)
            features = cache_features(manifest, data_dir, dask_address=dask_address, n_workers=n_workers)
            feature_key = FeatureReader(features).attrs["feature_key"]
            keys = embedding_keys(sha256, payload, feature_key, seed, pooling)
            paths = {m: Path(data_dir) / "embeddings" / f"{m}-{keys[m]}" / "embeddings.zarr" for m in MODELS}
            for mode in dict.fromkeys(modes):
                identity = keys if mode == "frozen" else {m: keys[m] for m in NETWORKS}
                key = stable_key(KEY_VERSION, mode, sha256, feature_key, identity, label_key(manifest), config, seed)
                output = out_dir / name / f"{file_label(task_name, manifest)}-{mode}.parquet"
                if mode == "frozen" and not is_complete(output, key):
                    ensure_embeddings(paths, keys, features, str(path), sha256,
                                      representation_dim(payload), seed, batch_size, device, cluster, pooling)
                scores = run_stage(evaluate_task, key, task=task_name, mode=mode, manifest=manifest,
                                   features=features, embeddings={m: str(p) for m, p in paths.items()},
                                   checkpoint=str(path), checkpoint_sha256=sha256, config=config, seed=seed,
                                   output=str(output), device=device)
                # model "decar" is the checkpoint's network; `method` says which method trained it
                rows += [{**row, "method": payload.get("method", "decar")} for row in scores]
    results = out_dir / f"{name}.parquet"
    write_scores(results, rows)
    title = f"{run_dir.name}-{name}" if run_dir else name  # artifact keys are global: name the run too
    publish_benchmark(rows, title, {t: paper_scores_of(t) for t in tasks}, results, MODELS,
                      plots_dir=(run_dir or out_dir) / "plots")
    logger.info("benchmark-downstream: %d score rows -> %s", len(rows), results)
    return str(results)


def paper_scores_of(task_name: str) -> dict | None:
    recipe = RECIPES.get(task_name)
    return recipe.paper_scores if recipe else None
