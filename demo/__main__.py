"""The demo: `make demo` (or `python -m demo`).

Generates a pool of clips laid out like AudioSet (segments CSV + "videos"), serves it on
loopback, then runs the real flows against it on embedded defaults: download-audioset
(yt-dlp on the loopback URLs) -> cache-features -> pretrain-decar (a few epochs) ->
benchmark-downstream on small generated tasks. Everything is reported to a local Prefect
server whose database stays in .prefect/, so `make ui` shows the runs afterwards.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from demo.prefect_server import free_port, port_free, start_local_server, stop_process


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=300, help="clips in the generated pool")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--clusters", type=int, default=32)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--prefect-home", default=".prefect")
    p.add_argument("--skip-benchmark", action="store_true")
    return p.parse_args(argv)


# A CPU-scale configuration that learns (bench/science.py, README "Does pre-training learn?"): a
# quarter-width network on 96-frame crops, 4 draws per clip and epoch, a prototype head from the
# epoch's centroids, light SpecAugment, loudness removed per clip, PCA to 32 dims before k-means.
DEMO_SETTINGS = dict(width_mult=0.25, batch_size=64, crop_frames=96,
                     train_options={"head_init": "centroids", "freq_masks": 1, "freq_mask_bins": 10,
                                    "time_masks": 1, "time_mask_frames": 20},
                     cluster_options={"pca_dim": 32}, model_options={"clip_norm": True})


def step(text: str) -> float:
    print(f"\n==> {text}", flush=True)
    return time.perf_counter()


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    home = Path(args.prefect_home).resolve()
    port = 4200 if port_free(4200) else free_port()
    step(f"starting a local Prefect server (database in {home})")
    server, api_url = start_local_server(home, port=port, log_path=home / "demo-server.log")
    # Set before Prefect is imported: flows, Dask workers and subprocesses share this API.
    os.environ.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home))
    # The flows' own progress lines stay; per-task state lines and Dask's INFO chatter go.
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
    try:
        return run_demo(args, api_url, started)
    finally:
        _flush_prefect_logs()
        stop_process(server)


def run_demo(args, api_url: str, started: float) -> int:
    from demo.pool import CSV_NAME, generate_pool
    from demo.server import serve_folder
    from flows import cache_features, download_audioset, pretrain_decar

    logging.getLogger("prefect.task_runner.dask").setLevel(logging.WARNING)  # per-subflow cluster lines

    print(f"    Prefect UI while the demo runs: {api_url.removesuffix('/api')}")
    source = Path(args.data_dir) / "demo-source"
    marker = source / f".generated-synth-{args.clips}x{args.seconds:g}s"
    if not marker.exists():  # deterministic, so generated once
        t = step(f"generating {args.clips} clips of {args.seconds:g} s laid out like AudioSet in {source}")
        generate_pool(source, n_clips=args.clips, seconds=args.seconds, seed=0, sounds="synth")
        marker.touch()
        print(f"    done in {time.perf_counter() - t:.1f} s")

    with serve_folder(source) as url:
        t = step(f"download-audioset: yt-dlp from a loopback mirror of YouTube ({url})")
        manifest = download_audioset(f"{url}/{CSV_NAME}", source="youtube", url_template=f"{url}/videos/{{ytid}}",
                                     data_dir=args.data_dir, dataset="demo")
    ok, failed = _manifest_counts(manifest)
    print(f"    {ok} clips ok, {failed} failed, in {time.perf_counter() - t:.1f} s -> {manifest}")

    t = step("cache-features: log-mel (25 ms / 10 ms, 64 mel bins) into sharded Zarr, on a local Dask cluster")
    store = cache_features(manifest, data_dir=args.data_dir)
    print(f"    done in {time.perf_counter() - t:.1f} s -> {store}")

    t = step(f"pretrain-decar: {args.epochs} epochs of DECAR (k-means, k={args.clusters}) on a narrow EfficientNet-B0")
    run_dir = pretrain_decar(store, "demo", runs_dir=args.runs_dir, epochs=args.epochs, clusters=args.clusters,
                             **DEMO_SETTINGS, samples_per_epoch=4 * args.clips,
                             force_config=True)  # a demo folder from an older version restarts
    print(f"    done in {time.perf_counter() - t:.1f} s -> {run_dir}")
    print(_epoch_table(run_dir))

    results = None
    if not args.skip_benchmark:
        results = run_benchmark(run_dir, args)

    print(f"\nDemo finished in {time.perf_counter() - started:.0f} s. Outputs:")
    print(f"  manifest          {manifest}")
    print(f"  log-mel features  {store}")
    print(f"  pre-training run  {run_dir}  (run.json, epoch-NNN/labels.parquet, checkpoint.pt, metrics.json)")
    print(f"  plots             {Path(run_dir) / 'plots'}  (loss-nmi, cluster-sizes, health, benchmark-*.png)")
    if results:
        print(f"  benchmark         {results}")
    print(f"  Prefect database  {os.environ['PREFECT_HOME']}: `decar ui` (or `make ui`) serves it and prints its URL")
    print("Run `make demo` again: every stage is a cache hit and it finishes in seconds.")
    return 0


def run_benchmark(run_dir: str, args) -> str | None:
    try:
        from flows import benchmark_downstream
    except ImportError:
        return None
    t = step("benchmark-downstream: linear probes on generated tasks, DECAR vs random init vs log-mel stats")
    results = benchmark_downstream(f"{run_dir}:latest", tasks=["synth-speaker", "synth-instrument"],
                                   data_dir=args.data_dir, epochs=50)
    print(f"    done in {time.perf_counter() - t:.1f} s -> {results}")
    print(_results_table(results))
    return results


def _flush_prefect_logs() -> None:
    """Send buffered run logs to the API before the server stops."""
    if "prefect" in sys.modules:
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()


def _manifest_counts(manifest: str) -> tuple[int, int]:
    from storage.manifest import read_manifest

    rows = read_manifest(manifest)
    ok = sum(r["status"] == "ok" for r in rows)
    return ok, len(rows) - ok


def _epoch_table(run_dir: str) -> str:
    import json

    lines = ["    epoch   loss    NMI     clusters  largest"]
    for metrics in sorted(Path(run_dir).glob("epoch-*/metrics.json")):
        m = json.loads(metrics.read_text())
        nmi = "  -   " if m["nmi"] is None else f"{m['nmi']:.3f}"
        lines.append(f"    {m['epoch']:>5}   {m['loss']:.3f}  {nmi}  {m['clusters']:>8}  "
                     f"{100 * m['largest_fraction']:.0f}%")
    return "\n".join(lines)


def _results_table(results: str) -> str:
    import pyarrow.parquet as pq

    rows = pq.read_table(results).to_pylist()
    lines = ["    task              mode      model           accuracy [95% CI]     macro-F1"]
    for r in rows:
        lines.append(f"    {r['task']:<17} {r['mode']:<9} {r['model']:<15} {r['accuracy']:.3f} "
                     f"[{r['accuracy_ci_low']:.3f}, {r['accuracy_ci_high']:.3f}]  {r['macro_f1']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
