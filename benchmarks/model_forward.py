"""Forward time of a VMamba model on CPU: the default scan dispatch against the sequential reference scan.

Usage: .venv/bin/python benchmarks/model_forward.py [--model vmamba_tiny_s1l8] [--batch 1] [--img-size 224]
The default backend is whatever `adaptor_peft.kernels` dispatch picks (env ADAPTOR_PEFT_SCAN, else "torch"
on CPU); "ref" is the step-by-step oracle. Both run on the same randomly initialised weights in one process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import timm
import torch

import adaptor_peft.models  # noqa: F401  (registers the VMamba models with timm)
from adaptor_peft.kernels.dispatch import resolve_backend


def time_forward(model, x, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """(wall, process CPU) seconds of `repeats` forwards after `warmup` untimed ones.

    CPU time is reported too because it is less disturbed by other load on a shared machine.
    """
    wall, cpu = [], []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            model(x)
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return wall, cpu


def main() -> None:
    """Run the comparison and print a small table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vmamba_tiny_s1l8")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    default = resolve_backend(None, x)
    print(
        f"{args.model} forward, input {tuple(x.shape)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, ADAPTOR_PEFT_SCAN="
        f"{os.environ.get('ADAPTOR_PEFT_SCAN', '')!r}"
    )
    rows = []
    model.set_scan_backend(None)
    rows.append((f"default ({default})", time_forward(model, x, args.repeats, warmup=1)))
    model.set_scan_backend("ref")
    rows.append(("ref", time_forward(model, x, args.ref_repeats, warmup=0)))
    model.set_scan_backend(None)
    with torch.inference_mode():
        model.set_scan_backend("ref")
        y_ref = model(x)
        model.set_scan_backend(None)
        diff = (model(x) - y_ref).abs().max().item()
    ref_wall, ref_cpu = (statistics.median(t) for t in rows[1][1])
    print(
        f"{'backend':<16}{'wall med s':>12}{'wall min s':>12}{'cpu med s':>11}{'ref/this wall':>15}{'cpu':>8}"
    )
    for name, (wall, cpu) in rows:
        w, c = statistics.median(wall), statistics.median(cpu)
        print(f"{name:<16}{w:>12.3f}{min(wall):>12.3f}{c:>11.3f}{ref_wall / w:>14.1f}x{ref_cpu / c:>7.1f}x")
    print(f"max |logits(default) - logits(ref)| = {diff:.2e}")


if __name__ == "__main__":
    main()
