"""Issue 11 pieces without a Dask cluster: ClipLoader's in-RAM copy, worker batches of extraction shards."""
from __future__ import annotations

import pickle

import numpy as np

from flows.sharded import worker_batches
from storage.features import ClipLoader, create_store, finalize_store, write_shard


def small_store(path) -> str:
    rng = np.random.default_rng(0)
    create_store(path, [f"c{i}" for i in range(10)], 8, 20, 4, {})
    for s, a in enumerate(range(0, 10, 4)):
        n = min(4, 10 - a)
        lengths = rng.integers(5, 21, n)
        status = np.zeros(n, np.int8)
        status[0] = 1 if s == 1 else 0  # one failed clip: not usable
        write_shard(path, s, a, rng.normal(size=(n, 8, 20)), lengths, status, "k")
    finalize_store(path, mean=0.5, std=2.0)
    return str(path)


def test_preloaded_clips_equal_zarr_reads(tmp_path, monkeypatch):
    store = small_store(tmp_path / "s.zarr")
    from_zarr, in_ram = ClipLoader(store, preload=False), ClipLoader(store, preload=True)
    assert not from_zarr.in_memory and in_ram.in_memory and len(in_ram) == len(from_zarr) == 9
    for i in range(len(in_ram)):
        np.testing.assert_array_equal(in_ram(i), from_zarr(i))
        assert in_ram(i).dtype == np.float32
    copy = pickle.loads(pickle.dumps(in_ram))  # a DataLoader worker loads its own copy
    assert copy._memory is None and copy.in_memory
    np.testing.assert_array_equal(copy(3), from_zarr(3))
    monkeypatch.setenv("DECAR_PRELOAD_BYTES", "100")  # automatic: only below the budget
    auto = ClipLoader(store)
    assert [auto(i).shape for i in range(9)] and not auto.in_memory
    monkeypatch.setenv("DECAR_PRELOAD_BYTES", "1e6")  # and once an eighth of the clips were read
    auto = ClipLoader(store)
    np.testing.assert_array_equal(auto(0), from_zarr(0))
    assert not auto.in_memory
    np.testing.assert_array_equal(auto(5), from_zarr(5))
    assert auto.in_memory


def test_worker_batches_cover_the_pending_shards_once():
    jobs = [{"shard": s, "key": f"k-{s}"} for s in range(9)]
    done = [s in (0, 4) for s in range(9)]
    batches = worker_batches(jobs, done, 2)
    assert [[j["shard"] for j in b] for b in batches] == [[1, 2, 3], [5, 6, 7, 8]]
    assert len(worker_batches(jobs, done, 16)) == 7  # never an empty batch
    assert worker_batches(jobs, [True] * 9, 2) == []
