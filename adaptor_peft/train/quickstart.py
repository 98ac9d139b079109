"""``adaptor-peft quickstart``: Mamba-Adaptor on the shipped MNIST subset from the shipped VMamba base."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..shipped import ASSETS_DIR, SHIPPED_BASE
from .recipes import load_recipe
from .trainer import TrainResult, train

QUICKSTART_RECIPE = ASSETS_DIR / "quickstart.yaml"
DEFAULT_CHECKPOINT = ASSETS_DIR / SHIPPED_BASE


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def recipe_model(overrides: Sequence[str]) -> str:
    """The model the quickstart will use (its recipe's, unless overridden)."""
    for text in overrides:
        if text.startswith("model="):
            return text.partition("=")[2]
    return str(load_recipe(QUICKSTART_RECIPE).model)


def run_quickstart(
    output_dir: str | Path = "runs/quickstart",
    overrides: Sequence[str] = (),
    compare_linear_probe: bool = False,
    echo: Callable[[str], object] = print,
) -> dict[str, TrainResult]:
    """Fine-tune Mamba-Adaptor on the MNIST subset (base frozen) and print before/after accuracy."""
    t0 = time.time()
    if str(recipe_model(overrides)).endswith(DEFAULT_CHECKPOINT.name) and not DEFAULT_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the shipped base checkpoint is missing: {DEFAULT_CHECKPOINT}")
    recipe = load_recipe(QUICKSTART_RECIPE, [f"output_dir={output_dir}", *overrides])
    echo("adaptor-peft quickstart: Mamba-Adaptor transfer Fashion-MNIST -> MNIST")
    echo(f"  base model : {DEFAULT_CHECKPOINT.name} (VMamba v05_noz, pretrained on Fashion-MNIST, frozen)")
    echo(f"  data       : {recipe.train_data} / {recipe.eval_data}, {recipe.img_size}x{recipe.img_size}")
    echo(f"  budget     : {recipe.max_steps} steps x batch {recipe.batch_size}, lr {recipe.lr}")
    result = train(recipe)
    report = result.extras.get("trainable_report")
    before = result.initial_eval["top1"] if result.initial_eval else float("nan")
    after = result.final_eval["top1"] if result.final_eval else float("nan")
    echo(f"accuracy before (frozen base + fresh linear head, 0 steps): {before:.2f}%")
    echo(
        f"accuracy after  ({result.steps} steps, held-out {result.final_eval['count']} images): {after:.2f}%"
        + (f"  (top-5 {result.final_eval['top5']:.2f}%)" if "top5" in result.final_eval else "")
    )
    if report is not None:
        echo(
            f"trainable: {report.trainable_params:,} of {report.total_params:,} parameters "
            f"({report.trainable_pct:.2f}% of the base with the head, "
            f"{report.trainable_pct_no_head:.2f}% without it)"
        )
    else:
        echo(f"trainable: {result.trainable_params:,} of {result.total_params:,} parameters")
    echo(f"adaptor file: {result.artefact} ({_size(result.artefact)})")
    echo(f"plot: {result.plot}")
    echo(f"metrics: {result.run_dir / 'metrics.jsonl'}")
    results = {"adaptor": result}
    if compare_linear_probe:
        probe = train(recipe, ["method=linear_probe", f"output_dir={Path(output_dir) / 'linear_probe'}"])
        results["linear_probe"] = probe
        echo(
            f"linear probe, same budget: {probe.final_eval['top1']:.2f}% "
            f"(Mamba-Adaptor {after:.2f}%, {after - probe.final_eval['top1']:+.2f} points)"
        )
    echo(f"wall time: {time.time() - t0:.1f}s")
    return results
