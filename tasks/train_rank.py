"""One rank of a training epoch under torchrun, for runs across nodes:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29400 \\
        -m tasks.train_rank runs/exp1/epoch-003/train-job.json

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; the job file is the one the train-epoch stage
writes beside the checkpoint before it trains (same parameters as its own processes get), so
every node runs exactly what `tasks.train.train_rank` runs on one node. Rank 0 writes the
checkpoint and its completion record; rerun pretrain-decar afterwards and the epoch is cached.
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from tasks.train import train_rank


def main(job_file: str) -> None:
    job = json.loads(open(job_file).read())
    rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # env:// rendezvous from torchrun
    try:
        train_rank(job, rank, world, device)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
