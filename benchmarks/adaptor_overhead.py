"""Adaptor overhead: forward and forward+backward time of a VMamba model, plain vs with Mamba-Adaptor.

All rows are measured in the same run on the same randomly initialised model (weights do not
matter for speed), so the ratios are comparable; the budget table (trainable parameters as % of
the base without its head) is computed on the meta device.

    .venv/bin/python benchmarks/adaptor_overhead.py                      # vmamba_tiny_s1l8, batch 8, 224
    .venv/bin/python benchmarks/adaptor_overhead.py --batch 2 --repeats 2 --img-size 112
    python benchmarks/adaptor_overhead.py --device cuda --batch 64 --repeats 5   # GPU (Triton scan)

On CUDA the "cpu" columns hold synchronised wall times (host CPU time says nothing about the GPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors, remove_adaptors, trainable_report
from adaptor_peft.models import create_model

ROWS = {
    "T+S (default)": {},
    "T only": {"spatial": False},
    "S only": {"temporal": False},
}

BUDGETS = {
    "default (T+S, K=4, S=2, shared)": {},
    "T+S, K=4, S=2, per-direction": {"share_across_directions": False},
    "T+S, K=2, S=2, shared": {"num_points": 2},
    "T+S, K=8, S=2, shared": {"num_points": 8},
    "T+S, K=4, S=4, shared": {"num_heads": 4},
    "T+S, K=4, S=1, shared": {"num_heads": 1},
    "T+S, K=4, S=2, static": {"selection": "static"},
    "T+S, K=4, S=4, per-direction": {"num_heads": 4, "share_across_directions": False},
    "T only (K=4, S=2, shared)": {"spatial": False},
    "S only (split 3x3, d=1,2,3)": {"temporal": False},
    "S only (sum 3x3, d=1,2,3)": {"temporal": False, "aggregation": "sum"},
    "default + norms": {"train_norms": True},
}


def _timed(fn, device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":  # kernels run asynchronously: time from one sync to the next
        torch.cuda.synchronize(device)
        wall = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - wall
        return elapsed, elapsed
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def make_step(model: torch.nn.Module, x: torch.Tensor, backward: bool):
    """One forward (no grad, eval) or one forward+backward (train mode, grads of the trainable tensors)."""
    if not backward:
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(x)

        return step
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        loss = model(x).float().logsumexp(-1).mean()
        torch.autograd.grad(loss, params)

    return step


def measure_interleaved(
    model: torch.nn.Module, x: torch.Tensor, repeats: int, backward: bool
) -> dict[str, tuple[float, float, float, float, float]]:
    """Variant -> (best wall, median wall, best CPU, median CPU, paired CPU ratio); rounds alternate.

    Interleaving (plain, T+S, T, S, plain, T+S, ...) spreads any load from other processes over
    every variant; the process CPU time is the least noisy figure on a loaded machine, and the
    paired ratio (median over rounds of variant CPU / plain CPU of the same round) also cancels
    slow drifts of the load.
    With a backward pass, "plain" trains every parameter (full fine-tuning) and "plain, head only"
    freezes the base like the adapted rows do (their backward skips the base weight gradients).
    """
    labels = ["plain", *(["plain, head only"] if backward else []), *ROWS]
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in labels}
    head = set(model.get_classifier().parameters())
    for round_ in range(repeats + 1):  # round 0 is the warm-up
        for label in samples:
            if label in ROWS:
                inject_adaptors(model, MambaAdaptorConfig(**{"train_norms": False, **ROWS[label]}))
            elif label == "plain, head only":  # the frozen-base baseline for the backward pass
                for p in model.parameters():
                    p.requires_grad_(p in head)
            wall, cpu = _timed(make_step(model, x, backward), x.device)
            if label in ROWS:
                remove_adaptors(model)
            for p in model.parameters():
                p.requires_grad_(True)
            if round_:
                samples[label].append((wall, cpu))
    return {
        k: (
            min(w for w, _ in v),
            statistics.median(w for w, _ in v),
            min(c for _, c in v),
            statistics.median(c for _, c in v),
            statistics.median(c / p for (_, c), (_, p) in zip(v, samples["plain"])),
        )
        for k, v in samples.items()
    }


def budget_table(name: str, num_classes: int) -> list[tuple[str, int, float, float]]:
    """(config, trainable params w/o head, % of base w/o head, % with head) per BUDGETS entry."""
    rows = []
    for label, overrides in BUDGETS.items():
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes)
        inject_adaptors(model, MambaAdaptorConfig(**{"train_norms": False, **overrides}))
        rep = trainable_report(model)
        rows.append((label, rep.trainable_params_no_head, rep.trainable_pct_no_head, rep.trainable_pct))
    return rows


def main() -> None:
    """Print the timing ratios and the budget table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vmamba_tiny_s1l8")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-backward", action="store_true", help="forward rows only")
    parser.add_argument("--budgets-only", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the model then runs the Triton scan)")
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.threads:
        torch.set_num_threads(args.threads)
    where_run = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {where_run}")
    if not args.budgets_only:
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=args.num_classes).to(device)
        x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
        size = f"{args.img_size}x{args.img_size}"
        print(f"\n{args.model}, batch {args.batch}, {size}, {args.repeats} interleaved rounds")
        header = ("variant", "pass", "best s", "median s", "cpu best", "cpu med", "ratio wall", "ratio cpu")
        print("{:<16} {:<8} {:>7} {:>9} {:>8} {:>8} {:>11} {:>10}".format(*header))
        print("(ratio wall: best over best; ratio cpu: median over rounds of CPU / plain CPU, same round)")
        for backward in [False] if args.no_backward else [False, True]:
            res = measure_interleaved(model, x, args.repeats, backward)
            for label, (best, med, cpu, cpu_med, paired) in res.items():
                kind = "fwd+bwd" if backward else "fwd"
                print(
                    f"{label:<16} {kind:<8} {best:7.3f} {med:9.3f} {cpu:8.3f} {cpu_med:8.3f} "
                    f"{best / res['plain'][0]:10.3f}x {paired:9.3f}x"
                )

    where = f"{args.model} (num_classes={args.num_classes}, base counted without the head)"
    print(f"\ntrainable budgets on {where}")
    print(f"{'config':<36} {'params':>9} {'% w/o head':>11} {'% with head':>12}")
    for label, params, pct, pct_head in budget_table(args.model, args.num_classes):
        print(f"{label:<36} {params:9,d} {pct:10.3f}% {pct_head:11.3f}%")


if __name__ == "__main__":
    main()
