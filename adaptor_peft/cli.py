"""The ``adaptor-peft`` command: train, eval, predict, quickstart, info, convert.

Errors print one line ``error: ...`` and exit with status 1 (2 for usage errors); ``--debug`` (before
or after the command) shows the traceback instead. Options and ``key=value`` overrides may come in any
order after the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Sequence

EPILOG_TRAIN = """examples:
  adaptor-peft train recipes/transfer.yaml train_data=my_images/ lr=3e-3 adaptor.num_points=8
  adaptor-peft train quickstart max_steps=50            (a bundled recipe, by bare name)
  adaptor-peft train runs/x/recipe.yaml --resume max_steps=600   (continue, or extend a finished run)
  ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m adaptor_peft.cli train recipes/quickstart.yaml
  accelerate launch --config_file recipes/accelerate/multi_gpu_ddp.yaml -m adaptor_peft.cli train RECIPE"""


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: intermixed parsing reports optional positionals (KEY=VALUE ...) as required
    when a required one is missing; name only the required ones."""

    def error(self, message: str) -> typing.NoReturn:
        """Print the usage and the message (without optional positionals in 'required') and exit 2."""
        prefix = "the following arguments are required: "
        if message.startswith(prefix):
            optional = {a.metavar or a.dest for a in self._actions if not a.option_strings and a.nargs == "*"}
            names = [n for n in message[len(prefix) :].split(", ") if n not in optional]
            message = prefix + ", ".join(names)
        super().error(message)


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser (for --help and usage errors) and each command's own parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    ap = argparse.ArgumentParser(
        prog="adaptor-peft",
        description="Mamba-Adaptor: parameter-efficient fine-tuning of VMamba models.",
        parents=[common],
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser)

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train from a YAML recipe with key=value overrides",
        description="Train from a YAML recipe: a path (with a folder or a .yaml suffix; it must exist) or "
        "the bare name of a bundled recipe ('quickstart', 'transfer').",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="recipe YAML path, or a bundled recipe's bare name")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides; dotted keys reach into mappings"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last complete checkpoint (with a larger max_steps: extend a finished run)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in output_dir")

    # what eval and predict load: a finished run, or a file written by `adaptor-peft train`
    trained = argparse.ArgumentParser(add_help=False)
    trained.add_argument(
        "run",
        help="run directory, its recipe, a trained .safetensors file, a training checkpoint directory "
        "(runs/x/checkpoints[/step_N]) or a peft save_pretrained directory",
    )
    trained.add_argument(
        "--base",
        help="base weights for a trained file or peft directory (default: the base its recipe names); "
        "the architecture comes from the base file's metadata or the trained file",
    )
    trained.add_argument(
        "--weights",
        help="trained weights to load instead of the run's own: a trained file, a checkpoint directory "
        "or a peft directory",
    )
    trained.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="load an adaptor file onto a base other than the one it was trained on (warns instead)",
    )

    p = sub.add_parser(
        "eval",
        parents=[common, trained],
        help="evaluate a finished run on a dataset",
        description="Evaluate a trained run (run directory, its recipe, or a trained file) on a dataset.",
    )
    p.add_argument(
        "--data", help="dataset (.npz, ImageFolder dir, datasets dir); default: the recipe's eval_data"
    )
    p.add_argument("--split", help="split name inside a datasets DatasetDict / npz (x_<split>)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print the full metrics as JSON")

    p = sub.add_parser(
        "predict",
        parents=[common, trained],
        help="top-k classes for images or a folder",
        description="Predict the top-k classes of image files (folders are searched recursively).",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="report unreadable images (stderr; --json: rows with an 'error' field) and go on",
    )

    p = sub.add_parser(
        "quickstart",
        parents=[common],
        help="fine-tune Mamba-Adaptor on the shipped MNIST subset",
        description="Fine-tune Mamba-Adaptor (frozen Fashion-MNIST VMamba base) on the shipped MNIST subset.",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides (e.g. max_steps=50)")
    p.add_argument("--output", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument(
        "--compare-linear-probe",
        action="store_true",
        help="also run the frozen-features linear probe with the same budget",
    )

    p = sub.add_parser(
        "info",
        parents=[common],
        help="describe a model name or an adaptor/checkpoint file",
        description="MODEL: architecture summary; FILE or DIR: header of an adaptor/checkpoint/peft dir.",
    )
    p.add_argument("target", help="a registered model name, a .safetensors/.pth file or a peft directory")
    p.add_argument("--flops", action="store_true", help="also count FLOPs (model names only)")
    p.add_argument("--img-size", type=int, default=224, help="input size for --flops")

    p = sub.add_parser(
        "convert",
        parents=[common],
        help="convert an official .pth to safetensors",
        description="Convert a checkpoint (.pth/.pt/.bin/.safetensors) to a normalised .safetensors.",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling (ONLY for files from a trusted source)",
    )
    return ap, dict(sub.choices)


def _cmd_train(args: argparse.Namespace) -> int:
    from adaptor_peft.train.recipes import load_recipe, resolve_recipe_path

    overrides = list(args.overrides)
    if args.resume:
        overrides.append("resume=true")
    if args.overwrite:
        overrides.append("overwrite=true")
    path = resolve_recipe_path(args.recipe)
    recipe = load_recipe(path, overrides)  # recipe errors surface before the trainer is loaded
    if os.environ.get("RANK", "0") == "0":  # once per launch, not once per process
        print(f"recipe: {path}", flush=True)
    _avoid_spin_waiting()
    from adaptor_peft.train.trainer import train

    result = train(recipe)
    _print_result(result)
    return 0


def _print_result(result: object) -> None:
    fe = result.final_eval
    acc = f", eval {_topk_text(fe, ' ')}" if fe else ""
    print(f"done: {result.steps} steps in {result.wall_time_s:.1f}s{acc}")
    print(f"trained weights: {result.artefact} ({result.artefact.stat().st_size / 1024:.1f} KiB)")
    if result.plot:
        print(f"curves: {result.plot}")
    if (result.run_dir / "tensorboard").is_dir():  # log_with=tensorboard
        print(f"tensorboard events: {result.run_dir / 'tensorboard'}")


def _topk_text(metrics: dict, sep: str) -> str:
    """'top-1 x%' and, where reported (more than 5 classes), 'top-5 y%'."""
    text = f"top-1 {metrics['top1']:.2f}%"
    return text + (f"{sep}top-5 {metrics['top5']:.2f}%" if metrics.get("top5") is not None else "")


def _cmd_eval(args: argparse.Namespace) -> int:
    from adaptor_peft.train.inference import evaluate_dataset, load_trained

    trained = load_trained(args.run, args.weights, args.base, allow_base_mismatch=args.allow_base_mismatch)
    m = evaluate_dataset(trained, args.data, args.split, args.batch_size)
    if args.json:
        print(json.dumps(m))
        return 0
    print(f"{_topk_text(m, '  ')}  loss {m['loss']:.4f}  ({m['count']} images)")
    for name, acc in zip(trained.classes, m["per_class"]):
        print(f"  {name:>12}: {'-' if acc is None else f'{acc:.1f}%'}")
    if m["no_examples"]:
        print(f"no examples of {len(m['no_examples'])} class(es): {', '.join(m['no_examples'])}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from adaptor_peft.train.inference import image_files, iter_predictions, load_trained

    trained = load_trained(args.run, args.weights, args.base, allow_base_mismatch=args.allow_base_mismatch)
    files = image_files(args.images)
    bad = 0
    for row in iter_predictions(trained, files, args.topk, skip_bad=args.skip_bad):
        if "error" in row:  # only with --skip-bad
            bad += 1
            print(f"warning: skipped {row['file']}: {row['error']}", file=sys.stderr)
            if args.json:
                print(json.dumps(row))
        elif args.json:
            print(json.dumps(row))
        else:
            top = "  ".join(f"{c} {p:.3f}" for c, p in row["top"])
            print(f"{row['file']}: {top}")
    if bad:
        print(f"warning: {bad} of {len(files)} image(s) could not be read", file=sys.stderr)
    return 1 if bad == len(files) else 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from adaptor_peft.train.quickstart import run_quickstart

    run_quickstart(args.output, args.overrides, compare_linear_probe=args.compare_linear_probe)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    target = Path(args.target)
    if target.exists():
        from adaptor_peft.io import describe_file

        print(describe_file(target))
        return 0
    from adaptor_peft.models import model_info

    print(model_info(args.target))
    if args.flops:
        from adaptor_peft.flops import model_flops_summary

        print(model_flops_summary(args.target, img_size=args.img_size))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from adaptor_peft.models import convert_checkpoint

    dst = convert_checkpoint(args.src, args.dst, trust_pickle=args.trust_pickle)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "predict": _cmd_predict,
    "quickstart": _cmd_quickstart,
    "info": _cmd_info,
    "convert": _cmd_convert,
}


def _avoid_spin_waiting() -> None:
    """On an oversubscribed CPU use one intra-op thread (OpenMP spin-waiting makes 2 threads ~10x slower)."""
    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return
    import torch

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if not torch.cuda.is_available() and cores <= 4 and load > cores + 0.5 and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        print(
            f"note: the CPU is busy (load {load:.1f} on {cores} cores): using 1 thread "
            "(set OMP_NUM_THREADS to choose)",
            file=sys.stderr,
        )


#: How the CLI spells what library error messages suggest as Python keyword arguments.
_CLI_SPELLING = {"allow_base_mismatch=True": "--allow-base-mismatch"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line: global options before the command, then the command's options and
    positionals (overrides, images) in any order (argparse's intermixed parsing)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top, commands = _parser()
    i = 0
    while i < len(argv) and argv[i] == "--debug":
        i += 1
    if i == len(argv) or argv[i] not in commands:
        return top.parse_args(argv)  # --help, a missing or unknown command: argparse's own message
    args = commands[argv[i]].parse_intermixed_args(argv[i + 1 :])
    args.command = argv[i]
    args.debug = args.debug or i > 0  # a global --debug must not be overwritten by the command's default
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adaptor-peft`` console script; returns the exit status."""
    args = parse_args(argv)
    try:
        if args.command in ("eval", "predict", "quickstart"):
            _avoid_spin_waiting()
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        for python, flag in _CLI_SPELLING.items():  # library hints name Python arguments
            message = message.replace(python, flag)
        from adaptor_peft.printable import printable

        # Messages quote file names, keys and values from files: escape what a terminal would act on.
        print(f"error: {printable(message)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
