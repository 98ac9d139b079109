"""Whole-model training step and forward: plain full fine-tuning vs Mamba-Adaptor vs LoRA, time and memory.

Rows, each in fp32 and under bf16 autocast (weights stay fp32):
  full FT step   every parameter trains: forward, cross-entropy, backward, AdamW step
  adaptor step   default Mamba-Adaptor (T+S), frozen base: the same step over adaptors + head
  LoRA r=8 step  peft LoRA r=8 on the default targets, frozen base
  plain / adaptor / LoRA fwd   eval-mode forward without grad
Each is the median of --repeats timed calls after --warmup untimed ones (synchronised on CUDA), with the
peak allocated memory of the timed calls (CUDA only: torch.cuda.max_memory_allocated, weights included).
Ratios against the plain model are measured in the same run; the acceptance lines of issue 17 (adaptor
step <= 1.25x the full FT step, adaptor forward <= 1.15x the plain forward) are checked at the end.
Weights are random (speed does not depend on them).

    python benchmarks/model_step.py --device cuda                 # vmamba_tiny_s1l8, batch 64, 224x224
    .venv/bin/python benchmarks/model_step.py --tiny              # CPU dry run: test_vmamba, batch 2, 64x64
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.kernels.dispatch import resolve_backend
from adaptor_peft.models import create_model
from adaptor_peft.train.methods.baselines import LORA_DEFAULTS, apply_lora

STEP_LIMIT, FWD_LIMIT = 1.25, 1.15  # issue 17 acceptance: adaptor / plain


def build(variant: str, name: str, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The seeded model: plain (all trainable), adaptor (default T+S, frozen base) or lora (r=8)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes)
    if variant == "adaptor":
        inject_adaptors(model, MambaAdaptorConfig())
    elif variant == "lora":
        apply_lora(model, r=8, alpha=16.0, targets=LORA_DEFAULTS["targets"])
    return model.to(device)


def make_call(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool, precision: str
) -> Callable[[], None]:
    """One training step (forward, loss, backward, AdamW step) or one no-grad eval forward."""
    autocast = (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    if not train:
        model.eval()

        def forward() -> None:
            with torch.no_grad(), autocast:
                model(x)

        return forward
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with autocast:
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(
    call: Callable[[], None], device: torch.device, repeats: int, warmup: int
) -> tuple[float, float | None]:
    """Median seconds of ``repeats`` calls after ``warmup`` ones, and their peak allocated GiB (CUDA)."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        call()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return statistics.median(times), peak


ROWS = (  # (label, variant, train)
    ("full FT step", "plain", True),
    ("adaptor step", "adaptor", True),
    ("LoRA r=8 step", "lora", True),
    ("plain fwd", "plain", False),
    ("adaptor fwd", "adaptor", False),
    ("LoRA r=8 fwd", "lora", False),
)


def run(args: argparse.Namespace) -> list[dict]:
    """Every row in every precision; prints the table as it goes."""
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=gen).to(device)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=gen).to(device)
    print(f"{'precision':<9} {'row':<14} {'ms':>9} {'x plain':>8} {'peak GiB':>9} {'trainable':>11}")
    rows = []
    for precision in args.precisions:
        base: dict[bool, float] = {}
        for label, variant, train in ROWS:
            model = build(variant, args.model, args.num_classes, device)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            try:
                seconds, peak = measure(
                    make_call(model, x, y, train, precision), device, args.repeats, args.warmup
                )
                note = ""
            except torch.OutOfMemoryError:
                seconds, peak, note = None, None, "out of memory"
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if variant == "plain" and seconds:
                base[train] = seconds
            ratio = seconds / base[train] if seconds and train in base else None
            rows.append(
                dict(precision=precision, row=label, variant=variant, train=train, seconds=seconds,
                     ratio=ratio, peak_gib=peak, trainable=trainable, note=note)
            )  # fmt: skip
            ms = f"{1e3 * seconds:9.2f}" if seconds else f"{'-':>9}"
            rx = f"{ratio:7.3f}x" if ratio else f"{'-':>8}"
            pk = f"{peak:9.2f}" if peak is not None else f"{'-':>9}"
            print(f"{precision:<9} {label:<14} {ms} {rx} {pk} {trainable:11,d} {note}", flush=True)
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    """The acceptance lines: adaptor step and forward against the plain model, per precision."""
    out = []
    for precision in dict.fromkeys(r["precision"] for r in rows):
        for variant, train, limit, what in (
            ("adaptor", True, STEP_LIMIT, "step"),
            ("adaptor", False, FWD_LIMIT, "fwd"),
        ):
            r = next(
                r for r in rows if (r["precision"], r["variant"], r["train"]) == (precision, variant, train)
            )
            ok = r["ratio"] is not None and r["ratio"] <= limit
            shown = f"{r['ratio']:.3f}x" if r["ratio"] else "-"
            out.append(
                f"{precision}: adaptor {what} {shown} of plain (target <= {limit}x): "
                + ("PASS" if ok else "FAIL")
            )
    return out


def main() -> None:
    """Parse the options, print the table and the acceptance lines, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vmamba_tiny_s1l8")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (Triton compiles there)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: default)")
    parser.add_argument("--tiny", action="store_true", help="dry run: test_vmamba, batch 2, 64x64, 2 repeats")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.batch, args.img_size, args.repeats, args.warmup = "test_vmamba", 2, 64, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    backend = resolve_backend(None, torch.empty(0, device=device))  # what the scan and the read-out run
    print(f"# model_step: torch {torch.__version__}, device {where}, kernel backend {backend}")
    print(f"# {args.model}, batch {args.batch}, {args.img_size}x{args.img_size}, {args.num_classes} classes, "
          f"median of {args.repeats} after {args.warmup} warm-up calls")  # fmt: skip
    rows = run(args)
    for line in verdicts(rows):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.json.parent, delete=False, suffix=".tmp") as fh:
            json.dump({"device": where, "model": args.model, "batch": args.batch, "rows": rows}, fh, indent=1)
        os.replace(fh.name, args.json)


if __name__ == "__main__":
    main()
