"""Training methods (what is trainable, and what the final artefact is), as a small registry.

- ``base``: :class:`Method`, the registry and the save/load helpers every method shares.
- ``adaptor``: Mamba-Adaptor, linear probing and full fine-tuning.
- ``baselines``: LoRA, LoRAp(X), partial tuning and the adaptor variants of the transfer benchmark.
- ``hybrid``: Mamba-Adaptor plus LoRA on the SS2D projections.

Add a method with ``register_method(Method(name, prepare, save, load, artefact))``.
"""

from __future__ import annotations

from .adaptor import ADAPTOR_METHODS, adaptor_config
from .base import (
    METHODS,
    Method,
    artefact_path,
    get_method,
    head_module,
    head_param_names,
    load_tensors_strict,
    register_method,
    save_tensors,
    trainable_state,
)
from .baselines import BASELINE_METHODS
from .hybrid import HYBRID_METHOD

for _method in (*ADAPTOR_METHODS, *BASELINE_METHODS, HYBRID_METHOD):
    register_method(_method)

__all__ = [
    "METHODS",
    "Method",
    "adaptor_config",
    "artefact_path",
    "get_method",
    "head_module",
    "head_param_names",
    "load_tensors_strict",
    "register_method",
    "save_tensors",
    "trainable_state",
]
