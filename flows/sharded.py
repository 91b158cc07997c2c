"""One way to run a sharded stage: lay out the store -> one job per shard -> skip the done ones ->
the rest as tasks of a `map-shards` subflow on the Dask runner, with progress and resubmission.

A Dask worker that dies under a task makes Dask raise KilledWorker (and the Prefect task run may
never leave RUNNING): shard tasks are idempotent, so a failed shard is simply submitted again,
up to `attempts` times.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.runners import OnDemandCluster
from storage.faults import maybe_crash
from storage.sharded import laid_out, shard_done, shard_ranges
from tasks.caching import submit_stage
from tasks.embed import embed_shard
from tasks.features import compute_feature_shard

SHARD_STAGES = {stage.name: stage for stage in (embed_shard, compute_feature_shard)}
# Stages run as one Prefect task per worker batch of shards rather than one per shard: a task run
# costs about 1 s of orchestration (README, Benchmarks), a shard of embeddings far less compute.
# Each shard still has its own completion record (the unit of resume) and its checksum checks.
BATCHED_STAGES = {embed_shard.name}


def fill_shards(stage: str, store: str | Path, key: str, rows: int, shard_size: int, create: Callable[[], None],
                job: Callable[[int, int, int], dict], cluster: OnDemandCluster, what: str,
                key_attr: str = "key") -> int:
    """Make every shard of `store` done for `key`; returns the number of shards.

    `create()` lays the store out (called unless it is laid out for `key`); `job(shard, start, stop)`
    gives a shard's parameters for the stage (its key is added here); `what` names the work in
    logs, progress and fault points."""
    ranges = shard_ranges(rows, shard_size)
    if not laid_out(store, key, key_attr):
        create()
    jobs = [{**job(s, a, b), "key": f"{key}-{s}"} for s, (a, b) in enumerate(ranges)]
    done = [shard_done(store, s, j["key"]) for s, j in enumerate(jobs)]
    get_run_logger().info("%s: %d rows in %d shards (%d already done) -> %s", what, rows, len(jobs), sum(done),
                          store)
    if not all(done):
        runner = cluster.task_runner()
        workers = dask_workers(runner.address) if stage in BATCHED_STAGES else 0
        map_shards.with_options(task_runner=runner)(stage, jobs, done, what, workers)
    return len(ranges)


def dask_workers(address: str) -> int:
    """Worker threads of the Dask scheduler at `address` (at least 1)."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        return max(1, sum(client.nthreads().values()))


def worker_batches(jobs: list[dict], done: list[bool], workers: int) -> list[list[dict]]:
    """The shards not done in `workers` contiguous batches of near-equal size (fewer if fewer shards)."""
    pending = [job for job, d in zip(jobs, done) if not d]
    n = min(workers, len(pending))
    return [pending[len(pending) * b // n:len(pending) * (b + 1) // n] for b in range(n)]


@task(name="shard-batch", cache_policy=NO_CACHE)
def shard_batch(stage: str, jobs: list[dict], key: str) -> list:
    """Shards one after another in one task run (one Dask worker): each is skipped if its record
    says it is done, else computed, checked and recorded by the stage's own function."""
    return [SHARD_STAGES[stage].fn(**job) for job in jobs]


@flow(name="map-shards", flow_run_name="{what}")
def map_shards(stage: str, jobs: list[dict], done: list[bool], what: str, workers: int = 0) -> list:
    """Runs on the Dask task runner: each worker writes only its own shards. workers > 0: one task
    per worker batch of the shards not done (a failed batch is resubmitted whole; its done shards
    are skipped), else one task per shard."""
    if workers <= 0:
        return run_sharded(SHARD_STAGES[stage], jobs, done, what)
    batches = worker_batches(jobs, done, workers)
    batch_jobs = [dict(stage=stage, jobs=batch, key=f"{batch[0]['key']}..{batch[-1]['shard']}") for batch in batches]
    results = run_sharded(shard_batch, batch_jobs, [False] * len(batch_jobs), what,
                          unit="shard batches")
    return [r for batch in results for r in batch]


def run_sharded(stage_task, jobs: list[dict], done: list[bool], what: str, attempts: int = 3,
                unit: str = "shards") -> list:
    """Run stage_task(**job) for each job (each holds its `key`); returns results in job order."""
    logger = get_run_logger()
    results: list = [None] * len(jobs)
    progress = create_progress_artifact(0.0, description=f"{what}: 0/{len(jobs)} {unit}")
    pending = {submit_stage(stage_task, done[i], **job): (i, 1) for i, job in enumerate(jobs)}
    finished = 0
    while pending:
        for future in as_completed(list(pending)):
            i, attempt = pending.pop(future)
            try:
                results[i] = future.result()
            except Exception as exc:
                if attempt >= attempts:
                    raise RuntimeError(f"{what}: shard {i} failed {attempt} times; last error: {exc!r}") from exc
                logger.warning("%s: shard %d failed (%r); resubmitting (attempt %d/%d)",
                               what, i, exc, attempt + 1, attempts)
                pending[submit_stage(stage_task, False, **jobs[i])] = (i, attempt + 1)
                break  # restart as_completed over the new set of futures
            finished += 1
            maybe_crash(f"shard:{what}")
            update_progress_artifact(progress, 100.0 * finished / len(jobs),
                                     description=f"{what}: {finished}/{len(jobs)} {unit}")
    return results
