"""What a researcher sees in the Prefect UI: plots, one living table per run, the benchmark chart.

Real flows (a two-epoch pre-training and a benchmark) on the session's Prefect server; the artifacts are
read back from its API, the PNG files from the run folder, and the artifact pages are screenshotted with
headless Chromium (skipped, saying why, when no Chromium is installed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from downstream.generated import write_generated_task
from flows import benchmark_downstream, cache_features, pretrain_decar
from flows.plots import COLORS
from tests.helpers import tone_manifest


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dask_address) -> dict:
    data = tmp_path_factory.mktemp("ui")
    store = cache_features(str(tone_manifest(data, n=24)), data_dir=str(data), dask_address=dask_address)
    state = pretrain_decar(store, "ui-check", runs_dir=str(data / "runs"), epochs=2, clusters=4, batch_size=8,
                           width_mult=0.25, allow_degenerate=True, dask_address=dask_address, return_state=True)
    run_dir = Path(state.result())
    folder = write_generated_task("synth-instrument", data / "families", scale=0.2)
    bench = benchmark_downstream(f"{run_dir}:latest", tasks=[f"folder:{folder}"], data_dir=str(data / "data"),
                                 epochs=1, batch_size=8, dask_address=dask_address, return_state=True)
    bench.result()
    return {"run_dir": run_dir, "pretrain": state.state_details.flow_run_id,
            "benchmark": bench.state_details.flow_run_id}


def artifacts_of(flow_run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_one_living_table_and_plots_per_run(runs):
    artifacts = artifacts_of(runs["pretrain"])
    keys = [a.key for a in artifacts if a.key]
    # each keyed artifact once for the run, however many epochs: updated in place, not versioned per epoch
    assert sorted(keys) == ["decar-ui-check-epochs", "decar-ui-check-plots", "decar-ui-check-summary"]
    table = next(a for a in artifacts if a.key == "decar-ui-check-epochs")
    assert [row["epoch"] for row in json.loads(table.data)] == [0, 1]  # the table's latest content has both epochs
    plots = next(a for a in artifacts if a.key == "decar-ui-check-plots")
    assert plots.data.count("data:image/png;base64,") == 3 and "2 epochs" in plots.data
    for name in ("loss-nmi", "cluster-sizes", "health"):
        png = runs["run_dir"] / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 100_000
    summary = next(a for a in artifacts if a.key == "decar-ui-check-summary")
    assert not re.findall(r"\d\.\d{6,}", summary.data), summary.data  # figures rounded

    bench = [a for a in artifacts_of(runs["benchmark"]) if a.key and a.key.endswith("-summary")]
    assert any(a.data.count("data:image/png;base64,") == 1 for a in bench)
    assert (runs["run_dir"] / "plots" / "benchmark-ui-check-epoch-001.png").exists()


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def screenshot(url: str, path: Path, budget_ms: int) -> np.ndarray:
    command = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--window-size=1400,1100", f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url]
    subprocess.run(command, capture_output=True, timeout=180, check=True)
    return imread(path)[..., :3]


def page_with(url: str, path: Path, colors: dict[str, int]) -> dict[str, int]:
    """Screenshot the page, waiting longer while the plots' colours are missing (the UI loads its
    markdown renderer lazily: on a busy machine the first shot can show the page without its body)."""
    for budget_ms in (15_000, 40_000, 90_000):
        shot = screenshot(url, path, budget_ms)
        found = {name: pixels_of(shot, COLORS[name]) for name in colors}
        if all(found[name] > least for name, least in colors.items()):
            break
    return found


def pixels_of(image: np.ndarray, color: str, tolerance: float = 0.06) -> int:
    rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image - rgb).max(axis=-1) < tolerance).sum())


@pytest.mark.skipif(chromium() is None, reason="no Chromium installed (apt-get install chromium; .ci/run does)")
def test_ui_pages_show_the_plots(runs, prefect_api, tmp_path):
    """The UI draws the PNGs embedded in the artifacts: the pre-training curves and the benchmark chart."""
    out = Path(os.environ.get("DECAR_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    ui = prefect_api.removesuffix("/api")
    plots = next(a for a in artifacts_of(runs["pretrain"]) if a.key == "decar-ui-check-plots")
    bench = next(a for a in artifacts_of(runs["benchmark"]) if a.key and a.key.endswith("-summary"))
    found = page_with(f"{ui}/artifacts/artifact/{plots.id}", out / "pretrain-plots.png", {"loss": 200, "nmi": 20})
    assert found["loss"] > 200 and found["nmi"] > 20, f"the loss / NMI curves are not on the page: {found}"
    found = page_with(f"{ui}/artifacts/artifact/{bench.id}", out / "benchmark-chart.png",
                      {"decar": 200, "logmel-stats": 200})
    assert found["decar"] > 200 and found["logmel-stats"] > 200, f"the benchmark bars are not on the page: {found}"
