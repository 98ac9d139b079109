"""What Adaptor-T contributes to a trained model: its eval accuracy with and without the T read-out.

For each finished run directory of an adaptor method (e.g. ``runs/transfer/v2/select/mnist/...``, whose
eval data is the validation split), evaluates the trained model as saved, then again with every
Adaptor-T gamma set to 0 (which removes Adaptor-T exactly: its output is gamma * read-out), and prints
both top-1, the change of the logits and the largest |gamma|.

    python benchmarks/adaptor_t_ablation.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's adaptor_peft

from adaptor_peft.train.inference import evaluate_dataset, load_trained  # noqa: E402


def _logits(trained, data: str) -> torch.Tensor:  # noqa: ANN001
    """All eval logits in order (the same preprocessing as evaluate_dataset)."""
    from torch.utils.data import DataLoader

    from adaptor_peft.train.data import Preprocess, TransformedDataset, open_source

    source = open_source(data, "test")
    loader = DataLoader(TransformedDataset(source, Preprocess(trained.recipe, train=False)), batch_size=250)
    with torch.no_grad():
        return torch.cat([trained.model(x) for x, _ in loader])


def ablate(run_dir: Path) -> dict[str, float]:
    """Top-1 with and without Adaptor-T, max |logit change| and max |gamma| of one run."""
    trained = load_trained(run_dir)
    data = trained.recipe.eval_data
    gammas = [m.gamma for m in trained.model.modules() if hasattr(m, "gamma") and hasattr(m, "phi_p")]
    if not gammas:
        raise SystemExit(f"{run_dir}: no Adaptor-T in this run's model (method {trained.recipe.method})")
    with_t = evaluate_dataset(trained, data)["top1"]
    before = _logits(trained, data)
    gmax = max(float(g.detach().abs().max()) for g in gammas)
    with torch.no_grad():
        for g in gammas:
            g.zero_()
    without_t = evaluate_dataset(trained, data)["top1"]
    after = _logits(trained, data)
    return {
        "top1_with_t": with_t,
        "top1_without_t": without_t,
        "max_logit_change": float((before - after).abs().max()),
        "logit_scale": float(before.abs().max()),
        "max_abs_gamma": gmax,
    }


def main() -> None:
    """Print one line per run directory."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for run_dir in args.run_dirs:
        r = ablate(run_dir)
        print(f"{run_dir}: top-1 {r['top1_with_t']:.2f} with T, {r['top1_without_t']:.2f} with gamma = 0; "
              f"max |logit change| {r['max_logit_change']:.3g} (logit scale {r['logit_scale']:.3g}); "
              f"max |gamma| {r['max_abs_gamma']:.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
