"""The generated sound world: deterministic, held-out sources disjoint from pre-training, counts, valid audio."""
import numpy as np
import soundfile as sf

from downstream import synth
from downstream.generated import GENERATED_TASKS, SPLITS, task_arrays, write_generated_task

SCALE = 0.1  # 1-3 clips per class and split: keeps the file fast


def test_pretraining_clips_are_deterministic_valid_and_use_pretraining_sources_only():
    seen = set()
    for i in range(12):
        x, sources = synth.pretraining_clip_sources(np.random.default_rng([3, i]), 1.0)
        again = synth.pretraining_clip(np.random.default_rng([3, i]), 1.0)
        assert np.array_equal(x, again)
        assert x.dtype == np.float32 and x.shape == (16000,)
        assert np.isfinite(x).all() and np.abs(x).max() <= 1.0 and np.abs(x).max() > 0
        assert all(0 <= sid < synth.PRETRAIN_SOURCES[kind] < synth.HELD_OUT for kind, sid in sources)
        seen |= {kind for kind, _ in sources}
    assert {"speaker", "instrument", "scene"} <= seen


def test_generated_tasks_are_deterministic_with_counts_and_held_out_sources():
    for name, task in GENERATED_TASKS.items():
        assert task.per_class["test"] * len(task.classes) >= 100  # full scale: >= 100 test clips
        first = task_arrays(name, scale=SCALE, seconds=1.0, with_sources=True)
        second = task_arrays(name, scale=SCALE, seconds=1.0)
        counts = task.counts(SCALE)
        for split in SPLITS:
            audio, labels, sources = first[split]
            assert np.array_equal(audio, second[split][0]) and np.array_equal(labels, second[split][1])
            assert audio.shape == (counts[split], 16000) and audio.dtype == np.float32
            assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
            assert set(np.unique(labels)) == set(range(len(task.classes)))
            assert sources and all(sid >= synth.HELD_OUT for _, sid in sources)


def test_instances_differ_between_splits_where_the_task_says_so():
    for name in ("synth-keyword", "synth-instrument", "synth-scene"):
        arrays = task_arrays(name, scale=0.2, seconds=0.5, with_sources=True)
        kind = {"synth-keyword": "speaker", "synth-instrument": "instrument", "synth-scene": "scene"}[name]
        ids = {s: {sid for k, sid in arrays[s][2] if k == kind} for s in SPLITS}
        assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["valid"]), name


def test_write_generated_task_layout(tmp_path):
    folder = write_generated_task("synth-speaker", tmp_path / "spk", scale=SCALE, seconds=0.5)
    task = GENERATED_TASKS["synth-speaker"]
    for split, count in task.counts(SCALE).items():
        files = sorted((folder / split).glob("*/*.wav"))
        assert len(files) == count
        assert {f.parent.name for f in files} == set(task.classes)
    audio, sr = sf.read(files[0])
    assert sr == 16000 and len(audio) == 8000
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folder is gone
