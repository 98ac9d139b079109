"""Which parts of a model a MambaAdaptorConfig selects: SS2D blocks, the head, norms, name prefixes.

The adaptors find their blocks through the SS2D hook contract (two adaptor slots plus the sizes an
adaptor is built from) rather than by importing the model class: the base VMamba sits below the
adaptors and never needs them, and the Mamba-Adaptor networks above import both.
"""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from .config import MambaAdaptorConfig

#: What models/vmamba.py's SS2D offers an adaptor: hook slots `adaptor_t(hs, Cs, H, W, ys=)` and
#: `adaptor_s(y)` (None when empty), d_inner, d_state and K (scan directions).
SS2D_CONTRACT = ("adaptor_t", "adaptor_s", "d_inner", "d_state", "K")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_BLOCK_RE = re.compile(r"(?:^|\.)layers[._](\d+)\.blocks\.(\d+)$")


def is_ss2d(module: nn.Module) -> bool:
    """True for a module that offers the SS2D hook contract (SS2D_CONTRACT)."""
    return all(hasattr(module, attr) for attr in SS2D_CONTRACT)


def find_ss2d(model: nn.Module) -> list[tuple[str, nn.Module, int | None]]:
    """Every SS2D of the model in module order, as (block name, module, stage index or None)."""
    found = []
    for name, module in model.named_modules():
        if is_ss2d(module):
            block = name[: -len(".op")] if name.endswith(".op") else name
            match = _BLOCK_RE.search(block)
            found.append((block, module, int(match.group(1)) if match else None))
    return found


def select_blocks(
    found: list[tuple[str, nn.Module, int | None]], config: MambaAdaptorConfig
) -> list[tuple[str, nn.Module]]:
    """The (block, SS2D) pairs of `found` that config.stages / config.blocks select (ValueError if bad)."""
    stages_present = sorted({s for _, _, s in found if s is not None})
    num_stages = len(stages_present)
    wanted_stages: set[int] | None = None
    if config.stages is not None:
        wanted_stages = set()
        for s in config.stages:
            if not -num_stages <= s < num_stages:
                raise ValueError(
                    f"MambaAdaptorConfig.stages: stage index {s} is out of range for a model with "
                    f"{num_stages} stages"
                )
            wanted_stages.add(stages_present[s])
    wanted_blocks: set[str] | None = None
    if config.blocks is not None:
        names = [block for block, _, _ in found]
        wanted_blocks = set()
        for entry in config.blocks:
            if isinstance(entry, int):
                if entry >= len(names):
                    raise ValueError(
                        f"MambaAdaptorConfig.blocks: block index {entry} is out of range for a model with "
                        f"{len(names)} blocks"
                    )
                wanted_blocks.add(names[entry])
            else:
                hits = fnmatch.filter(names, entry)
                if not hits:
                    raise ValueError(
                        f"MambaAdaptorConfig.blocks: pattern {entry!r} matches no block; blocks are "
                        f"{names[0]} ... {names[-1]}"
                    )
                wanted_blocks.update(hits)
    return [
        (block, module)
        for block, module, stage in found
        if (wanted_stages is None or stage in wanted_stages)
        and (wanted_blocks is None or block in wanted_blocks)
    ]


def head_module(model: nn.Module) -> nn.Module | None:
    """The classifier head (timm's get_classifier(), else a `head` attribute), or None."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else getattr(model, "head", None)
    return head if isinstance(head, nn.Module) else None


def module_prefixes(model: nn.Module, targets: list[nn.Module]) -> list[str]:
    """Qualified names of the given submodules inside model."""
    ids = {id(t) for t in targets}
    return [name for name, module in model.named_modules() if id(module) in ids]


def is_under(name: str, prefixes: list[str]) -> bool:
    """True when a module name is one of the prefixes or inside one ("" is the whole model)."""
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)
