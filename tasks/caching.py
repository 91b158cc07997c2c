"""Prefect caching on top of the project's own completion records.

A stage task takes a `key` parameter (built from content hashes and config,
never from run ids) and Prefect caches its (small, JSON) result under that key,
so a rerun shows the stage as Cached in the UI. Prefect's cache is only trusted
while the stage's completion record on disk agrees: if the output was deleted
or is stale, `run_stage` refreshes the cache and the stage recomputes.
"""
from __future__ import annotations

from typing import Any

from prefect import Task, task

from storage.records import is_complete


def _key_from_parameters(context, parameters: dict) -> str:
    return f"{context.task.name}-{parameters['key']}"


def stage(output: str | None = None, **task_options):
    """Decorator for a cached, resumable stage task (its function takes `key`).

    `output` names the parameter holding the path the stage completes (its record is checked
    before Prefect's cache is trusted), so call sites pass the path once."""
    options = dict(cache_key_fn=_key_from_parameters, persist_result=True, result_serializer="json")
    options.update(task_options)

    def decorate(fn) -> Task:
        stage_task = task(**options)(fn)
        stage_task.output_parameter = output
        return stage_task

    return decorate


def run_stage(stage_task: Task, key: str, /, **parameters: Any) -> Any:
    """Call a stage in this process; Prefect's cache is used only if its output is complete for `key`."""
    output = parameters[stage_task.output_parameter]
    return stage_task.with_options(refresh_cache=not is_complete(output, key))(key=key, **parameters)


def submit_stage(stage_task: Task, done: bool, /, key: str, **parameters: Any):
    """Submit a stage to the flow's task runner (e.g. Dask); `done` says whether its output on
    disk is complete for `key` (else Prefect's cache is refreshed). Returns a future."""
    return stage_task.with_options(refresh_cache=not done).submit(key=key, **parameters)
