"""GPU checks, side by side in one run (issues 11 and 14): what the speed options buy, and one short
run of each instance method with mixed precision. About 3-5 minutes on one modern GPU.

  1. DECAR training step on 10 s clips (64 x 1001), EfficientNet-B0, batch 64, tensors already on
     the GPU (model.decar.train_one_epoch): float32 vs bf16 autocast (the default on GPU), and bf16
     with channels_last and with torch.compile; clips/s and the ratio to the default.
  2. Extraction forward (eval mode, batch 256): float32 vs bf16; clips/s.
  3. DeLoRes-S, DeLoRes-M and SLICER: a few steps each through model.instance.train_instance_epoch on
     a store held in memory (bf16 autocast on GPU): clips/s and a finite loss.

    .venv/bin/python bench/gpu.py                       # on a machine with a GPU
    .venv/bin/python bench/gpu.py --device cpu --quick  # the same code on tiny shapes (a dry run)

Without a GPU and without --device cpu it prints that nothing was measured and exits 0.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes: check the script, measure nothing useful")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    p.add_argument("--skip-compile", action="store_true")
    return p.parse_args()


def timed(fn, steps: int, device: torch.device, warmup: int = 3) -> float:
    """Seconds per call after `warmup` calls (synchronising the GPU around the timed ones)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def decar_training(args, device, batch: int, frames: int, width: float) -> None:
    from model.augment import SpecAugment
    from model.config import ModelConfig, TrainConfig
    from model.decar import make_optimisers, train_one_epoch
    from model.network import DecarNet

    print(f"\n## 1. DECAR training step, B0 x{width}, batch {batch}, 64 x {frames} (clips/s)\n")
    x = torch.randn(batch, 64, frames, device=device)
    lengths = torch.full((batch,), frames, device=device)
    y = torch.randint(0, 512, (batch,), device=device)
    results = {}
    variants = [("bf16 (default)", {}), ("float32", dict(autocast=False)), ("bf16 + channels_last",
                dict(channels_last=True)), ("bf16 + torch.compile", dict(compile=True))]
    for name, opts in variants:
        if opts.get("compile") and args.skip_compile:
            continue
        net = DecarNet.random_init(ModelConfig(width_mult=width), 0).to(device)
        net.reset_head(512)
        cfg = TrainConfig(batch_size=batch)
        memory_format = torch.channels_last if opts.get("channels_last") else torch.contiguous_format
        net.to(memory_format=memory_format)
        model = torch.compile(net) if opts.get("compile") else net
        optimisers = make_optimisers(net, cfg)
        augment = SpecAugment.from_config(cfg)

        def step(model=model, optimisers=optimisers, augment=augment, memory_format=memory_format,
                 bf16=opts.get("autocast", True)):
            train_one_epoch(model, [(x, lengths, y)], optimisers, augment, device, None, None, None, memory_format,
                            bf16)

        results[name] = batch / timed(step, args.steps, device, warmup=5 if opts.get("compile") else 3)
        ratio = results[name] / results.get("bf16 (default)", results[name])
        print(f"| {name} | {results[name]:.0f} clips/s | {ratio:.2f}x the default |")


def extraction(args, device, batch: int, frames: int, width: float) -> None:
    from model.config import ModelConfig
    from model.network import DecarNet

    print(f"\n## 2. Extraction forward, eval mode, batch {batch}, 64 x {frames} (clips/s)\n")
    net = DecarNet.random_init(ModelConfig(width_mult=width), 0).to(device).eval()
    x = torch.randn(batch, 1, 64, frames, device=device)
    for name, bf16 in (("float32", False), ("bf16", True)):
        def forward(bf16=bf16):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and
                                                 device.type == "cuda"):
                net.embed(x)
        print(f"| {name} | {batch / timed(forward, args.steps, device):.0f} clips/s |")


def instance_methods(args, device, clips: int, frames: int, batch: int) -> None:
    from model.config import InstanceConfig
    from model.instance import fit_kmix, make_optimiser, new_bank, train_instance_epoch
    from model.instance_methods import build_method

    print(f"\n## 3. Instance methods, BYOL-A encoder, batch {batch}, {clips} clips of 64 x {frames} in memory\n")
    store = np.random.default_rng(0).standard_normal((clips, 64, frames)).astype(np.float32)
    small = dict(encoder_dim=64, projector_dim=64, queue_size=32, bank_size=32) if args.quick else {}
    for method in ("delores-s", "delores-m", "slicer"):
        cfg = InstanceConfig(method=method, batch_size=batch, samples_per_epoch=batch * args.steps, **small)
        torch.manual_seed(0)
        model = build_method(cfg, 64).to(device)
        optimiser, bank = make_optimiser(model, cfg), new_bank(cfg, 64, device)
        kmix = fit_kmix(lambda i: store[i], clips, cfg, 0) if method == "slicer" else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        out = train_instance_epoch(model, optimiser, bank, lambda i: store[i], clips, cfg, 0, 0, device, kmix)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        print(f"| {method} | {out['clips'] / seconds:.0f} clips/s (incl. loading from host memory) | "
              f"loss {out['loss']:.4f} | finite: {np.isfinite(out['loss'])} |")


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no GPU visible to torch: nothing measured (run with --device cpu --quick for a dry run)")
        return 0
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    if args.quick:
        decar_training(args, device, batch=4, frames=64, width=0.25)
        extraction(args, device, batch=8, frames=64, width=0.25)
        instance_methods(args, device, clips=32, frames=120, batch=8)
    else:
        decar_training(args, device, batch=64, frames=1001, width=1.0)
        extraction(args, device, batch=256, frames=1001, width=1.0)
        instance_methods(args, device, clips=2048, frames=1001, batch=256)
    return 0


if __name__ == "__main__":
    sys.exit(main())
