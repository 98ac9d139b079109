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


def _resolve_stages(indices: tuple[int, ...], present: list[int], field: str) -> set[int]:
    """Stage numbers for config stage indices (negative from the end); ValueError names the field."""
    out = set()
    for s in indices:
        if not -len(present) <= s < len(present):
            raise ValueError(
                f"MambaAdaptorConfig.{field}: stage index {s} is out of range for a model with "
                f"{len(present)} stages"
            )
        out.add(present[s])
    return out


def select_blocks(
    found: list[tuple[str, nn.Module, int | None]], config: MambaAdaptorConfig
) -> list[tuple[str, nn.Module]]:
    """The (block, SS2D) pairs of `found` that config.stages / config.blocks select (ValueError if bad)."""
    stages_present = sorted({s for _, _, s in found if s is not None})
    wanted_stages: set[int] | None = None
    if config.stages is not None:
        wanted_stages = _resolve_stages(config.stages, stages_present, "stages")
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


def adaptor_kinds(
    found: list[tuple[str, nn.Module, int | None]], config: MambaAdaptorConfig
) -> dict[str, tuple[bool, bool]]:
    """Block name -> (carries Adaptor-T, carries Adaptor-S) by config.temporal/t_stages, spatial/s_stages.

    Only the stage filters: which blocks are adapted at all is select_blocks' (or peft's targets').
    A block outside the layers.<i>.blocks.<j> naming has no stage and carries neither when a filter is set.
    """
    present = sorted({s for _, _, s in found if s is not None})
    t = _resolve_stages(config.t_stages, present, "t_stages") if config.t_stages is not None else None
    s = _resolve_stages(config.s_stages, present, "s_stages") if config.s_stages is not None else None
    return {
        block: (
            config.temporal and (t is None or stage in t),
            config.spatial and (s is None or stage in s),
        )
        for block, _, stage in found
    }


def plan_adaptors(
    found: list[tuple[str, nn.Module, int | None]], config: MambaAdaptorConfig
) -> list[tuple[str, nn.Module, bool, bool]]:
    """(block, SS2D, Adaptor-T?, Adaptor-S?) for each selected block that carries at least one adaptor.

    ValueError when stages/blocks select no block, or when t_stages / s_stages leave the adaptor the
    config asks for on none of the selected blocks.
    """
    selected = select_blocks(found, config)
    if not selected:
        raise ValueError("MambaAdaptorConfig.stages/blocks select no block")
    kinds = adaptor_kinds(found, config)
    stage_of = {block: stage for block, _, stage in found}
    for field, index, kind in (("t_stages", 0, "temporal"), ("s_stages", 1, "spatial")):
        if getattr(config, kind) and not any(kinds[block][index] for block, _ in selected):
            chosen = sorted({stage_of[block] for block, _ in selected}, key=lambda v: (v is None, v))
            raise ValueError(
                f"MambaAdaptorConfig.{field}={list(getattr(config, field))} selects none of the blocks "
                f"that stages/blocks select (their stages: {chosen}); pick among those stages or set "
                f"{kind}=False"
            )
    return [(block, op, *kinds[block]) for block, op in selected if any(kinds[block])]


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
