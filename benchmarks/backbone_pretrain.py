"""From-scratch pretraining at CPU scale: a b1-like Mamba-Adaptor vs the same-width VMamba on Fashion-MNIST.

Both models use Mamba-Adaptor-b1's layout (VMamba-T[s1l8] blocks, depths 2-2-8-2 by default) at a small
width; the only difference is Adaptor-T + Adaptor-S in every block (b1's per-direction phi, random
init). Same data order, optimizer, schedule and step budget for both; accuracy on a held-out test subset,
over several seeds.

Data: Fashion-MNIST from Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist, IDX .gz),
28x28 padded to 32x32, gray repeated to 3 channels. Example:

    .venv/bin/python benchmarks/backbone_pretrain.py --steps 300 --seeds 0 1 2 --out bench.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adaptor_peft.flops import count_flops
from adaptor_peft.models.mamba_adaptor import MambaAdaptorNet, mamba_adaptor_variant_args
from adaptor_peft.models.vmamba import VSSM

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (ubyte images or labels)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def stratified_first(labels: np.ndarray, n: int) -> np.ndarray:
    """The first n/10 indices of each class (a fixed, balanced subset)."""
    per = n // 10
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per] for c in range(10)]))


def load_fashion_mnist(data_dir: Path, train_size: int, test_size: int) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) as normalised (N, 3, 32, 32) float tensors and int64 labels."""
    if not (data_dir / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not in {data_dir}: apt-get install dataset-fashion-mnist, or pass --data-dir"
        )
    out = []
    for split, n in (("train", train_size), ("t10k", test_size)):
        x = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
        y = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
        idx = stratified_first(y, n)
        xt = torch.from_numpy(x[idx].copy()).float().div(255)
        xt = F.pad(xt, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1)
        out += [((xt - 0.286) / 0.353).contiguous(), torch.from_numpy(y[idx].copy())]
    return tuple(out)


def build(kind: str, dims: int, depths: list[int], heads: int, points: int) -> torch.nn.Module:
    """kind "adaptor": b1 layout + adaptors at this width; "vmamba": the same without adaptors."""
    args = mamba_adaptor_variant_args("mamba_adaptor_b1")
    args.update(dims=dims, depths=depths, num_classes=10, drop_path_rate=0.0)
    adaptor = dict(args.pop("adaptor"), num_heads=heads, num_points=points)
    if kind == "adaptor":
        return MambaAdaptorNet(adaptor=adaptor, **args)
    return VSSM(**args)


def train_eval(kind: str, seed: int, data: tuple[torch.Tensor, ...], a: argparse.Namespace) -> dict:
    """Train one model for a.steps steps; return final test accuracy, last train loss and wall time."""
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = build(kind, a.dims, a.depths, a.heads, a.points)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    warmup = max(1, a.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps))
    )
    gen = torch.Generator().manual_seed(seed)  # same data order for both models at a given seed
    order = torch.cat(
        [torch.randperm(len(x_tr), generator=gen) for _ in range(a.steps * a.batch_size // len(x_tr) + 1)]
    )
    losses = []
    start = time.time()
    model.train()
    for step in range(a.steps):
        idx = order[step * a.batch_size : (step + 1) * a.batch_size]
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_time = time.time() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x_te), 256):
            correct += (model(x_te[i : i + 256]).argmax(1) == y_te[i : i + 256]).sum().item()
    report = count_flops(model, img_size=32)
    return dict(
        model=kind,
        seed=seed,
        test_acc=correct / len(x_te),
        final_train_loss=float(np.mean(losses[-20:])),
        train_seconds=round(train_time, 1),
        params=report.params,
        mflops_32px=round(report.flops / 1e6, 2),
    )


def main() -> None:
    """Run every (model, seed) pair and print / save the accuracies."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--dims", type=int, default=16, help="stage-0 width (b1 itself is 48)")
    p.add_argument("--depths", type=int, nargs=4, default=[2, 2, 8, 2])
    p.add_argument("--heads", type=int, default=2, help="Adaptor-T heads S (b1: 4 at width 48)")
    p.add_argument("--points", type=int, default=4, help="Adaptor-T points K (b1: 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=FMNIST_DIR)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = load_fashion_mnist(a.data_dir, a.train_size, a.test_size)
    results = []
    for seed in a.seeds:
        for kind in ("vmamba", "adaptor"):
            r = train_eval(kind, seed, data, a)
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\nFashion-MNIST {a.train_size}/{a.test_size}, {a.steps} steps x {a.batch_size}, dims {a.dims}, "
          f"depths {a.depths}, adaptor S={a.heads} K={a.points}")  # fmt: skip
    for kind in ("vmamba", "adaptor"):
        accs = [r["test_acc"] for r in results if r["model"] == kind]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        first = next(r for r in results if r["model"] == kind)
        print(
            f"{kind:<8} acc {100 * statistics.mean(accs):.2f} +- {100 * sd:.2f}  "
            f"(seeds: {', '.join(f'{100 * x:.1f}' for x in accs)})  params {first['params']:,}  "
            f"{first['mflops_32px']} MFLOPs at 32x32"
        )
    if a.out is not None:
        payload = json.dumps(dict(args={k: str(v) for k, v in vars(a).items()}, results=results), indent=1)
        fd, tmp = tempfile.mkstemp(dir=a.out.parent if str(a.out.parent) else ".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(payload)
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
