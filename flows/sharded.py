"""Map a stage over shards on the flow's task runner, with progress and resubmission.

A Dask worker that dies under a task makes Dask raise KilledWorker (and the
Prefect task run may never leave RUNNING): shard tasks are idempotent, so a
failed shard is simply submitted again, up to `attempts` times.
"""
from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from storage.faults import maybe_crash
from tasks.caching import submit_stage


def run_sharded(stage_task, jobs: list[dict], done: list[bool], what: str, attempts: int = 3) -> list:
    """Run stage_task(**job) for each job (each holds its `key`); returns results in job order."""
    logger = get_run_logger()
    results: list = [None] * len(jobs)
    progress = create_progress_artifact(0.0, description=f"{what}: 0/{len(jobs)} shards")
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
                                     description=f"{what}: {finished}/{len(jobs)} shards")
    return results
