"""benchmark-downstream: real flows on the test API server, real Dask, a checkpoint from a short pre-training."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from downstream import GENERATED_RECIPES
from downstream.generated import GENERATED_TASKS, generated_task_folder, write_generated_task
from flows import benchmark_downstream, cache_features, pretrain_decar
from flows.benchmark import resolve_checkpoint
from storage.layout import RunLayout
from storage.records import file_sha256
from tests.helpers import task_states, tone_manifest

COLUMNS = {"task", "mode", "model", "accuracy", "macro_f1", "valid_accuracy", "best_epoch", "checkpoint",
           "checkpoint_sha256", "n_train", "n_valid", "n_test", "classes", "seconds"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dask_address) -> str:
    data = tmp_path_factory.mktemp("pretrain")
    store = cache_features(str(tone_manifest(data, n=16, seconds=1.0)), data_dir=str(data), dask_address=dask_address)
    return pretrain_decar(store, "bench", runs_dir=str(data / "runs"), epochs=1, clusters=4, batch_size=8,
                          width_mult=0.25, allow_degenerate=True, dask_address=dask_address)


def test_three_models_both_modes_then_a_cached_rerun(run_dir, tmp_path, dask_address):
    folder = write_generated_task("synth-instrument", tmp_path / "families", scale=0.2)  # 5 classes, 30/10/25 clips
    checkpoint = RunLayout(run_dir).checkpoint(0)
    args = dict(tasks=[f"folder:{folder}"], modes=["frozen", "finetune"], data_dir=str(tmp_path / "data"),
                epochs=1, batch_size=8, dask_address=dask_address)
    results = benchmark_downstream(str(checkpoint), **args)

    assert results == str(Path(run_dir) / "benchmarks" / "epoch-000.parquet")
    rows = pq.read_table(results).to_pylist()
    assert COLUMNS <= set(rows[0])
    assert sorted((r["mode"], r["model"]) for r in rows) == [
        ("finetune", "decar"), ("finetune", "random-init"),
        ("frozen", "decar"), ("frozen", "logmel-stats"), ("frozen", "random-init"), ("frozen", "random-init-bn")]
    for r in rows:
        assert (r["n_train"], r["n_valid"], r["n_test"], r["classes"]) == (30, 10, 25, 5)
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and r["best_epoch"] == 1
        assert r["checkpoint_sha256"] == file_sha256(checkpoint) and r["task"] == f"folder:{folder}"

    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "embeddings").rglob("*.json")}
    written.update({p: p.stat().st_mtime_ns for p in (Path(run_dir) / "benchmarks").rglob("*.json")})
    assert len(written) > 6
    state = benchmark_downstream(f"{run_dir}:latest", return_state=True, **args)  # same checkpoint, by run
    assert state.result() == results
    states = task_states(state.state_details.flow_run_id)
    assert states.pop("evaluate-task") == ["Cached", "Cached"]
    assert states.pop("prepare-task") == ["Completed"]  # re-lists the folder; the manifest content is unchanged
    assert states.pop("cache-features") == ["Completed"]  # the subflow itself, its one stage cached:
    assert states == {"finalize-features": ["Cached"]}  # no embedding shard, probe or fine-tune ran
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert pq.read_table(results).to_pylist() == rows


def test_checkpoint_specs_resolve(run_dir):
    run = RunLayout(run_dir)
    assert resolve_checkpoint(f"{run_dir}:latest") == run.checkpoint(0)
    assert resolve_checkpoint(f"{run_dir}:0") == run.checkpoint(0)
    assert resolve_checkpoint(run_dir) == run.checkpoint(0)
    with pytest.raises(FileNotFoundError, match="epoch 7 .* finished epochs: \\[0\\]"):
        resolve_checkpoint(f"{run_dir}:7")


def test_mean_max_pooling_is_its_own_representation(run_dir, tmp_path, dask_address):
    """pooling="meanmax": every network model's embeddings are [mean, max] over time (2 x dims), cached
    apart from the default's, and scored beside the same baselines."""
    import numpy as np

    from storage.embeddings import read_embeddings

    folder = write_generated_task("synth-instrument", tmp_path / "families", scale=0.2)
    results = benchmark_downstream(str(RunLayout(run_dir).checkpoint(0)), tasks=[f"folder:{folder}"],
                                   data_dir=str(tmp_path / "data"), epochs=1, batch_size=8, dask_address=dask_address,
                                   results_dir=str(tmp_path / "meanmax"), pooling="meanmax")
    rows = pq.read_table(results).to_pylist()
    assert sorted(r["model"] for r in rows) == ["decar", "logmel-stats", "random-init", "random-init-bn"]
    stores = {p.parent.name.split("-")[0]: p for p in (tmp_path / "data" / "embeddings").glob("*/embeddings.zarr")}
    values = read_embeddings(str(stores["decar"]))
    assert values.shape[1] == 2 * 320  # B0 x0.25: 320 channels, their mean then their max over time
    assert np.all(values[:, :320] <= values[:, 320:] + 1e-5) and np.any(values[:, :320] < values[:, 320:])


@pytest.mark.parametrize("bad, message", [
    (dict(tasks=["no-such-task"]), "tasks: unknown task 'no-such-task'; known tasks: .*synth-speaker"),
    (dict(modes=["linear"]), "modes must be"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(checkpoint="nowhere/checkpoint.pt"), "checkpoint 'nowhere/checkpoint.pt' not found"),
])
def test_parameters_are_checked_before_any_work(run_dir, tmp_path, bad, message):
    args = {**dict(checkpoint=f"{run_dir}:latest", tasks=["synth-keyword"], data_dir=str(tmp_path)), **bad}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        benchmark_downstream(**args)
    assert not (tmp_path / "generated-tasks").exists()


def test_generated_tasks_are_written_once_and_deterministic(tmp_path):
    folder = generated_task_folder("synth-scene", tmp_path, scale=0.03)
    classes = GENERATED_TASKS["synth-scene"].classes
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.wav")) == sorted(
        f"{split}/{c}/000.wav" for split in ("train", "valid", "test") for c in classes)
    first = (folder / "test" / classes[0] / "000.wav").stat().st_mtime_ns
    assert generated_task_folder("synth-scene", tmp_path, scale=0.03) == folder
    assert (folder / "test" / classes[0] / "000.wav").stat().st_mtime_ns == first  # not rewritten
    again = write_generated_task("synth-scene", tmp_path / "again", scale=0.03)
    assert (again / "valid" / classes[1] / "000.wav").read_bytes() == (
        folder / "valid" / classes[1] / "000.wav").read_bytes()


def test_generated_recipe_prepares_its_splits(tmp_path):
    manifest = GENERATED_RECIPES["synth-keyword"].prepare(tmp_path)  # written under tmp_path/generated-tasks
    rows = pq.read_table(manifest).to_pylist()
    counts = GENERATED_TASKS["synth-keyword"].counts()
    assert {s: sum(r["split"] == s for r in rows) for s in counts} == counts
    assert counts["test"] >= 100 and all(r["status"] == "ok" for r in rows)
    assert (tmp_path / "generated-tasks" / "synth-keyword").is_dir()
