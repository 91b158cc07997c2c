"""The `decar` command line: every flow parameter in --help with its default, a flow run end to end
from the terminal with its output path printed, the crashed-run automation installed on the server,
and the local API handed to Dask workers when no PREFECT_API_URL is set."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

from flows import benchmark_downstream, cache_features, download_audioset, pretrain_decar, pretrain_slicer, recluster
from tests.helpers import tone_manifest
from tests.test_deployment import ROOT

DECAR = [sys.executable, "-m", "decar"]


def decar(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(DECAR + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"decar {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_help_lists_every_parameter_with_its_default():
    from typer.testing import CliRunner

    from decar.cli import app

    def help_of(*command: str) -> str:
        done = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
        assert done.exit_code == 0, done.output
        return "".join(done.output.split())  # wrapping-proof: compare without whitespace

    top = help_of()
    for command in ("download", "features", "pretrain", "recluster", "benchmark", "demo", "ui", "safety-net",
                    "pretrain-delores-s", "pretrain-delores-m", "pretrain-slicer"):
        assert command in top
    skipped = {"config"}  # cache-features' FeatureConfig: a Python object, set from Python
    for command, flow in (("download", download_audioset), ("features", cache_features), ("pretrain", pretrain_decar),
                          ("recluster", recluster), ("benchmark", benchmark_downstream),
                          ("pretrain-slicer", pretrain_slicer)):
        text = help_of(command)
        for p in inspect.signature(flow.fn).parameters.values():
            if p.name in skipped:
                continue
            if p.default is inspect.Parameter.empty:
                assert p.name.upper() in text, (command, p.name)
                continue
            assert f"--{p.name.replace('_', '-')}" in text, (command, p.name)
            if isinstance(p.default, bool):
                shown = f"no-{p.name.replace('_', '-')}" if not p.default else p.name.replace("_", "-")
            elif p.default is None:
                shown = "(None)"
            else:
                shown = p.default[0] if isinstance(p.default, list) else str(p.default)
            assert f"[default:{shown}".replace(" ", "") in text, (command, p.name, shown)


@pytest.mark.integration
def test_features_and_pretrain_from_the_command_line(tmp_path, subprocess_env, dask_address):
    manifest = tone_manifest(tmp_path / "data", n=24)
    out = decar(["features", str(manifest), "--data-dir", str(tmp_path / "data"), "--dask-address", dask_address],
                subprocess_env).stdout
    store = out.strip().splitlines()[-1].removeprefix("feature store: ")
    assert store.endswith(".zarr") and os.path.isdir(store), out
    done = decar(["pretrain", store, "cli", "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", "--clusters", "4",
                  "--batch-size", "8", "--width-mult", "0.25", "--allow-degenerate", "--dask-address", dask_address],
                 subprocess_env)
    assert done.stdout.strip().splitlines()[-1] == f"run directory: {tmp_path / 'runs' / 'cli'}"
    assert "epoch 0 training [" in done.stderr and "100%" in done.stderr  # the terminal progress bar
    assert (tmp_path / "runs" / "cli" / "plots" / "loss-nmi.png").exists()


def test_safety_net_installs_the_crashed_run_automation(subprocess_env):
    from prefect.automations import Automation

    from flows.automations import NAME

    decar(["safety-net", "--window", "300"], subprocess_env)
    first = Automation.read(name=NAME)
    decar(["safety-net", "--window", "240"], subprocess_env)  # replaces, never duplicates
    second = Automation.read(name=NAME)
    assert first.id != second.id and second.trigger.within.total_seconds() == 240
    assert second.trigger.posture == "Proactive" and "prefect.flow-run.heartbeat" in second.trigger.after
    assert second.actions[0].state == "CRASHED"
    second.delete()


def test_dask_workers_share_the_flow_process_api_without_prefect_api_url(tmp_path):
    """No PREFECT_API_URL: one temporary server for the process, its URL handed to every Dask worker."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    script = ("import os\n"
              "from distributed import Client\n"
              "from prefect.server.api.server import SubprocessASGIServer\n"
              "from flows.runners import local_cluster\n"
              "with local_cluster(2) as address, Client(address) as client:\n"
              "    urls = set(client.run(lambda: os.environ.get('PREFECT_API_URL')).values())\n"
              "print(urls == {SubprocessASGIServer().api_url}, len(urls))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.stdout.split()[-2:] == ["True", "1"], done.stdout + done.stderr


@pytest.mark.integration
def test_demo_from_the_command_line(tmp_path, subprocess_env):
    """`decar demo`, small: its own Prefect server on a free port, every stage, the outputs printed."""
    env = {k: v for k, v in subprocess_env.items() if k != "PREFECT_API_URL"}
    out = decar(["demo", "--clips", "40", "--seconds", "1", "--epochs", "1", "--clusters", "4", "--skip-benchmark",
                 "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
                 "--prefect-home", str(tmp_path / "prefect")], env, timeout=560).stdout
    assert "Demo finished" in out and "pre-training run" in out, out
    assert (tmp_path / "runs" / "demo" / "epoch-000" / "checkpoint.pt").exists()
    assert (tmp_path / "runs" / "demo" / "plots" / "loss-nmi.png").exists()
