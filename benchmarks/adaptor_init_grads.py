"""Gradient norms of Adaptor-T's phi_p, phi_c and gamma over the first steps on the shipped base.

Issue 16: with the identity init (gamma = 0, zero phi weights) the predictors get no gradient until
gamma grows. This prints, per optimizer step, the gradient norms (summed in quadrature over every
block) of phi_p.weight, phi_c.weight and gamma, and the mean |gamma|, for the inits and gamma
learning-rate multipliers given. Transfer setup of recipes/transfer.yaml (shipped Fashion-MNIST
VMamba, frozen, fresh head, MNIST, AdamW lr 3e-3, batch 32, clip 1.0, no schedule).

    python benchmarks/adaptor_init_grads.py --steps 20 --inits identity random_phi --gamma-lr-scales 1 10
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from adaptor_peft.adaptors import AdaptorT, MambaAdaptorConfig, inject_adaptors
from adaptor_peft.models import create_model
from adaptor_peft.train.recipes import resolve_path


def load_batches(batch: int, steps: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """MNIST images padded to 32x32, 3 channels, normalised with mean = std = 0.5."""
    data = np.load(resolve_path("asset:mnist_train.npz"))
    x = torch.from_numpy(data["x"]).float().div(255.0)
    x = F.pad(x, (2, 2, 2, 2)).unsqueeze(1).expand(-1, 3, -1, -1).sub(0.5).div(0.5)
    y = torch.from_numpy(data["y"])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[idx], y[idx]) for idx in order[: batch * steps].split(batch)]


def run(init: str, gamma_lr_scale: float, args: argparse.Namespace) -> list[tuple[float, ...]]:
    """Train args.steps steps; per step (|grad phi_p|, |grad phi_c|, |grad gamma|, mean |gamma|)."""
    torch.manual_seed(args.seed)
    model = create_model(str(resolve_path("asset:vmamba_fmnist_d32.safetensors")), num_classes=10)
    model.reset_classifier(10)
    inject_adaptors(model, MambaAdaptorConfig(init=init))
    adaptors = [m for m in model.modules() if isinstance(m, AdaptorT)]
    gammas = {id(m.gamma) for m in adaptors}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in gammas], "lr": args.lr},
        {"params": [p for p in trainable if id(p) in gammas], "lr": args.lr * gamma_lr_scale},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    rows = []
    model.train()
    for x, y in load_batches(args.batch_size, args.steps, args.seed):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

        def norm(get: object) -> float:
            grads = [get(m).grad for m in adaptors]  # type: ignore[operator]
            return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))

        rows.append(
            (
                norm(lambda m: m.phi_p.weight),
                norm(lambda m: m.phi_c.weight),
                norm(lambda m: m.gamma),
                float(torch.cat([m.gamma.detach().abs().flatten() for m in adaptors]).mean()),
            )
        )
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
    return rows


def main() -> None:
    """Print one table per (init, gamma lr multiplier)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inits", nargs="+", default=["identity", "random_phi"])
    parser.add_argument("--gamma-lr-scales", nargs="+", type=float, default=[1.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for init in args.inits:
        for scale in args.gamma_lr_scales:
            print(f"\ninit={init} gamma_lr_scale={scale:g} lr={args.lr:g} batch={args.batch_size}")
            print(f"{'step':>4} {'|g phi_p|':>10} {'|g phi_c|':>10} {'|g gamma|':>10} {'mean|gamma|':>11}")
            for step, (gp, gc, gg, ga) in enumerate(run(init, scale, args), start=1):
                print(f"{step:>4} {gp:10.3e} {gc:10.3e} {gg:10.3e} {ga:11.3e}")


if __name__ == "__main__":
    main()
