"""Ship a pretraining run as the embedded default checkpoint (+ its training log) in adaptor_peft/assets/.

    python scripts/export_pretrained.py runs/pretrain_fashion_mnist [--from-checkpoint]

Copies the run's model.safetensors (config in its metadata) to assets/vmamba_fmnist_d32.safetensors,
and its metrics.jsonl / eval.jsonl / final_eval.json / recipe.yaml / curves.png / result.json to
assets/vmamba_fmnist_d32_training/ with the Fashion-MNIST licence notice beside the checkpoint.
--from-checkpoint exports the newest complete resume checkpoint of an unfinished run instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "adaptor_peft" / "assets"
NAME = "vmamba_fmnist_d32"

FASHION_NOTICE = """vmamba_fmnist_d32.safetensors: a small VMamba (official v2 key layout) trained from
scratch by adaptor_peft on Fashion-MNIST (recipes/pretrain_fashion_mnist.yaml; training log in
vmamba_fmnist_d32_training/).

Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist), Copyright (c) 2017 Zalando SE,
used under the MIT licence, as packaged by Debian (dataset-fashion-mnist):

The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction, including
without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the
following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial
portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO
EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER
IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR
THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def export_from_checkpoint(run_dir: Path, dst: Path) -> None:
    """Rebuild the model from the run's recipe, load its newest resume checkpoint, save it as model file."""
    from safetensors.torch import load_file

    from adaptor_peft.train.build import build_model
    from adaptor_peft.train.checkpointing import find_resumable
    from adaptor_peft.train.methods import get_method
    from adaptor_peft.train.recipes import load_recipe

    recipe = load_recipe(run_dir / "recipe.yaml")
    folder, _ = find_resumable(run_dir)
    if folder is None:
        raise SystemExit(f"{run_dir}: no complete checkpoint")
    model = build_model(recipe, recipe.num_classes or 10)
    model.load_state_dict(load_file(str(folder / "trainable.safetensors")), strict=True)
    step = json.loads((folder / "state.json").read_text())["step"]
    get_method("full").save(model, dst, {"recipe": recipe.to_dict(), "steps": step})


def to_fp16(path: Path) -> None:
    """Rewrite a safetensors file with float32 tensors stored as float16 (metadata kept), atomically."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    from adaptor_peft.atomic import atomic_write_bytes

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
    meta["stored_dtype"] = "float16"
    atomic_write_bytes(path, save(tensors, metadata=meta))


def main() -> None:
    """Copy the run's weights and logs into the package assets."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--from-checkpoint", action="store_true")
    ap.add_argument("--fp16", action="store_true", help="store float tensors as float16 (halves the size)")
    args = ap.parse_args()
    dst = ASSETS / f"{NAME}.safetensors"
    if args.from_checkpoint:
        export_from_checkpoint(args.run_dir, dst)
    else:
        shutil.copyfile(args.run_dir / "model.safetensors", dst)
    if args.fp16:
        to_fp16(dst)
    logs = ASSETS / f"{NAME}_training"
    logs.mkdir(exist_ok=True)
    for name in (
        "metrics.jsonl",
        "eval.jsonl",
        "final_eval.json",
        "recipe.yaml",
        "curves.png",
        "result.json",
    ):
        if (args.run_dir / name).exists():
            shutil.copyfile(args.run_dir / name, logs / name)
    (ASSETS / "FASHION_MNIST_LICENSE.txt").write_text(FASHION_NOTICE)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB) and {logs}/")


if __name__ == "__main__":
    main()
