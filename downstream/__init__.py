"""Downstream task recipes: data source, labels and splits for each task (DECAR Table 1's, and
tasks generated from the synthetic sound world for tests, the demo and the science benchmark).

`get_recipe(name).prepare(data_dir, source_override=None)` downloads and
extracts what it needs (resumably) and writes the task's clip manifest to
DataLayout(data_dir).manifest(f"task-{name}"), one row per clip with `label`
and `split` (train | valid | test). No Prefect here: the benchmark flow wraps it.
"""
from __future__ import annotations

from downstream.base import Entry, Recipe, RemoteFile, Source, assign_splits
from downstream.birds import BIRD_SONG
from downstream.emotion import IEMOCAP
from downstream.generated import GENERATED_TASKS, generated_task_folder
from downstream.generic import collect_folder, generic_recipe
from downstream.instruments import NSYNTH
from downstream.language import VOXFORGE
from downstream.scenes import TUT_URBAN
from downstream.speakers import LIBRISPEECH, VOXCELEB
from downstream.speech_commands import V1 as SPEECH_COMMANDS_V1
from downstream.speech_commands import V2 as SPEECH_COMMANDS_V2


def _generated_recipe(name: str) -> Recipe:
    """A task generated from the synthetic sound world (downstream/generated.py): no download."""
    task = GENERATED_TASKS[name]
    return Recipe(name=name, description=task.description, classes=task.classes,
                  source=Source(instructions="generated on first use under <data_dir>/generated-tasks/"),
                  collect=collect_folder, split_rule="generated train/valid/test folders (sources held out)",
                  generate=lambda data_dir: generated_task_folder(name, data_dir))


PAPER_RECIPES: dict[str, Recipe] = {r.name: r for r in (
    LIBRISPEECH, VOXCELEB, SPEECH_COMMANDS_V1, SPEECH_COMMANDS_V2, TUT_URBAN, IEMOCAP, BIRD_SONG, VOXFORGE, NSYNTH)}
GENERATED_RECIPES: dict[str, Recipe] = {name: _generated_recipe(name) for name in GENERATED_TASKS}
RECIPES: dict[str, Recipe] = {**PAPER_RECIPES, **GENERATED_RECIPES}

__all__ = ["RECIPES", "Entry", "Recipe", "RemoteFile", "Source", "assign_splits", "get_recipe"]


def get_recipe(name: str) -> Recipe:
    """A paper task by name, or `folder:<path>` / `csv:<path>` for your own data."""
    for kind in ("folder", "csv"):
        if name.startswith(f"{kind}:"):
            path = name[len(kind) + 1:]
            if not path:
                raise ValueError(f"{name!r}: give a path after '{kind}:'")
            return generic_recipe(kind, path)
    if name not in RECIPES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(RECIPES)}, "
                         "or folder:<path> / csv:<path> for your own data")
    return RECIPES[name]
