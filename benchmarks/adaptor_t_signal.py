"""How large Adaptor-T's read-out is next to the scan output it corrects, per SS2D block.

With every adaptor parameter random and gamma = 1 (init="random"), each block reports
||C . m|| / ||y||: the size of the memory read-out relative to the scan output y = C . h + D . u on
real images. A ratio far below 1 means gamma must grow by that factor before Adaptor-T can change
anything (the identity init starts gamma at 0 and AdamW moves it by about lr per step).

    python benchmarks/adaptor_t_signal.py [--checkpoint FILE] [--images N]

Default: the shipped Fashion-MNIST base and the shipped MNIST test images, padded 28 -> 32 and
normalised as recipes/quickstart.yaml does. ``--img-size 128`` resizes them (bilinear) instead, for the
base of recipes/finetune_fmnist_128.yaml, whose stage 1 scans 1,024 tokens.
"""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np
import torch

import adaptor_peft as ap
from adaptor_peft.adaptors.selection import find_ss2d

ASSETS = resources.files("adaptor_peft") / "assets"


def main() -> None:
    """Print the per-block ratio ||C.m|| / ||y|| and the mean |h| of the scan states."""
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap_.add_argument("--checkpoint", default=str(ASSETS / "vmamba_fmnist_d32.safetensors"))
    ap_.add_argument("--images", type=int, default=64)
    ap_.add_argument("--img-size", type=int, default=32, help="32: pad 28 -> 32; other sizes: resize")
    args = ap_.parse_args()
    torch.manual_seed(0)
    model = ap.create_model(args.checkpoint).eval()
    x = torch.tensor(np.load(str(ASSETS / "mnist_test.npz"))["x"][: args.images]).float()[:, None] / 255.0
    if args.img_size == 32:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    else:
        size = (args.img_size, args.img_size)
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1).sub(0.5).div(0.5)
    model = ap.inject_adaptors(model, ap.MambaAdaptorConfig(init="random"))
    rows = []
    for name, op, stage in find_ss2d(model):
        t = op.adaptor_t
        inner = t.forward

        def observed(hs, Cs, H, W, ys=None, inner=inner, name=name, stage=stage):  # noqa: ANN001, ANN202
            corr = inner(hs, Cs, H, W)
            rows.append((name, stage, H * W, (corr.norm() / ys.norm()).item(), hs.abs().mean().item()))
            return ys + corr

        t.forward = observed
    with torch.no_grad():
        model(x)
    print(f"{args.checkpoint}: {args.images} images, init=random (gamma = 1)")
    print(f"{'block':22s} stage     L  ||C.m||/||y||   mean|h|")
    for name, stage, length, ratio, h in rows:
        print(f"{name:22s} {stage:5d} {length:5d}  {ratio:12.2e}  {h:8.2e}")


if __name__ == "__main__":
    main()
