"""Selective-scan benchmark: forward and forward+backward time of every backend at VMamba-T shapes.

Times are medians over repeats; every backend is also printed as a speed-up against the
sequential reference ("ref", autograd through the loop for fwd+bwd) measured in the same run.
The reference is slow (about 20 s fwd+bwd for one B=2 stage-1 layer on a 2-core CPU), so it is
timed with few repeats and skipped above --ref-max-elems state elements (noted in the table).
On CUDA the table adds the achieved bandwidth against --peak-gbs with the byte model of
docs/scan.md section 5 (fwd: read u, delta, B, C, write y; bwd: read u, delta, dy, B, C,
write du, ddelta, dB, dC), and a `mamba_ssm` row when `mamba_ssm.selective_scan_fn` imports.

Examples:
  python benchmarks/scan.py --quick                 # acceptance shape: B=2, 4D=768, L=3136, N=1
  python benchmarks/scan.py --batch 2 --n 1 16      # every stage, both ssm ratios, B=2
  python benchmarks/scan.py --device cuda --batch 2 64 --n 1 16 --backends torch triton mamba_ssm
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from adaptor_peft.kernels.dispatch import available_backends, selective_scan

# VMamba-T stages: L = (224/4 / 2^s)^2; K*D = 4 * d_inner = 4 * ratio * 96 * 2^s
STAGE_L = (3136, 784, 196, 49)
BASE_KD = 384  # 4 directions x d_inner 96 at ssm_ratio 1 (vmambav2v_tiny); ratio 2 doubles it
K = 4


def make_inputs(batch: int, kd: int, length: int, n: int, device: str, dtype: torch.dtype, seed: int = 0):
    """VMamba-like inputs (A = -(1..N) U(0.5,1.5), dt = softplus(delta + bias) in ~[1e-3, 0.1])."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, kd, length, generator=g)
    delta = 0.5 * torch.randn(batch, kd, length, generator=g)
    A = -(torch.rand(kd, n, generator=g) + 0.5) * torch.arange(1, n + 1)
    B = torch.randn(batch, K, n, length, generator=g)
    C = torch.randn(batch, K, n, length, generator=g)
    D = torch.randn(kd, generator=g)
    dt0 = torch.exp(torch.rand(kd, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt0 + torch.log(-torch.expm1(-dt0))
    low = [t.to(device=device, dtype=dtype) for t in (u, delta, B, C)]
    return low[0], low[1], A.to(device), low[2], low[3], D.to(device), bias.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str, repeats: int, warmup: int) -> float:
    """Median wall time in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scan_callable(backend: str) -> Callable[..., torch.Tensor]:
    """Function (u, delta, A, B, C, D, bias) -> y with softplus, for a backend or mamba_ssm."""
    if backend == "mamba_ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return lambda u, d, A, B, C, D, b: selective_scan_fn(u, d, A, B, C, D, None, b, True)
    return lambda u, d, A, B, C, D, b: selective_scan(u, d, A, B, C, D, b, True, backend=backend)


def bytes_model(batch: int, kd: int, length: int, n: int, in_bytes: int) -> tuple[float, float]:
    """Mandatory HBM traffic (fwd, fwd+bwd) in bytes, docs/scan.md section 5."""
    e = batch * kd * length
    bc = batch * K * n * length * in_bytes
    fwd = 2 * e * in_bytes + 4 * e + 2 * bc
    bwd = 2 * e * in_bytes + 4 * e + 2 * e * in_bytes + 2 * bc + 2 * bc
    return fwd, fwd + bwd


def torch_path_gb(batch: int, kd: int, length: int, n: int) -> float:
    """Rough peak memory of the torch path's fwd+bwd (time-major work buffers), in GB."""
    e = batch * kd * length
    return (10 * e + 5 * e * n) * 4 / 1e9


def bench_one(args: argparse.Namespace, backend: str, shape: tuple[int, int, int, int]) -> dict:
    batch, kd, length, n = shape
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    inputs = make_inputs(batch, kd, length, n, args.device, dtype)
    fn = scan_callable(backend)
    is_ref = backend == "ref"
    repeats, warmup = (args.ref_repeats, 0) if is_ref else (args.repeats, 1)
    row: dict = {"backend": backend}
    states = batch * kd * length * n
    if is_ref and states > args.ref_max_elems:
        row["note"] = f"ref skipped: {states:.2e} state elements > --ref-max-elems"
        return row
    if backend == "torch" and args.device == "cpu" and torch_path_gb(*shape) > args.max_gb:
        row["note"] = f"skipped: needs ~{torch_path_gb(*shape):.0f} GB > --max-gb"
        return row
    with torch.no_grad():
        row["fwd"] = time_fn(lambda: fn(*inputs), args.device, repeats, warmup)
    if is_ref and states > args.ref_max_elems_bwd:
        row["note"] = f"ref fwd+bwd skipped: {states:.2e} state elements > --ref-max-elems-bwd"
        return row
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    dy = torch.randn(batch, kd, length, device=args.device)

    def step() -> None:
        y = fn(*leaves)
        torch.autograd.grad(y, leaves, dy)

    row["fwdbwd"] = time_fn(step, args.device, repeats, warmup)
    return row


def shapes_from(args: argparse.Namespace) -> list[tuple[int, int, int, int]]:
    if args.quick:
        return [(2, 768, 3136, 1)]
    out = []
    for batch in args.batch:
        for ratio in args.ssm_ratio:
            for s in args.stages:
                for n in args.n:
                    out.append((batch, int(BASE_KD * ratio * 2 ** (s - 1)), STAGE_L[s - 1], n))
    return out


def default_backends(device: str) -> list[str]:
    names = available_backends(device)
    if device == "cpu" and "triton" in names:
        names.remove("triton")  # the interpreter is for correctness only (~1000x the floor)
    if device.startswith("cuda"):
        try:
            import mamba_ssm.ops.selective_scan_interface  # noqa: F401

            names.append("mamba_ssm")
        except Exception:
            pass
    return names


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:10.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="only the acceptance shape B=2, 4D=768, L=3136, N=1")
    p.add_argument("--batch", type=int, nargs="+", default=[2, 64])
    p.add_argument("--n", type=int, nargs="+", default=[1, 16], help="d_state values")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    p.add_argument(
        "--ssm-ratio", type=float, nargs="+", default=[1.0, 2.0], help="4D = ratio * 384 * 2^(s-1)"
    )
    p.add_argument("--backends", nargs="+", default=None, help="subset of ref torch triton mamba_ssm")
    p.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="dtype of u, delta, B, C"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-repeats", type=int, default=1)
    p.add_argument("--ref-max-elems", type=float, default=1e8, help="skip ref above this many B*4D*L*N")
    p.add_argument("--ref-max-elems-bwd", type=float, default=1e7, help="skip ref fwd+bwd above this")
    p.add_argument("--max-gb", type=float, default=8.0, help="skip CPU torch-path shapes needing more memory")
    p.add_argument("--peak-gbs", type=float, default=3350.0, help="device peak bandwidth (H100 SXM: 3350)")
    p.add_argument("--bandwidth", action="store_true", help="print GB/s columns on CPU too (always on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends or default_backends(args.device)
    if "ref" not in backends:
        backends = ["ref", *backends]  # ratios need the reference measured in this run
    gpu = args.device.startswith("cuda")
    show_bw = gpu or args.bandwidth
    in_bytes = {"fp32": 4, "bf16": 2, "fp16": 2}[args.dtype]
    dev_name = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# selective scan benchmark: torch {torch.__version__}, device {dev_name}, dtype {args.dtype}")
    print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    head = f"{'B':>3} {'4D':>5} {'L':>5} {'N':>3} {'backend':>9} {'fwd ms':>10} {'fwd x':>8} "
    head += f"{'fwd+bwd ms':>10} {'f+b x':>8}"
    if show_bw:
        head += f" {'fwd GB/s':>9} {'%pk':>5} {'f+b GB/s':>9} {'%pk':>5}"
    print(head + "   (x = speed-up vs ref in this run)")
    rows = []
    for shape in shapes_from(args):
        ref_row = None
        for backend in backends:
            try:
                row = bench_one(args, backend, shape)
            except Exception as exc:  # one failing backend must not hide the others' numbers
                row = {"backend": backend, "note": f"failed: {type(exc).__name__}: {exc}"[:160]}
            if backend == "ref":
                ref_row = row
            fwd, fb = row.get("fwd"), row.get("fwdbwd")
            rf = ref_row.get("fwd") if ref_row else None
            rfb = ref_row.get("fwdbwd") if ref_row else None
            sx_f = f"{rf / fwd:8.1f}" if fwd and rf else f"{'-':>8}"
            sx_fb = f"{rfb / fb:8.1f}" if fb and rfb else f"{'-':>8}"
            line = f"{shape[0]:>3} {shape[1]:>5} {shape[2]:>5} {shape[3]:>3} {backend:>9} "
            line += f"{fmt_ms(fwd):>10} {sx_f} {fmt_ms(fb):>10} {sx_fb}"
            if show_bw:
                bf, bfb = bytes_model(*shape, in_bytes)
                for t, nb in ((fwd, bf), (fb, bfb)):
                    line += (
                        f" {nb / t / 1e9:9.1f} {100 * nb / t / 1e9 / args.peak_gbs:5.1f}" if t else " " * 16
                    )
            if "note" in row:
                line += f"   [{row['note']}]"
            print(line, flush=True)
            rows.append({"shape": dict(zip(("B", "KD", "L", "N"), shape)), **row})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.json.parent, delete=False, suffix=".tmp") as fh:
            json.dump({"device": dev_name, "dtype": args.dtype, "rows": rows}, fh, indent=1)
        os.replace(fh.name, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
