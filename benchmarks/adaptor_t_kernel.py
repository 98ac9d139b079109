"""Adaptor-T read-out micro-benchmark (CUDA only): Triton kernel vs the torch path, same run, same inputs.

Shapes are the four VMamba-T stages at batch 64 (G = 4 directions; D = 192/384/768/1536 channels per
direction with L = 3136/784/196/49 tokens; N = 1; S = 2 heads; K = 4 points). Offsets and weights
are point-major buffers viewed as (B, L, G, S, K), as the Adaptor-T module produces them; h is
channel-major (what the Triton scan returns). For every backend the table prints the median
forward and forward+backward time (torch.cuda.Event, after warm-up), the speed-up against the first
row that ran (the torch path; columns "x"), the max |difference| of the output to that row, and
the achieved bandwidth under a byte model that counts each operand once:
  fwd: read h, offsets, weights, C, gamma; write out
  bwd: read h, offsets, weights, C, gamma, dout; write dh, doffsets, dweights, dC (+ the partials)
A failing backend prints an error row and the run goes on.

Examples:
  python benchmarks/adaptor_t_kernel.py --quick
  python benchmarks/adaptor_t_kernel.py --tiles 8,64,4 4,64,4 16,32,4   # block_d,block_l,num_warps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import traceback
from collections.abc import Callable

import torch

STAGES = ((192, 3136), (384, 784), (768, 196), (1536, 49))  # (D per direction, L)
GROUPS, HEADS, POINTS = 4, 2, 4


def make_inputs(batch: int, d_inner: int, length: int, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Module-like operands on CUDA: relative offsets within +-8 tokens, softmax weights, random h/C."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device="cuda")

    kd = GROUPS * d_inner
    offsets = rnd(batch, GROUPS, HEADS, POINTS, length) * 4.0  # (B, G, S, K, L): point-major storage
    weights = torch.softmax(rnd(batch, GROUPS, HEADS, POINTS, length), dim=3)
    return {
        "h": rnd(batch, kd, n, length),
        "offsets": offsets,
        "weights": weights,
        "C": rnd(batch, GROUPS, n, length),
        "gamma": rnd(kd),
    }


def triton_call(tiles: dict[str, int]) -> Callable[..., torch.Tensor]:
    """The Triton kernel on the (B, L, G, S, K) views of the point-major buffers."""
    from adaptor_peft.kernels.adaptor_t_triton import adaptor_t_readout_triton

    def call(h, offsets, weights, C, gamma):  # noqa: ANN001, ANN202
        view = (0, 4, 1, 2, 3)
        return adaptor_t_readout_triton(h, offsets.permute(*view), weights.permute(*view), C, gamma, **tiles)

    return call


def torch_call() -> Callable[..., torch.Tensor]:
    """The torch path (`adaptor_t_readout_torch`, embedding_bag) on (B, G*S, K, L) views, h channel-major."""
    from adaptor_peft.kernels.adaptor_t_torch import adaptor_t_readout_torch

    def call(h, offsets, weights, C, gamma):  # noqa: ANN001, ANN202
        b, g, s, k, length = offsets.shape
        return adaptor_t_readout_torch(
            h, offsets.reshape(b, g * s, k, length), weights.reshape(b, g * s, k, length), C, gamma
        )

    return call


def time_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median milliseconds of fn() with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def byte_model(x: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(forward bytes, forward+backward bytes) with every operand read or written once."""
    size = {k: v.numel() * v.element_size() for k, v in x.items()}
    out = size["h"] // x["h"].shape[2]  # (B, G*D, L) fp32
    reads = sum(size.values())
    fwd = reads + out
    bwd = reads + out + size["h"] + size["offsets"] + size["weights"] + size["C"]  # dout; dh, doff, dw, dC
    return fwd, fwd + bwd


def bench_one(
    name: str,
    call: Callable[..., torch.Tensor],
    x: dict[str, torch.Tensor],
    args: argparse.Namespace,
    ref: torch.Tensor | None,
) -> dict[str, object] | None:
    """Forward and forward+backward time of one backend; None (and an error row) when it fails."""
    try:
        with torch.no_grad():
            out = call(**x)
        err = float((out - ref).abs().max()) if ref is not None else 0.0
        fwd = time_ms(lambda: call(**x), args.warmup, args.repeats)
        leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
        dout = torch.randn_like(out)

        def step() -> None:
            y = call(**leaves)
            torch.autograd.grad(y, list(leaves.values()), dout)

        fwd_bwd = time_ms(step, args.warmup, args.repeats)
        return {"fwd": fwd, "fwd_bwd": fwd_bwd, "err": err, "out": out}
    except Exception as exc:  # keep going: one failing backend must not hide the others
        print(f"  {name:<22} ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        if args.verbose:
            traceback.print_exc()
        torch.cuda.empty_cache()
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the table; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="first stage only")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n", type=int, default=1, help="d_state")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--tiles", nargs="*", default=[], help="extra Triton tile variants block_d,block_l,num_warps"
    )
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failing backends")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("adaptor_t_kernel.py: needs a CUDA GPU (the Triton kernel is timed on the device); exiting.")
        return 0
    variants: list[tuple[str, Callable[..., torch.Tensor]]] = [("torch (embedding_bag)", torch_call())]
    try:
        variants.append(("triton", triton_call({})))
        for spec in args.tiles:
            d, l, w = (int(v) for v in spec.split(","))
            variants.append(
                (f"triton d{d} l{l} w{w}", triton_call({"block_d": d, "block_l": l, "num_warps": w}))
            )
    except Exception as exc:
        print(f"triton import failed: {type(exc).__name__}: {exc}")
    print(
        f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  batch {args.batch}  N {args.n}"
    )
    stages = STAGES[:1] if args.quick else STAGES
    for d_inner, length in stages:
        torch.cuda.empty_cache()
        x = make_inputs(args.batch, d_inner, length, args.n)
        fwd_bytes, total_bytes = byte_model(x)
        print(f"\nB={args.batch} G={GROUPS} D={d_inner} L={length} N={args.n} S={HEADS} K={POINTS}  "
              f"(fwd {fwd_bytes / 1e6:.0f} MB, fwd+bwd {total_bytes / 1e6:.0f} MB)")  # fmt: skip
        print(f"  {'backend':<22} {'fwd ms':>8} {'fwd GB/s':>9} {'f+b ms':>8} {'f+b GB/s':>9} "
              f"{'fwd x':>6} {'f+b x':>6} {'max|err|':>9}")  # fmt: skip
        base = None
        ref = None
        for name, call in variants:
            r = bench_one(name, call, x, args, ref)
            if r is None:
                continue
            if base is None:
                base, ref = r, r["out"]
            print(f"  {name:<22} {r['fwd']:8.3f} {fwd_bytes / r['fwd'] / 1e6:9.0f} {r['fwd_bwd']:8.3f} "
                  f"{total_bytes / r['fwd_bwd'] / 1e6:9.0f} {base['fwd'] / r['fwd']:6.2f} "
                  f"{base['fwd_bwd'] / r['fwd_bwd']:6.2f} {r['err']:9.2e}")  # fmt: skip
            del r
        del x, base, ref
    return 0


if __name__ == "__main__":
    sys.exit(main())
