"""Run one function on N processes joined by torch.distributed: one per GPU, or N CPU processes
over gloo. torch's own launcher (torch.multiprocessing, spawn) starts them; rendezvous is a TCP
store on a free local port. Across nodes, torchrun starts `python -m tasks.train_rank` instead
(README, "Training on several GPUs and nodes"): the per-rank function is the same.

A process that raises or dies (kill -9, OOM) makes `run_processes` terminate the others and raise:
no process is left hanging in a collective, and only rank 0 ever writes outputs.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from storage.atomic import read_json, write_json
from storage.faults import maybe_crash


def rank_step_callback(rank: int, world: int, report: Callable[[dict], None] | None):
    """on_step(step, steps, loss) for a training rank: the fault-injection point, and a progress
    report about every 5 % of the epoch (rank 0 only gets `report`)."""
    def on_step(step: int, steps: int, loss: float) -> None:
        maybe_crash("train-step" if world == 1 else f"train-step:rank{rank}")
        if report and (step % max(1, steps // 20) == 0 or step == steps):
            report({"fraction": step / steps, "loss": loss})

    return on_step


def ddp_wrapper(device: torch.device, world: int) -> Callable[[torch.nn.Module], torch.nn.Module] | None:
    """DistributedDataParallel around a rank's module when there is more than one rank, else None."""
    if world == 1:
        return None
    return lambda m: DistributedDataParallel(m, device_ids=[device.index] if device.type == "cuda" else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(fn: Callable, job: dict, devices: list[str], on_report: Callable[[dict], None] | None = None,
                  poll_s: float = 1.0) -> dict:
    """fn(job, rank, world, device, report) on len(devices) processes; returns rank 0's result.

    `report(dict)` (rank 0) is relayed to `on_report` in this process (e.g. a progress artifact)."""
    world = len(devices)
    with tempfile.TemporaryDirectory(prefix="decar-ranks-") as tmp:
        context = mp.start_processes(_rank_main, args=(fn, job, devices, free_port(), tmp), nprocs=world,
                                     join=False, start_method="spawn")
        seen = None
        try:
            while not context.join(timeout=poll_s):
                seen = _relay(Path(tmp) / "report.json", seen, on_report)
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"training process (rank {exc.error_index} of {world}) died with exit code "
                               f"{exc.exit_code}; the epoch was not saved, a rerun retrains it") from None
        except mp.ProcessRaisedException as exc:
            raise RuntimeError(f"training process (rank {exc.error_index} of {world}) failed:\n{exc}") from None
        _relay(Path(tmp) / "report.json", seen, on_report)
        return read_json(Path(tmp) / "result.json")


def _relay(path: Path, seen, on_report):
    if on_report and path.exists():
        try:
            report = read_json(path)
        except (OSError, ValueError):
            return seen
        if report != seen:
            on_report(report)
            return report
    return seen


def _rank_main(rank: int, fn: Callable, job: dict, devices: list[str], port: int, tmp: str) -> None:
    world = len(devices)
    device = torch.device(devices[rank])
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # share the cores: oversubscribed ranks slow each other down
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        report = (lambda r: write_json(Path(tmp) / "report.json", r)) if rank == 0 else None
        result = fn(job, rank, world, device, report)
        if rank == 0:
            Path(tmp, "result.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
