"""Baseline training methods for the transfer benchmark (``BASELINE_METHODS``, registered by the package).

Every method here keeps the classifier head trainable (transfer to a new label set needs it) and saves
only what it trained:

- ``lora``: LoRA via peft on the SS2D 1x1 projections (``op.in_proj``, ``op.out_proj`` by default). The v2
  models' channel-first ``Linear2d`` layers get :func:`lora_linear2d_class` through peft's custom-module
  dispatch (peft's own Linear would act on the last axis, which is W there: silently wrong).
- ``lora_x``: MambaPEFT's LoRAp(X), LoRA on the x-half of a gated ``in_proj`` only. Not applicable to
  models without a z gate (all v2 releases are ``v05_noz``): a RecipeError says so.
- ``a_tuning`` / ``d_tuning`` / ``conv_tuning`` / ``bias_tuning``: MambaPEFT's partial tuning of the SSM
  ``A_logs``, the skip ``Ds``, the depthwise ``conv2d`` of every SS2D, and every bias (BitFit: names
  ending in ``bias``, which includes ``dt_projs_bias`` and the norms' biases).
- ``adaptor_t`` / ``adaptor_s`` / ``adaptor_ts`` / ``adaptor_static``: the trainer's ``adaptor`` method
  with Adaptor-T only, Adaptor-S only, both, and both with static selection (config overrides on top of
  the recipe's ``adaptor`` mapping).

Options of the LoRA methods (``r``, ``alpha``, ``dropout``, ``targets``) come from the recipe's
``method_options`` mapping.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models.vmamba import SS2D, Linear2d
from ..recipes import Recipe, RecipeError
from .adaptor import load_adaptor, prepare_adaptor, save_adaptor
from .base import (
    Method,
    head_param_names,
    load_tensors_strict,
    save_tensors,
    set_trainable,
    trainable_state,
)

__all__ = [
    "ADAPTOR_VARIANTS",
    "BASELINE_METHODS",
    "LORA_DEFAULTS",
    "PARTIAL_SELECTORS",
    "LoraXProj",
    "apply_lora",
    "apply_lora_x",
    "lora_linear2d_class",
    "lora_options",
    "method_param_names",
    "partial_param_names",
]

#: Defaults of the LoRA options (``alpha`` None means alpha = r, i.e. scaling 1).
LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "alpha": None,
    "dropout": 0.0,
    "targets": ["op.in_proj", "op.out_proj"],
}


# --- option handling ---------------------------------------------------------------------------


def _options(recipe: Recipe) -> dict[str, Any]:
    """Method options from ``recipe.method_options``."""
    return dict(recipe.method_options or {})


def lora_options(recipe: Recipe) -> dict[str, Any]:
    """Validated LoRA options (r, alpha, dropout, targets) from the recipe, with defaults filled in."""
    opts = _options(recipe)
    unknown = sorted(set(opts) - set(LORA_DEFAULTS))
    if unknown:
        raise RecipeError(
            f"method '{recipe.method}': unknown option(s) {unknown}; valid options: {sorted(LORA_DEFAULTS)}"
        )
    out = {**LORA_DEFAULTS, **opts}
    r = out["r"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise RecipeError(f"method '{recipe.method}': option 'r' must be an int >= 1, got {r!r}")
    if out["alpha"] is None:
        out["alpha"] = r
    if isinstance(out["alpha"], bool) or not isinstance(out["alpha"], int | float) or out["alpha"] <= 0:
        raise RecipeError(
            f"method '{recipe.method}': option 'alpha' must be a number > 0, got {out['alpha']!r}"
        )
    if not isinstance(out["dropout"], int | float) or not 0.0 <= out["dropout"] < 1.0:
        raise RecipeError(
            f"method '{recipe.method}': option 'dropout' must be in [0, 1), got {out['dropout']!r}"
        )
    targets = out["targets"]
    if isinstance(targets, str):
        targets = [targets]
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise RecipeError(
            f"method '{recipe.method}': option 'targets' must be module-name suffixes, got {targets!r}"
        )
    out["targets"] = list(targets)
    return out


def _ss2d_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SS2D)]


# --- LoRA on channel-first Linear2d (peft custom module) ----------------------------------------


@functools.cache
def lora_linear2d_class() -> type[nn.Module]:
    """peft's LoRA layer class for ``Linear2d``, built on first use so that only LoRA runs import peft."""
    from peft.tuners.lora.layer import Linear

    class LoraLinear2d(Linear):  # type: ignore[misc]
        """peft LoRA layer for ``Linear2d`` (a 1x1 conv on channel-first (B, C, H, W) input).

        The low-rank path runs on the channel axis (moved last and back); merge/unmerge reuse peft's Linear
        code, which is right here because Linear2d stores its weight as (out, in) like nn.Linear.
        """

        def __init__(
            self, base_layer: nn.Module, adapter_name: str, config: Any = None, **kwargs: Any
        ) -> None:
            if kwargs.get("use_dora") or getattr(config, "use_dora", False):
                raise ValueError("LoraLinear2d: DoRA is not supported on channel-first Linear2d layers")
            super().__init__(base_layer, adapter_name, config=config, **kwargs)

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            """Base 1x1 conv plus the scaled low-rank update computed over channels."""
            if self.disable_adapters:
                if self.merged:
                    self.unmerge()
                return self.base_layer(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            if self.merged:
                return result
            out_dtype = result.dtype
            for name in self.active_adapters:
                if name not in self.lora_A:
                    continue
                lora_a, lora_b = self.lora_A[name], self.lora_B[name]
                h = self.lora_dropout[name](x.to(lora_a.weight.dtype)).movedim(1, -1)
                result = result + (lora_b(lora_a(h)) * self.scaling[name]).movedim(-1, 1)
            return result.to(out_dtype)

        def __repr__(self) -> str:
            return "lora2d." + super().__repr__()

    return LoraLinear2d


def __getattr__(name: str) -> Any:
    """``LoraLinear2d`` imports peft on first access (the other methods never need it)."""
    if name == "LoraLinear2d":
        return lora_linear2d_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _target_regex(targets: list[str]) -> str:
    alternatives = "|".join(re.escape(t) for t in targets)
    return rf"(?:.*\.)?(?:{alternatives})"


def apply_lora(
    model: nn.Module, r: int, alpha: float, dropout: float = 0.0, targets: Iterable[str] = ()
) -> nn.Module:
    """Inject peft LoRA (Linear2d-aware) into modules named ``*targets``; freeze all but LoRA and head."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(targets) or list(LORA_DEFAULTS["targets"])
    pattern = _target_regex(targets)
    hits = [n for n, _ in model.named_modules() if n and re.fullmatch(pattern, n)]
    if not hits:
        raise RecipeError(f"LoRA targets {targets} match no module of {type(model).__name__}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    config._register_custom_module({Linear2d: lora_linear2d_class()})
    inject_adapter_in_model(config, model)
    model.lora_targets = hits
    return set_trainable(model, [n for n, _ in model.named_parameters() if ".lora_" in n])


# --- LoRAp(X): LoRA on the x-half of a gated in_proj --------------------------------------------


class LoraXProj(nn.Module):
    """in_proj with a LoRA update on its first ``d_x`` outputs (the x half; the z-gate half is untouched)."""

    def __init__(self, base_layer: nn.Linear, d_x: int, r: int, alpha: float, channel_first: bool) -> None:
        super().__init__()
        if not 0 < d_x <= base_layer.out_features:
            raise ValueError(f"LoraXProj: d_x={d_x} must be in 1..{base_layer.out_features}")
        self.base_layer = base_layer
        self.channel_first = channel_first
        self.d_x = d_x
        self.scaling = alpha / r
        ref = base_layer.weight
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=ref.device, dtype=ref.dtype)
        self.lora_B = nn.Linear(r, d_x, bias=False, device=ref.device, dtype=ref.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's default init: B = 0 -> identity
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """The (out, in) update to the base weight: zeros on the z rows."""
        delta = self.lora_B.weight @ self.lora_A.weight * self.scaling
        return F.pad(delta, (0, 0, 0, self.base_layer.out_features - self.d_x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base projection plus the low-rank update on the x half of the output channels."""
        out = self.base_layer(x)
        h = x.movedim(1, -1) if self.channel_first else x
        delta = self.lora_B(self.lora_A(h)) * self.scaling
        delta = F.pad(delta, (0, self.base_layer.out_features - self.d_x))
        return out + (delta.movedim(-1, 1) if self.channel_first else delta)


def apply_lora_x(model: nn.Module, r: int, alpha: float) -> nn.Module:
    """Wrap every gated SS2D in_proj in :class:`LoraXProj`; RecipeError when no block has a z gate."""
    blocks = _ss2d_modules(model)
    gated = [(n, op) for n, op in blocks if not op.disable_z]
    if not gated:
        kinds = sorted({op.forward_type for _, op in blocks}) or ["no SS2D block"]
        raise RecipeError(
            "method 'lora_x' (LoRAp(X)) needs a gated in_proj (x and z halves), but this model's "
            f"forward_type "
            f"{kinds} has no z gate: LoRAp(X) is not applicable here (it would equal LoRA on in_proj)"
        )
    for _, op in gated:
        op.in_proj = LoraXProj(op.in_proj, op.d_inner, r, alpha, op.channel_first)
    return set_trainable(model, [n for n, _ in model.named_parameters() if ".in_proj.lora_" in n])


# --- partial tuning ------------------------------------------------------------------------------


def _ssm_param(suffix: str) -> Callable[[nn.Module], list[str]]:
    def select(model: nn.Module) -> list[str]:
        return [
            f"{n}.{suffix}"
            for n, op in _ss2d_modules(model)
            if isinstance(getattr(op, suffix, None), nn.Parameter)
        ]

    return select


def _conv_params(model: nn.Module) -> list[str]:
    out = []
    for n, op in _ss2d_modules(model):
        conv = getattr(op, "conv2d", None)
        if isinstance(conv, nn.Module):
            out += [f"{n}.conv2d.{p}" for p, _ in conv.named_parameters()]
    return out


def _bias_params(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.endswith(("bias", "_bias")) and ".lora_" not in n]


#: Partial-tuning method -> function listing the base parameter names it trains (head added separately).
PARTIAL_SELECTORS: dict[str, Callable[[nn.Module], list[str]]] = {
    "a_tuning": _ssm_param("A_logs"),
    "d_tuning": _ssm_param("Ds"),
    "conv_tuning": _conv_params,
    "bias_tuning": _bias_params,
}


def partial_param_names(model: nn.Module, method: str) -> list[str]:
    """Base parameter names a partial-tuning method trains (without the head)."""
    names = PARTIAL_SELECTORS[method](model)
    if not names:
        raise RecipeError(f"method '{method}' finds no parameter to tune in {type(model).__name__}")
    return names


def method_param_names(model: nn.Module, method: str) -> set[str]:
    """Names of the parameters a prepared model trains for ``method`` (head included)."""
    if method in PARTIAL_SELECTORS:
        return set(partial_param_names(model, method)) | head_param_names(model)
    if method in ("lora", "lora_x"):
        return {n for n, _ in model.named_parameters() if ".lora_" in n} | head_param_names(model)
    raise KeyError(f"method_param_names: no rule for method '{method}'")


# --- registration --------------------------------------------------------------------------------


def _save_with(method: str, extra: Callable[[nn.Module], dict[str, Any]] | None = None) -> Callable:
    def save(model: nn.Module, path: Path, meta: dict[str, Any]) -> Path:
        meta = {**meta, "method": method, **(extra(model) if extra else {})}
        return save_tensors(trainable_state(model), path, meta)

    return save


def _load_with(method: str) -> Callable[[nn.Module, Path], nn.Module]:
    def load(model: nn.Module, path: Path) -> nn.Module:
        return load_tensors_strict(model, Path(path), method_param_names(model, method))

    return load


def _prepare_lora(model: nn.Module, recipe: Recipe) -> nn.Module:
    o = lora_options(recipe)
    return apply_lora(model, o["r"], o["alpha"], o["dropout"], o["targets"])


def _prepare_lora_x(model: nn.Module, recipe: Recipe) -> nn.Module:
    o = lora_options(recipe)
    if o["targets"] != LORA_DEFAULTS["targets"] or o["dropout"]:
        raise RecipeError(
            "method 'lora_x': only the options 'r' and 'alpha' apply (it always targets in_proj's x half)"
        )
    return apply_lora_x(model, o["r"], o["alpha"])


def _lora_meta(model: nn.Module) -> dict[str, Any]:
    return {"lora_targets": list(getattr(model, "lora_targets", []))}


def _prepare_partial(method: str) -> Callable[[nn.Module, Recipe], nn.Module]:
    def prepare(model: nn.Module, recipe: Recipe) -> nn.Module:
        extra = recipe.method_options
        if extra:
            raise RecipeError(f"method '{method}' takes no options, got {sorted(extra)}")
        return set_trainable(model, partial_param_names(model, method))

    return prepare


#: Adaptor variant -> MambaAdaptorConfig overrides applied on top of the recipe's ``adaptor`` mapping.
ADAPTOR_VARIANTS: dict[str, dict[str, Any]] = {
    "adaptor_t": {"temporal": True, "spatial": False},
    "adaptor_s": {"temporal": False, "spatial": True},
    "adaptor_ts": {"temporal": True, "spatial": True},
    "adaptor_static": {"temporal": True, "spatial": True, "selection": "static"},
}


def _prepare_variant(overrides: dict[str, Any]) -> Callable[[nn.Module, Recipe], nn.Module]:
    def prepare(model: nn.Module, recipe: Recipe) -> nn.Module:
        return prepare_adaptor(model, dataclasses.replace(recipe, adaptor={**recipe.adaptor, **overrides}))

    return prepare


BASELINE_METHODS: tuple[Method, ...] = (
    Method("lora", _prepare_lora, _save_with("lora", _lora_meta), _load_with("lora"), "lora.safetensors"),
    Method("lora_x", _prepare_lora_x, _save_with("lora_x"), _load_with("lora_x"), "lora_x.safetensors"),
    *(
        Method(name, _prepare_partial(name), _save_with(name), _load_with(name), f"{name}.safetensors")
        for name in PARTIAL_SELECTORS
    ),
    *(
        Method(name, _prepare_variant(overrides), save_adaptor, load_adaptor, "adaptor.safetensors")
        for name, overrides in ADAPTOR_VARIANTS.items()
    ),
)
