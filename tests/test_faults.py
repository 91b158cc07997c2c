"""Fault injection on real runs: kill -9 at every stage, a dead Dask worker, no API, damaged
files, a full disk, bad parameters. Nothing finished is lost or redone, nothing half-written is
trusted, and a resumed run ends with the outputs of an uninterrupted one (same seed, CPU).

Kills use storage/faults.py: DECAR_FAULT=<glob of a point> makes the process SIGKILL itself
there (the points are listed in that module). The matrix these tests measure is in
README.md ("Faults").
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from flows.features import cache_features
from flows.pretrain import pretrain_decar
from storage.checkpoint import CorruptCheckpoint
from storage.records import file_sha256, read_record
from storage.sharded import CorruptShard
from tests.helpers import tone_manifest

ROOT = Path(__file__).resolve().parent.parent
SHARD = 8  # clips per embedding shard in these tests (3 shards of 24 clips)
TINY = dict(epochs=2, clusters=4, width_mult=0.25, batch_size=8, samples_per_epoch=16, seed=0, device="cpu",
            embed_shard_size=SHARD, allow_degenerate=True)

RUNNER = """
import json, sys
kind, params = sys.argv[1], json.loads(sys.argv[2])
if kind == "pretrain":
    from flows.pretrain import pretrain_decar as flow
elif kind == "features":
    from flows.features import cache_features as flow
else:
    from flows.download import download_audioset as flow
print("RESULT", flow(**params))
"""


def run_child(kind: str, params: dict, env: dict, fault: str | None = None, skip: int = 0,
              timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": str(ROOT)}
    env.pop("DECAR_FAULT", None)
    if fault:
        env.update(DECAR_FAULT=fault, DECAR_FAULT_SKIP=str(skip))
    return subprocess.run([sys.executable, "-c", RUNNER, kind, json.dumps(params)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)


def records(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.done.json")}


def assert_nothing_half_written_is_complete(root: Path) -> None:
    """Every completion record's output exists and is whole; checkpoints match their sha256."""
    for record_file in root.rglob("*.done.json"):
        output = record_file.with_name(record_file.name[: -len(".done.json")])
        record = json.loads(record_file.read_text())
        if output.parent.name == "shards":
            continue  # shard markers: their files are checked by storage.sharded
        assert output.exists(), f"{record_file} claims a missing output"
        if "sha256" in record:
            assert file_sha256(output) == record["sha256"], output


def wait_dask_idle(address: str, timeout: float = 60) -> None:
    """Tasks of a killed flow may still run on the workers: let them finish before the rerun."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        deadline = time.monotonic() + timeout
        while any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.2)


def assert_same_run(run: Path, reference: Path, epochs: int) -> None:
    for epoch in range(epochs):
        a = pq.read_table(run / f"epoch-{epoch:03d}" / "labels.parquet")
        b = pq.read_table(reference / f"epoch-{epoch:03d}" / "labels.parquet")
        assert a.equals(b), f"epoch {epoch}: labels differ from the uninterrupted run"
        ca = torch.load(run / f"epoch-{epoch:03d}" / "checkpoint.pt", weights_only=True)
        cb = torch.load(reference / f"epoch-{epoch:03d}" / "checkpoint.pt", weights_only=True)
        for part in ("encoder", "projection", "head"):
            assert ca[part].keys() == cb[part].keys()
            for name in ca[part]:
                assert torch.equal(ca[part][name], cb[part][name]), f"epoch {epoch}: {part}.{name} differs"


@pytest.fixture(scope="module")
def store(tmp_path_factory, dask_address) -> str:
    data = tmp_path_factory.mktemp("fault-data")
    manifest = tone_manifest(data, n=24, seconds=0.5)
    return cache_features(str(manifest), data_dir=str(data), shard_size=SHARD, dask_address=dask_address)


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory, dask_address) -> Path:
    """The uninterrupted run, in a child process like the faulty one (same thread settings)."""
    runs = tmp_path_factory.mktemp("fault-reference")
    env = {**os.environ}
    done = run_child("pretrain", dict(features=store, run_name="reference", runs_dir=str(runs),
                                      dask_address=dask_address, **TINY), env)
    assert done.returncode == 0, done.stderr[-3000:]
    return runs / "reference"


# ------------------------------------------------------------------ kill -9 at every stage

# (point, what is in flight) in the order a run meets them; each run is killed at one point
# and the next run resumes it, until a run without a fault finishes.
PRETRAIN_FAULTS = [
    ("rename:*/init/checkpoint.pt", "initial checkpoint written, not renamed"),
    ("shard:embeddings", "embedding extraction: one shard of three finished"),
    ("cluster", "clustering: k-means done, labels not written"),
    ("rename:*/epoch-000/labels.parquet", "label writing: parquet written, not renamed"),
    ("record:*/epoch-000/labels.parquet", "label writing: labels in place, no completion record"),
    ("rename:*/epoch-000/clustering.json", "compare: NMI summary written, not renamed"),
    ("train-step", "training: after the first SGD step"),
    ("rename:*/epoch-000/checkpoint.pt", "checkpoint writing: bytes written, not renamed"),
    ("record:*/epoch-000/checkpoint.pt", "checkpoint writing: checkpoint in place, no record"),
    ("record:*/epoch-001/checkpoint.pt", "epoch 1 checkpoint in place, no record"),
]


@pytest.mark.timeout(600)
def test_kill_at_every_pretrain_stage_then_resume(store, reference, tmp_path, dask_address):
    runs = tmp_path / "runs"
    run = runs / "faulty"
    params = dict(features=store, run_name="faulty", runs_dir=str(runs), dask_address=dask_address, **TINY)
    env = {**os.environ}
    for point, what in PRETRAIN_FAULTS:
        before = records(runs) if runs.exists() else {}
        killed = run_child("pretrain", params, env, fault=point)
        assert killed.returncode == -signal.SIGKILL, f"{point} ({what}) not reached:\n{killed.stderr[-3000:]}"
        wait_dask_idle(dask_address)
        after = records(runs)
        unchanged = {p: t for p, t in before.items() if after.get(p) != t}
        assert not unchanged, f"after the kill at {point}: finished work was redone: {sorted(unchanged)}"
        assert_nothing_half_written_is_complete(runs)
        if point == "shard:embeddings":
            shards = list((run / "epoch-000" / "embeddings.zarr" / "shards").glob("*.done.json"))
            # Dask workers may finish the other shards while the flow process dies; at least the
            # one it saw finish is kept (and, like every record, not redone: checked above)
            assert len(shards) >= 1, "the run should be killed after a shard finished"
            assert not (run / "epoch-000" / "embeddings.zarr.done.json").exists()
        if point.startswith("rename:"):
            target = point.split("*/", 1)[1]
            assert not (run / target).exists() and list((run / target).parent.glob(f".{Path(target).name}.tmp-*"))
        if point.startswith("record:"):
            target = point.split("*/", 1)[1]
            assert (run / target).exists() and read_record(run / target) is None
    before = records(runs)
    done = run_child("pretrain", params, env)
    assert done.returncode == 0, done.stderr[-3000:]
    after = records(runs)
    assert all(after[p] == t for p, t in before.items()), "the final rerun redid finished work"
    assert_nothing_half_written_is_complete(runs)
    assert_same_run(run, reference, TINY["epochs"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2


@pytest.mark.timeout(300)
def test_kill_during_feature_caching_then_resume(store, tmp_path, dask_address):
    data = tmp_path / "data"
    manifest = tone_manifest(data, n=24, seconds=0.5)  # the same clips as the fixture's store
    params = dict(manifest=str(manifest), data_dir=str(data), shard_size=SHARD, dask_address=dask_address)
    env = {**os.environ}
    killed = run_child("features", params, env, fault="shard:log-mel features")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    wait_dask_idle(dask_address)
    [partial] = list((data / "features").glob("*.zarr"))
    first = records(partial)
    # Dask workers may finish the other shards before the flow process dies: at least one is kept
    assert len(first) >= 1 and not Path(f"{partial}.done.json").exists()
    killed = run_child("features", params, env, fault="record:*/features/*.zarr")  # all shards, no store record
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    wait_dask_idle(dask_address)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    second = records(partial)
    assert len(second) == 3 and read_record(partial) is None
    done = run_child("features", params, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("RESULT ")[1].strip() == str(partial)
    assert all(p.stat().st_mtime_ns == t for p, t in second.items()), "finished shards were recomputed"
    a, b = zarr.open_group(partial, mode="r"), zarr.open_group(store, mode="r")
    for name in ("logmel", "length", "status"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert a.attrs["mean"] == b.attrs["mean"] and a.attrs["std"] == b.attrs["std"]


@pytest.mark.timeout(300)
def test_kill_during_download_then_resume(tmp_path):
    from demo.pool import CSV_NAME, generate_pool

    pool = tmp_path / "pool"
    generate_pool(pool, n_clips=6, seconds=1.0)
    env = {**os.environ}
    params = lambda data: dict(segments=str(pool / CSV_NAME), source="mirror", mirror=str(pool / "mirror"),  # noqa
                               data_dir=str(data), concurrency=1)
    from flows.download import download_audioset

    download_audioset(**params(tmp_path / "ref"))  # the uninterrupted run
    data = tmp_path / "data"
    killed = run_child("download", params(data), env, fault="rename:*.flac", skip=3)  # in the 4th clip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    audio = next((data / "audio").iterdir())
    kept = {p: p.stat().st_mtime_ns for p in audio.glob("*.flac")}
    assert len(kept) == 3 and list(audio.glob(".*.tmp-*")) and not (data / "manifests").exists()
    done = run_child("download", params(data), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished clips were downloaded again"
    ours = pq.read_table(next((data / "manifests").glob("*.parquet"))).to_pylist()
    theirs = pq.read_table(next((tmp_path / "ref" / "manifests").glob("*.parquet"))).to_pylist()
    kept_ids = {p.stem for p in kept}
    assert all(r["attempts"] == 0 for r in ours if r["clip_id"] in kept_ids)  # not fetched again
    strip = lambda rows: [{k: v for k, v in r.items() if k != "attempts"} for r in rows]  # noqa: E731
    assert strip(ours) == strip(theirs)
    assert {p.name for p in audio.iterdir()} == {f"{r['clip_id']}.flac" for r in ours if r["status"] == "ok"}


# ------------------------------------------------------------------ a Dask worker dies

@pytest.mark.timeout(300)
def test_dask_worker_killed_during_extraction(store, tmp_path, dask_address):
    from distributed import Client

    with Client(dask_address, timeout=30) as client:
        victim = sorted(client.scheduler_info()["workers"])[0]
        pid = client.run(os.getpid, workers=[victim])[victim]
        # That worker SIGKILLs itself when it starts an embedding shard; its nanny starts a fresh one.
        client.run(lambda: os.environ.__setitem__("DECAR_FAULT", "embed-shard"), workers=[victim])
    try:
        out = Path(pretrain_decar(features=store, run_name="worker-dies", runs_dir=str(tmp_path),
                                  dask_address=dask_address, **{**TINY, "epochs": 1}))
    finally:
        with Client(dask_address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            client.run(lambda: os.environ.pop("DECAR_FAULT", None))
    with Client(dask_address, timeout=30) as client:
        assert pid not in client.run(os.getpid).values(), "the worker should have been killed"
    shards = sorted((out / "epoch-000" / "embeddings.zarr" / "shards").glob("*.done.json"))
    assert len(shards) == 3 and read_record(out / "epoch-000" / "embeddings.zarr")
    assert all(str(pid) != json.loads(p.read_text())["worker"].rsplit(":", 1)[1] for p in shards)
    assert (out / "epoch-000" / "checkpoint.pt.done.json").exists()


# ------------------------------------------------------------------ no API

def test_api_unreachable_at_start_is_a_clear_error(store, tmp_path):
    from demo.prefect_server import free_port

    url = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_API_URL": url}
    failed = run_child("pretrain", dict(features=store, run_name="no-api", runs_dir=str(tmp_path / "runs"),
                                        **TINY), env, timeout=180)
    assert failed.returncode not in (0, -signal.SIGKILL)
    assert url.rsplit("/api", 1)[0].split("//")[1] in failed.stderr or url in failed.stderr, failed.stderr[-2000:]
    assert "ConnectError" in failed.stderr or "connect" in failed.stderr.lower()
    assert not (tmp_path / "runs").exists(), "no work may start without the API"


@pytest.mark.timeout(400)
def test_api_lost_mid_run_then_resumed(store, reference, tmp_path):
    """The API server dies while epoch 0 trains: the run stops without half-written outputs;
    with the server back (same database), a rerun completes and equals the uninterrupted run."""
    from demo.prefect_server import start_local_server, stop_process

    home = tmp_path / "api"
    server, url = start_local_server(home)
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_CLIENT_MAX_RETRIES": "1"}
    params = dict(features=store, run_name="api-lost", runs_dir=str(tmp_path / "runs"), n_workers=1, **TINY)
    code = [sys.executable, "-c", RUNNER, "pretrain", json.dumps(params)]
    child = subprocess.Popen(code, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "runs" / "api-lost"
    try:
        deadline = time.monotonic() + 180
        while not (run / "epoch-000" / "labels.parquet.done.json").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the run ended before training"
            time.sleep(0.1)
        stop_process(server)
        try:
            child.wait(120)  # the client gives up on the lost API, or we stop the run like a user would
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert_nothing_half_written_is_complete(run)
    before = records(run)

    server, url = start_local_server(home)  # the same database comes back
    try:
        done = run_child("pretrain", params, {**env, "PREFECT_API_URL": url})
    finally:
        stop_process(server)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(records(run)[p] == t for p, t in before.items()), "finished stages were redone"
    assert_same_run(run, reference, TINY["epochs"])


# ------------------------------------------------------------------ damaged files

def test_corrupt_embedding_chunk_is_detected_then_recomputed(store, tmp_path, dask_address):
    params = dict(features=store, run_name="damaged", runs_dir=str(tmp_path), dask_address=dask_address,
                  **{**TINY, "epochs": 1})
    run = Path(pretrain_decar(**params))
    labels = pq.read_table(run / "epoch-000" / "labels.parquet")
    embeddings = run / "epoch-000" / "embeddings.zarr"
    chunk = embeddings / "embedding" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated on disk after extraction
    for stage in ("labels.parquet", "clustering.json", "checkpoint.pt"):  # clustering has yet to run
        (run / "epoch-000" / f"{stage}.done.json").unlink()
    with pytest.raises(CorruptShard, match=r"embedding/c/1/0 does not match the sha256 recorded"):
        pretrain_decar(**params)
    # The error says what to do: delete that shard's record (and the store's), rerun.
    (embeddings / "shards" / "shard-00001.done.json").unlink()
    Path(f"{embeddings}.done.json").unlink()
    pretrain_decar(**params)
    assert pq.read_table(run / "epoch-000" / "labels.parquet").equals(labels)


def test_corrupt_feature_shard_is_detected(store, tmp_path, dask_address):
    copy = tmp_path / Path(store).name
    shutil.copytree(store, copy)
    shutil.copy(f"{store}.done.json", f"{copy}.done.json")
    shard = copy / "logmel" / "c" / "2" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 2])  # zarr would read zeros
    with pytest.raises(Exception, match=r"logmel/c/2/0/0 does not match the sha256 recorded"):
        pretrain_decar(features=str(copy), run_name="bad-features", runs_dir=str(tmp_path / "runs"),
                       dask_address=dask_address, **{**TINY, "epochs": 1})
    assert not (tmp_path / "runs" / "bad-features" / "epoch-000" / "embeddings.zarr.done.json").exists()


def test_corrupt_checkpoint_is_detected(store, reference, tmp_path, dask_address):
    run = tmp_path / "bitrot"
    shutil.copytree(reference, run)
    (run / ".lock").unlink(missing_ok=True)
    shutil.rmtree(run / "epoch-001")
    checkpoint = run / "epoch-000" / "checkpoint.pt"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(Exception, match="does not match the sha256 recorded"):
        pretrain_decar(features=store, run_name="bitrot", runs_dir=str(tmp_path), dask_address=dask_address,
                       **TINY)
    with pytest.raises(CorruptCheckpoint, match="does not match the sha256 recorded"):
        from storage.checkpoint import load_checkpoint
        load_checkpoint(checkpoint)


# ------------------------------------------------------------------ disk full

def test_disk_full_is_a_clear_error_and_earlier_outputs_stay(store, reference, tmp_path, dask_address):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    full = tmp_path / "full"
    full.mkdir()
    init_size = (reference / "init" / "checkpoint.pt").stat().st_size
    size_kib = int(init_size * 1.5) // 1024 + 64  # room for the initial checkpoint, not for epoch 0's
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(full)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        with pytest.raises(OSError, match=r"no space left on device while writing .*epoch-000"):
            pretrain_decar(features=store, run_name="full", runs_dir=str(full), dask_address=dask_address,
                           **{**TINY, "epochs": 1})
        run = full / "full"
        from storage.checkpoint import load_checkpoint
        load_checkpoint(run / "init" / "checkpoint.pt")  # verified against its sha256: intact
        assert read_record(run / "init" / "checkpoint.pt") is not None
        assert not list(run.rglob(".*.tmp-*")), "temporary files must be removed on error"
        assert read_record(run / "epoch-000" / "checkpoint.pt") is None
        assert_nothing_half_written_is_complete(run)
    finally:
        subprocess.run(["umount", str(full)], check=False)


# ------------------------------------------------------------------ bad parameters

def bad_calls(store: str, tmp: Path):
    from flows.download import download_audioset

    runs = str(tmp / "runs")
    pre = dict(features=store, run_name="ok", runs_dir=runs)
    yield pretrain_decar, {**pre, "epochs": 0}, "epochs must be >= 1"
    yield pretrain_decar, {**pre, "clusters": 1}, "clusters\n.*greater than or equal to 2"  # pydantic names it
    yield pretrain_decar, {**pre, "clusters": 10_000}, r"clusters \(10000\) is larger"
    yield pretrain_decar, {**pre, "run_name": "../escape"}, "run_name must be"
    yield pretrain_decar, {**pre, "algorithm": "dbscan"}, "algorithm must be"
    yield pretrain_decar, {**pre, "batch_size": 0}, "batch_size\n.*greater than or equal to 1"
    yield pretrain_decar, {**pre, "device": "tpu"}, "device must be"
    yield pretrain_decar, {**pre, "features": str(tmp / "nope.zarr")}, "no complete feature store"
    yield cache_features, dict(manifest=str(tmp / "nope.parquet"), data_dir=str(tmp / "data")), "manifest not found"
    yield cache_features, dict(manifest=str(tmp / "nope.parquet"), data_dir=str(tmp / "data"), shard_size=0), \
        "shard_size must be >= 1"
    csv = str(tmp / "segments.csv")
    yield download_audioset, dict(segments=csv, source="ftp", data_dir=str(tmp / "data")), "source must be one of"
    yield download_audioset, dict(segments=csv, fraction=2.0, data_dir=str(tmp / "data")), "fraction must be"
    yield download_audioset, dict(segments=csv, concurrency=0, data_dir=str(tmp / "data")), "concurrency must be"
    yield download_audioset, dict(segments=csv, source="mirror", data_dir=str(tmp / "data")), "mirror is required"
    try:
        from flows.recluster import recluster
        yield recluster, dict(run_dir=str(tmp / "runs" / "missing"), epoch=0), "run"
    except ImportError:
        pass
    try:
        from flows.benchmark import benchmark_downstream
        yield benchmark_downstream, dict(checkpoint=str(tmp / "missing.pt"), tasks=["synth-keyword"],
                                         data_dir=str(tmp / "data")), "checkpoint"
    except ImportError:
        pass


def test_bad_parameters_fail_before_any_work(store, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for flow, params, message in bad_calls(store, work):
        with pytest.raises(Exception, match=message):
            flow(**params)
        assert not any(work.iterdir()), f"{flow.name}{params}: files were written before the error"
    # Wrong types are refused by Prefect's parameter validation, before the flow body runs.
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError):
        pretrain_decar(features=store, run_name="ok", runs_dir=str(work / "runs"), epochs="many")
    assert not any(work.iterdir())
