"""Small shared helpers for tests: tiny audio folders and manifests, Prefect run inspection."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from storage.manifest import write_manifest


def tone_manifest(data_dir: Path, n: int = 12, seconds: float = 1.0, rate: int = 16000,
                  name: str = "tones", seed: int = 0, bad: dict[int, bytes] | None = None) -> Path:
    """n short clips (tones of varied pitch + noise) and an all-ok manifest; `bad` replaces
    clip i's file content with the given bytes (for decode-failure tests)."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "audio" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        length = seconds * (0.5 + rng.random())
        t = np.arange(int(length * rate)) / rate
        audio = 0.3 * np.sin(2 * np.pi * (200 + 150 * (i % 6)) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip{i:03d}.flac"
        sf.write(path, audio.astype(np.float32), rate)
        if bad and i in bad:
            path.write_bytes(bad[i])
        rows.append(dict(clip_id=f"clip{i:03d}", path=str(path.relative_to(data_dir)), duration_s=len(t) / rate,
                         sample_rate=rate, status="ok", error="", error_kind="", source=name))
    return write_manifest(data_dir / "manifests" / f"{name}.parquet", rows)


def task_states(flow_run_id) -> dict[str, list[str]]:
    """Task name -> state names of the task runs of a flow run and its subflow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    out: dict[str, list[str]] = {}
    with get_client(sync_client=True) as client:
        runs = [flow_run_id]
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        runs += [c.id for c in children]
        for task_run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs))):
            out.setdefault(task_run.name.rsplit("-", 1)[0], []).append(task_run.state.name)
    return out


def stop_process(process, grace: float = 60.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds (a Prefect worker finishing its
    shutdown on a loaded machine took over 30 s)."""
    import subprocess

    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
