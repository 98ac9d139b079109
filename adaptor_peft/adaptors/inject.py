"""Insert Mamba-Adaptor modules into every selected SS2D of a VMamba model, and take them out again.

The adaptors live on the SS2D hooks `op.adaptor_t` / `op.adaptor_s` (see models/vmamba.py), so
injected keys look like `layers.0.blocks.1.op.adaptor_t.phi_c.weight` and no base key changes.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator

import torch
from torch import nn

from .config import MambaAdaptorConfig
from .spatial import AdaptorS
from .temporal import AdaptorT

_BLOCK_RE = re.compile(r"(?:^|\.)layers[._](\d+)\.blocks\.(\d+)$")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def _ss2d_class() -> type[nn.Module]:
    from adaptor_peft.models.vmamba import SS2D  # lazy: the model module imports the kernels

    return SS2D


def find_ss2d(model: nn.Module) -> list[tuple[str, nn.Module, int | None]]:
    """Every SS2D of the model in module order, as (block name, module, stage index or None)."""
    ss2d = _ss2d_class()
    found = []
    for name, module in model.named_modules():
        if isinstance(module, ss2d):
            block = name[: -len(".op")] if name.endswith(".op") else name
            match = _BLOCK_RE.search(block)
            found.append((block, module, int(match.group(1)) if match else None))
    return found


def _select_blocks(
    found: list[tuple[str, nn.Module, int | None]], config: MambaAdaptorConfig
) -> list[tuple[str, nn.Module]]:
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


def _head_module(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else getattr(model, "head", None)
    return head if isinstance(head, nn.Module) else None


def _module_prefixes(model: nn.Module, targets: list[nn.Module]) -> list[str]:
    ids = {id(t) for t in targets}
    return [name for name, module in model.named_modules() if id(module) in ids]


def _under(name: str, prefixes: list[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def adaptor_module_names(model: nn.Module) -> list[str]:
    """Module names of the injected AdaptorT / AdaptorS modules."""
    return [name for name, m in model.named_modules() if isinstance(m, AdaptorT | AdaptorS)]


def _trained_extras(model: nn.Module, config: MambaAdaptorConfig) -> Iterator[tuple[str, nn.Parameter]]:
    """Base parameters the config trains besides the adaptors: head, norms, biases, modules_to_save."""
    adaptors = adaptor_module_names(model)
    head = _head_module(model)
    head_prefixes = _module_prefixes(model, [head]) if head is not None else []
    norm_prefixes = [n for n, m in model.named_modules() if isinstance(m, NORM_TYPES)]
    saved_prefixes: list[str] = []
    for pattern in config.modules_to_save:
        hits = [n for n, _ in model.named_modules() if n and fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"MambaAdaptorConfig.modules_to_save: pattern {pattern!r} matches no module")
        saved_prefixes.extend(hits)
    for name, param in model.named_parameters():
        module_name = name.rpartition(".")[0]
        if _under(module_name, adaptors):
            continue
        if (
            (config.train_head and _under(module_name, head_prefixes))
            or (config.train_norms and _under(module_name, norm_prefixes))
            or (config.train_biases and name.rpartition(".")[2] == "bias")
            or _under(module_name, saved_prefixes)
        ):
            yield name, param


def inject_adaptors(model: nn.Module, config: MambaAdaptorConfig, freeze_base: bool = True) -> nn.Module:
    """Put Adaptor-T / Adaptor-S on every selected SS2D, freeze the base (optional), return the model."""
    if not isinstance(config, MambaAdaptorConfig):
        raise TypeError(f"config must be a MambaAdaptorConfig, got {type(config).__name__}")
    config.validate()
    if getattr(model, "adaptor_config", None) is not None or adaptor_module_names(model):
        raise ValueError("model already has adaptors injected; call remove_adaptors(model) first")
    found = find_ss2d(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no SS2D block to put adaptors on")
    selected = _select_blocks(found, config)
    if not selected:
        raise ValueError("MambaAdaptorConfig.stages/blocks select no block")
    # Check and build everything first so that a ValueError leaves the model untouched.
    list(_trained_extras(model, config))  # validates modules_to_save patterns
    built = []
    for block, op in selected:
        d_inner, d_state = op.d_inner, op.d_state
        ref = next(op.parameters())
        try:
            t = AdaptorT(d_inner, d_state, config, num_directions=op.K) if config.temporal else None
            s = AdaptorS(d_inner, config) if config.spatial else None
        except ValueError as exc:
            raise ValueError(f"{exc} (block {block})") from None
        built.append((op, *(m.to(device=ref.device) if m is not None else None for m in (t, s))))
    for op, t, s in built:
        if t is not None:
            op.adaptor_t = t
        if s is not None:
            op.adaptor_s = s
    model.adaptor_config = config
    if freeze_base:
        for param in model.parameters():
            param.requires_grad_(False)
        for _, param in _trained_extras(model, config):
            param.requires_grad_(True)
        for name in adaptor_module_names(model):
            model.get_submodule(name).requires_grad_(True)
    return model


def remove_adaptors(model: nn.Module) -> nn.Module:
    """Detach every adaptor (hooks back to None), make all parameters trainable again, return the model."""
    for _, op, _ in find_ss2d(model):
        for hook in ("adaptor_t", "adaptor_s"):
            op._modules.pop(hook, None)  # back to the plain attribute the model defines
            setattr(op, hook, None)
    if "adaptor_config" in vars(model):
        del model.adaptor_config
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def adaptor_state_dict(model: nn.Module, include_head: bool = True) -> dict[str, torch.Tensor]:
    """The tensors an adaptor file stores: adaptor parameters, the head (if trained) and configured extras."""
    config = getattr(model, "adaptor_config", None)
    if config is None:
        raise ValueError("model has no adaptors (no model.adaptor_config); call inject_adaptors first")
    adaptors = adaptor_module_names(model)
    head = _head_module(model)
    head_prefixes = _module_prefixes(model, [head]) if head is not None else []
    wanted = {name for name, _ in _trained_extras(model, config)}
    if not include_head:
        wanted = {n for n in wanted if not _under(n.rpartition(".")[0], head_prefixes)}
    state = model.state_dict(keep_vars=True)
    return {
        key: value.detach()
        for key, value in state.items()
        if key in wanted or _under(key.rpartition(".")[0], adaptors)
    }
