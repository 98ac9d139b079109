"""Training with Accelerate: recipes, data, the trainer loop, metrics, tracking and the quickstart.

    from adaptor_peft.train import load_recipe, train
    result = train("quickstart", ["max_steps=50", "output_dir=runs/qs"])

Names are imported lazily, so ``import adaptor_peft.train`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Recipe": "recipes",
    "RecipeError": "recipes",
    "load_recipe": "recipes",
    "DataError": "data",
    "open_source": "data",
    "METHODS": "methods",
    "Method": "methods",
    "register_method": "methods",
    "NonFiniteLossError": "trainer",
    "RunDirError": "trainer",
    "RunDirLockedError": "trainer",
    "ResumeMismatchError": "trainer",
    "CheckpointError": "checkpointing",
    "TrainResult": "trainer",
    "evaluate": "trainer",
    "train": "trainer",
    "load_trained": "inference",
    "evaluate_dataset": "inference",
    "predict_files": "inference",
    "run_quickstart": "quickstart",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adaptor_peft.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
