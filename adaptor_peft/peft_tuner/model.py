"""The peft tuner (BaseTuner) that puts MambaAdaptorLayer containers on the SS2D hooks of a VMamba model."""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper, _set_trainable
from torch import nn

from adaptor_peft.adaptors import MambaAdaptorConfig
from adaptor_peft.adaptors.selection import NORM_TYPES, adaptor_kinds, find_ss2d, plan_adaptors

from .config import MambaAdaptorPeftConfig
from .guard import check_state_dict
from .layer import ADAPTOR_MODULES, HOOKS, MERGE_ERROR, MambaAdaptorLayer

PREFIX = "mamba_adaptor_"


def _as_adaptor_config(config: Any) -> MambaAdaptorConfig:
    if isinstance(config, MambaAdaptorPeftConfig):
        return config.to_adaptor_config()
    if isinstance(config, MambaAdaptorConfig):
        return config
    raise TypeError(f"expected a MambaAdaptorPeftConfig, got {type(config).__name__}")


def selected_ss2d_names(model: nn.Module, config: MambaAdaptorConfig) -> list[str]:
    """Names of the SS2D blocks that stages/blocks select and t_stages/s_stages leave an adaptor on."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(op)] for _, op, _, _ in plan_adaptors(find_ss2d(model), config)]


def _outermost(names: list[str]) -> list[str]:
    """Drop names nested under another name of the list (a wrapped parent already covers them)."""
    keep = sorted(set(names))
    return [n for n in keep if not any(n.startswith(p + ".") for p in keep if p != n)]


def extra_module_names(model: nn.Module, config: MambaAdaptorConfig) -> list[str]:
    """Modules trained and saved besides the adaptors: the head, norms, modules_to_save patterns.

    A module already wrapped in peft's ModulesToSaveWrapper (by an earlier adapter) counts under the
    wrapper's name with the wrapped module's type, so a second adapter gets its own copy too.
    """
    modules = dict(model.named_modules())
    wrappers = [n for n, m in modules.items() if isinstance(m, ModulesToSaveWrapper)]
    tuner_layers = [n for n, m in modules.items() if isinstance(m, BaseTunerLayer)]

    def visible(name: str) -> bool:
        inside_wrapper = any(name.startswith(p + ".") for p in wrappers)
        return not inside_wrapper and not any(name == p or name.startswith(p + ".") for p in tuner_layers)

    def unwrap(module: nn.Module) -> nn.Module:
        return module.original_module if isinstance(module, ModulesToSaveWrapper) else module

    candidates = {n: unwrap(m) for n, m in modules.items() if n and visible(n)}
    names: list[str] = []
    if config.train_head:
        getter = getattr(model, "get_classifier", None)
        head = getter() if callable(getter) else getattr(model, "head", None)
        head = unwrap(head) if isinstance(head, nn.Module) else None
        if head is not None and any(True for _ in head.parameters()):
            names += [n for n, m in candidates.items() if m is head]
    if config.train_norms:
        names += [n for n, m in candidates.items() if isinstance(m, NORM_TYPES)]
    for pattern in config.modules_to_save:
        hits = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"MambaAdaptorConfig.modules_to_save: pattern {pattern!r} matches no module")
        names += hits
    return _outermost(names)


class MambaAdaptorModel(BaseTuner):
    """Mamba-Adaptor as a peft tuner: Adaptor-T / Adaptor-S on each selected SS2D block.

    Use through peft: ``peft.get_peft_model(model, MambaAdaptorPeftConfig(...))``, ``save_pretrained``,
    ``PeftModel.from_pretrained``, ``add_adapter`` / ``set_adapter`` / ``disable_adapter()``, ``unload``.
    ``merge_and_unload`` raises NotImplementedError: the adaptors are not weight deltas.
    """

    prefix: str = PREFIX
    tuner_layer_cls = MambaAdaptorLayer
    target_module_mapping: dict[str, list[str]] = {}

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict | None = None,
    ) -> None:
        """Resolve targets and extras from the adaptor fields, then let peft inject as usual."""
        peft_config = self.peft_config[adapter_name]
        adaptor_config = _as_adaptor_config(peft_config)
        if peft_config.target_modules is None:
            peft_config.target_modules = selected_ss2d_names(model, adaptor_config)
        # Which hooks each SS2D gets (t_stages / s_stages), keyed by module for _create_and_replace.
        found = find_ss2d(model)
        by_block = adaptor_kinds(found, adaptor_config)
        self._adaptor_kinds = {id(op): by_block[block] for block, op, _ in found}
        extras = extra_module_names(model, adaptor_config)
        # peft wraps every module whose name *ends with* a listed name; refuse (before anything is
        # injected) when that would wrap more than the module we mean.
        for name in extras:
            clash = [
                k
                for k, _ in model.named_modules()
                if k != name
                and k.endswith(name)
                and not k.startswith(name + ".")
                and ".modules_to_save." not in k
            ]
            if clash:
                raise ValueError(
                    f"module name {name!r} is also a suffix of {clash[:3]}; cannot wrap it alone"
                )
        # Our modules_to_save holds fnmatch patterns; peft would read them as name suffixes, so the
        # resolved names are wrapped below instead. state_dict-driven matching would target the hook
        # containers rather than the SS2D blocks, so targets always come from the config.
        patterns, peft_config.modules_to_save = peft_config.modules_to_save, None
        try:
            super().inject_adapter(
                model,
                adapter_name,
                autocast_adapter_dtype=autocast_adapter_dtype,
                low_cpu_mem_usage=low_cpu_mem_usage,
                state_dict=None,
            )
        finally:
            peft_config.modules_to_save = patterns
        _set_trainable(
            model,
            adapter_name,
            module_names=extras,
            inference_mode=peft_config.inference_mode,
            activate_adapter=adapter_name in self.active_adapters,
        )

    def _create_and_replace(
        self,
        peft_config: MambaAdaptorPeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        """Fill the target SS2D's hooks with (or add this adapter to) MambaAdaptorLayer containers."""
        if not all(hasattr(target, h) for h in HOOKS.values()) or not hasattr(target, "d_inner"):
            raise ValueError(
                f"{current_key} is a {type(target).__name__}, not an SS2D block with adaptor hooks"
            )
        config = _as_adaptor_config(peft_config)
        with_t, with_s = getattr(self, "_adaptor_kinds", {}).get(
            id(target), (config.temporal, config.spatial)
        )
        wanted = {"temporal": with_t, "spatial": with_s}
        for kind, hook in HOOKS.items():
            if not wanted[kind]:
                continue
            layer = getattr(target, hook)
            if isinstance(layer, MambaAdaptorLayer):
                layer.update_layer(adapter_name, config)
            elif layer is None:
                layer = MambaAdaptorLayer(kind, target, adapter_name, config)
                if adapter_name not in self.active_adapters:
                    layer.requires_grad_(False)
                setattr(target, hook, layer)
            else:
                raise ValueError(
                    f"{current_key}.{hook} already holds a {type(layer).__name__} (adaptors injected with "
                    "adaptor_peft.inject_adaptors?); call adaptor_peft.remove_adaptors(model) before "
                    "get_peft_model"
                )

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # peft's default copies child.weight onto the new module, which weightless containers lack.
        setattr(parent, child_name, new_module)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: Any, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """peft's key remapping, then our checks (finite values, fitting shapes) before anything loads."""
        remapped = super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )
        check_state_dict(model, state_dict, remapped)
        return remapped

    def _check_merge_allowed(self) -> None:
        raise NotImplementedError(MERGE_ERROR)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # Adaptor modules nest below the ModuleDict entry, so the name sits mid-key.
        marker = f".{ADAPTOR_MODULES}.{adapter_name}."
        if marker in key:
            return key.replace(marker, f".{ADAPTOR_MODULES}.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            raise NotImplementedError(MERGE_ERROR)
        model = super()._unload_and_optionally_merge(
            merge=False, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
        for _, op, _ in find_ss2d(model):
            for hook in HOOKS.values():
                if isinstance(getattr(op, hook), MambaAdaptorLayer):
                    op._modules.pop(hook, None)  # back to the plain None attribute SS2D defines
                    setattr(op, hook, None)
        return model
