"""What torch.compile gains: eager vs compiled time of the plain and the Mamba-Adaptor-injected model.

For each model (the shipped Fashion-MNIST VMamba at 32x32, the test VMamba at 64x64, or any model name),
each variant (plain: every parameter trains; injected: default T+S adaptors, frozen base) and each pass
(forward in eval mode without grad; forward+backward in train mode, grads of the trainable tensors), the
eager and the compiled module run in alternating rounds after a warm-up (the compile itself is timed
apart), and the table gives the median seconds of each and their ratio (eager / compiled: above 1, compile
is faster), plus the paired ratio (median over rounds of eager / compiled of the same round, which cancels
slow drifts of the machine's load), the largest output difference, and how many graphs dynamo made and
how many graph breaks split them (on CPU the torch scan and Adaptor-T read-out are
``torch.compiler.disable``-d, kernels/scan_torch.py and adaptor_t_torch.py: every SS2D breaks the graph,
which bounds what compile can gain to the code between them).

    .venv/bin/python benchmarks/compile_gain.py                       # CPU, 1 thread, batch 8, 10 rounds
    .venv/bin/python benchmarks/compile_gain.py --models test --repeats 3 --batch 2   # quick
    python benchmarks/compile_gain.py --device cuda --models vmamba_tiny_s1l8 --img-size 224 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
from adaptor_peft.models import create_model
from adaptor_peft.shipped import shipped_base_path

#: --models shorthands: (model name or checkpoint path, image size)
MODELS = {"fmnist": (None, 32), "test": ("test_vmamba", 64)}


def build(name: str, injected: bool) -> torch.nn.Module:
    """The model, seeded; with the default adaptors (frozen base) when ``injected``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    if injected:
        inject_adaptors(model, MambaAdaptorConfig(init="random"))
    return model


def step_fn(
    fn: Callable, model: torch.nn.Module, x: torch.Tensor, backward: bool
) -> Callable[[], torch.Tensor]:
    """One forward (eval, no grad) or forward+backward (train, grads of the trainable tensors) of ``fn``."""
    params = [p for p in model.parameters() if p.requires_grad]

    def forward() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return fn(x)

    def train_step() -> torch.Tensor:
        model.train()
        out = fn(x)
        torch.autograd.grad(out.float().logsumexp(-1).mean(), params)
        return out.detach()

    return train_step if backward else forward


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """Wall seconds of one call (synchronised on CUDA) and its output."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def measure(
    name: str, img: int, injected: bool, backward: bool, args: argparse.Namespace
) -> dict[str, float]:
    """Compile seconds, eager and compiled median seconds, their ratio, paired ratio, max output diff."""
    device = torch.device(args.device)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    model = build(name, injected).to(device)
    x = torch.randn(args.batch, 3, img, img, generator=torch.Generator().manual_seed(1)).to(device)
    compiled = torch.compile(model, dynamic=False, mode=args.mode)
    eager_step = step_fn(model, model, x, backward)
    compiled_step = step_fn(compiled, model, x, backward)
    compile_s, out_c = timed(compiled_step, device)  # the first call compiles
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    _, out_e = timed(eager_step, device)
    for _ in range(args.warmup):
        eager_step(), compiled_step()
    eager, comp = [], []
    for _ in range(args.repeats):  # alternate, so a load change hits both
        eager.append(timed(eager_step, device)[0])
        comp.append(timed(compiled_step, device)[0])
    return {
        "compile_s": compile_s,
        "eager_s": statistics.median(eager),
        "compiled_s": statistics.median(comp),
        "ratio": statistics.median(eager) / statistics.median(comp),
        "paired": statistics.median(e / c for e, c in zip(eager, comp)),
        "max_diff": (out_c.float() - out_e.float()).abs().max().item(),
        "graphs": graphs,
        "breaks": breaks,
    }


def main() -> None:
    """Print the eager/compiled table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["fmnist", "test"], help="fmnist, test or model names")
    parser.add_argument("--img-size", type=int, default=0, help="image size for named models (0: 224)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after the compile")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default, reduce-overhead, ...)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, device {where}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"median of {args.repeats} alternating rounds after {args.warmup} warm-up rounds, mode {args.mode}")
    header = (
        "model",
        "variant",
        "pass",
        "compile s",
        "eager ms",
        "compiled ms",
        "eager/comp",
        "paired",
        "max diff",
        "graphs/breaks",
    )
    print("{:<18} {:<9} {:<8} {:>9} {:>9} {:>11} {:>10} {:>7} {:>9} {:>13}".format(*header))
    for key in args.models:
        name, img = MODELS.get(key, (key, args.img_size or 224))
        if name is None:
            name = str(shipped_base_path())
        for injected in (False, True):
            for backward in (False, True):
                r = measure(name, img, injected, backward, args)
                print(
                    f"{key + f' {img}px':<18} {'injected' if injected else 'plain':<9} "
                    f"{'fwd+bwd' if backward else 'fwd':<8} {r['compile_s']:9.1f} {1e3 * r['eager_s']:9.2f} "
                    f"{1e3 * r['compiled_s']:11.2f} {r['ratio']:9.2f}x {r['paired']:6.2f}x "
                    f"{r['max_diff']:9.1e} {r['graphs']:>6}/{r['breaks']:<6}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
