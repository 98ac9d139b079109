"""Insert Mamba-Adaptor modules into every selected SS2D of a VMamba model, and take them out again.

The adaptors live on the SS2D hooks `op.adaptor_t` / `op.adaptor_s` (see models/vmamba.py), so
injected keys look like `layers.0.blocks.1.op.adaptor_t.phi_c.weight` and no base key changes. Which
blocks and parameters a config selects is decided in `selection`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

import torch
from torch import nn

from .config import MambaAdaptorConfig
from .selection import NORM_TYPES, find_ss2d, head_module, is_under, module_prefixes, plan_adaptors
from .spatial import AdaptorS
from .temporal import AdaptorT


def adaptor_module_names(model: nn.Module) -> list[str]:
    """Module names of the injected AdaptorT / AdaptorS modules."""
    return [name for name, m in model.named_modules() if isinstance(m, AdaptorT | AdaptorS)]


def _trained_extras(model: nn.Module, config: MambaAdaptorConfig) -> Iterator[tuple[str, nn.Parameter]]:
    """Base parameters the config trains besides the adaptors: head, norms, biases, modules_to_save."""
    adaptors = adaptor_module_names(model)
    head = head_module(model)
    head_prefixes = module_prefixes(model, [head]) if head is not None else []
    norm_prefixes = [n for n, m in model.named_modules() if isinstance(m, NORM_TYPES)]
    saved_prefixes: list[str] = []
    for pattern in config.modules_to_save:
        hits = [n for n, _ in model.named_modules() if n and fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"MambaAdaptorConfig.modules_to_save: pattern {pattern!r} matches no module")
        saved_prefixes.extend(hits)
    for name, param in model.named_parameters():
        module_name = name.rpartition(".")[0]
        if is_under(module_name, adaptors):
            continue
        if (
            (config.train_head and is_under(module_name, head_prefixes))
            or (config.train_norms and is_under(module_name, norm_prefixes))
            or (config.train_biases and name.rpartition(".")[2] == "bias")
            or is_under(module_name, saved_prefixes)
        ):
            yield name, param


def inject_adaptors(model: nn.Module, config: MambaAdaptorConfig, freeze_base: bool = True) -> nn.Module:
    """Put Adaptor-T / Adaptor-S on the selected SS2D blocks, freeze the base (optional), return the model."""
    if not isinstance(config, MambaAdaptorConfig):
        raise TypeError(f"config must be a MambaAdaptorConfig, got {type(config).__name__}")
    config.validate()
    if getattr(model, "adaptor_config", None) is not None or adaptor_module_names(model):
        raise ValueError("model already has adaptors injected; call remove_adaptors(model) first")
    found = find_ss2d(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no SS2D block to put adaptors on")
    plan = plan_adaptors(found, config)
    # Check and build everything first so that a ValueError leaves the model untouched.
    list(_trained_extras(model, config))  # validates modules_to_save patterns
    built = []
    for block, op, with_t, with_s in plan:
        d_inner, d_state = op.d_inner, op.d_state
        ref = next(op.parameters())
        try:
            t = AdaptorT(d_inner, d_state, config, num_directions=op.K) if with_t else None
            s = AdaptorS(d_inner, config) if with_s else None
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
    head = head_module(model)
    head_prefixes = module_prefixes(model, [head]) if head is not None else []
    wanted = {name for name, _ in _trained_extras(model, config)}
    if not include_head:
        wanted = {n for n in wanted if not is_under(n.rpartition(".")[0], head_prefixes)}
    state = model.state_dict(keep_vars=True)
    return {
        key: value.detach()
        for key, value in state.items()
        if key in wanted or is_under(key.rpartition(".")[0], adaptors)
    }
