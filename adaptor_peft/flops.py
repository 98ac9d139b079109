"""FLOPs and parameter counter for VMamba / Mamba-Adaptor models that counts the scan and the adaptors.

Convention (VMamba's `analyze` tools, i.e. fvcore): 1 multiply-accumulate = 1 FLOP; convolutions and
linears count their MACs (no bias), LayerNorm/GroupNorm 5 per element (4 without affine), eval
BatchNorm 2 per element (1 without affine), adaptive average pooling 1 per input element, element-wise
activations and adds count 0. On top of the layers fvcore sees, the custom ops are counted explicitly:

- SS2D internals: x_proj (B*K*(R+2N)*D*L MACs), dt_proj (B*K*D*R*L), and the selective scan
  9*B*L*(K*D)*N + B*(K*D)*L (csms6s `flops_selective_scan_fn` with the D skip, no z);
- Adaptor-T: phi_p / phi_c matmuls (counted from the real ops of the module), the gather with linear
  interpolation (2 MACs per sampled state element: two neighbours), the softmax over the K points
  (S*K per token), and the extra read-out through C (D*N per token and direction);
- Adaptor-S: its depthwise (dilated) convolutions, through the module hooks.

The model is copied to the meta device and run once on an empty input, so counting the 224x224 VMamba-T
costs well under a second and no memory; SS2D's scan core is replaced by a shape-only stub while counting.
"""

from __future__ import annotations

import copy
import types
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopReport", "count_flops", "count_params", "model_flops_summary"]

CATEGORIES = ("conv", "linear", "norm", "pool", "ssm_proj", "selective_scan", "adaptor_t", "adaptor_s")


@dataclass
class FlopReport:
    """Parameter and FLOP counts of one forward pass (1 MAC = 1 FLOP)."""

    model_name: str
    input_shape: tuple[int, int, int, int]
    params: int
    flops: int
    by_category: dict[str, int] = field(default_factory=dict)
    by_stage: dict[str, int] = field(default_factory=dict)
    params_by_category: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        """FLOPs per image in G (the per-batch total divided by the batch size)."""
        return self.flops / self.input_shape[0] / 1e9

    @property
    def mparams(self) -> float:
        """Parameters in millions."""
        return self.params / 1e6

    def __str__(self) -> str:
        b, c, h, w = self.input_shape
        lines = [
            f"model {self.model_name}  input {b}x{c}x{h}x{w}",
            f"params {self.params:,} ({self.mparams:.2f}M)   FLOPs {self.flops:,} "
            f"({self.gflops:.3f}G per image; 1 MAC = 1 FLOP, fvcore/VMamba convention)",
            "FLOPs by kind:",
        ]
        for name, value in self.by_category.items():
            if value:
                lines.append(f"  {name:<15}{value / 1e9:>10.4f}G  {100 * value / max(self.flops, 1):5.1f}%")
        lines.append("FLOPs by stage:")
        for name, value in self.by_stage.items():
            if value:
                lines.append(f"  {name:<15}{value / 1e9:>10.4f}G  {100 * value / max(self.flops, 1):5.1f}%")
        extra = {k: v for k, v in self.params_by_category.items() if v}
        if extra:
            lines.append("params: " + ", ".join(f"{k} {v:,}" for k, v in extra.items()))
        return "\n".join(lines)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _stage_of(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "layers" and len(parts) > 1:
        return f"stage{parts[1]}"
    if parts[0] in ("patch_embed", "pos_embed"):
        return "stem"
    if parts[0] == "classifier":
        return "head"
    return parts[0] or "other"


def _category_of(name: str, default: str) -> str:
    if ".adaptor_s" in name or name.startswith("adaptor_s"):
        return "adaptor_s"
    if ".adaptor_t" in name or name.startswith("adaptor_t"):
        return "adaptor_t"
    return default


def _leaf_flops(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> tuple[str, int] | None:
    """(kind, MACs) of one leaf layer call under the fvcore convention, or None if not counted."""
    if isinstance(module, nn.modules.conv._ConvNd):
        k = 1
        for s in module.kernel_size:
            k *= s
        return "conv", output.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):  # also Linear2d: out numel * in_features either layout
        return "linear", output.numel() * module.in_features
    if isinstance(module, nn.LayerNorm | nn.GroupNorm):
        affine = getattr(module, "elementwise_affine", getattr(module, "affine", False))
        return "norm", inputs[0].numel() * (5 if affine else 4)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "norm", inputs[0].numel() * (2 if module.affine else 1)
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool1d | nn.AvgPool2d):
        return "pool", inputs[0].numel()
    if isinstance(module, nn.Upsample):
        return "pool", output.numel() * (4 if module.mode == "bilinear" else 1)
    return None


def _is_ss2d(module: nn.Module) -> bool:
    return (
        type(module).__name__ == "SS2D"
        and hasattr(module, "forward_core")
        and hasattr(module, "x_proj_weight")
    )


def _adaptor_t_flops(adaptor: Any, batch: int, d_inner: int, d_state: int, h: int, w: int) -> dict[str, int]:
    """Adaptor-T MACs for one SS2D call: its matmuls (phi_p / phi_c) + gather/interp + softmax + read-out."""
    k_dirs, length = 4, h * w
    # The phi layers: count the module's own matmul/conv ops on meta inputs (robust to how the weights
    # are stored: shared Linear, stacked per-direction tensors, grouped conv...).
    hs = torch.empty(batch, k_dirs * d_inner, d_state, length, device="meta")
    cs = torch.empty(batch, k_dirs, d_state, length, device="meta")
    matmul = 0
    with FlopCounterMode(display=False) as counter:
        try:
            adaptor(hs, cs, h, w)
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: fall back below
            counter = None
    if counter is not None:
        matmul = counter.get_total_flops() // 2  # torch counts 2 FLOPs per MAC
    points, heads = _adaptor_t_points_heads(adaptor)
    if counter is None:  # formula: phi_p and phi_c are (D*N -> S*K) maps per token and direction
        static = getattr(adaptor, "selection", "dynamic") == "static"
        matmul = (1 if static else 2) * batch * k_dirs * length * d_inner * d_state * heads * points
    tokens = batch * k_dirs * length
    gather = tokens * 2 * points * d_inner * d_state  # two interpolation neighbours per point
    softmax = tokens * heads * points
    readout = tokens * d_inner * d_state
    return {"adaptor_t": matmul + gather + softmax + readout}


def _adaptor_t_points_heads(adaptor: Any) -> tuple[int, int]:
    cfg = getattr(adaptor, "config", None)
    points = next(
        (getattr(o, a) for o in (adaptor, cfg) for a in ("points", "num_points") if hasattr(o, a)), None
    )
    heads = next(
        (getattr(o, a) for o in (adaptor, cfg) for a in ("heads", "num_heads") if hasattr(o, a)), None
    )
    if points is None or heads is None:
        raise ValueError(
            f"cannot count Adaptor-T FLOPs: {type(adaptor).__name__} exposes no num_points/num_heads "
            "(attributes or .config)"
        )
    return int(points), int(heads)


def _make_core_stub(record: Any) -> Any:
    """A shape-only SS2D.forward_core that books the scan-side FLOPs and still runs Adaptor-S."""

    def forward_core(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        batch, d, h, w = x.shape
        k, n, r, length = self.K, self.d_state, self.dt_rank, h * w
        record(self, "ssm_proj", batch * k * (r + 2 * n) * d * length + batch * k * d * r * length)
        record(self, "selective_scan", 9 * batch * length * k * d * n + batch * k * d * length)
        if self.adaptor_t is not None:
            for cat, value in _adaptor_t_flops(self.adaptor_t, batch, d, n, h, w).items():
                record(self, cat, value)
        y = torch.empty(batch, d, h, w, device=x.device, dtype=torch.float32)
        if self.adaptor_s is not None:
            y = self.adaptor_s(y)
        return y

    return forward_core


def _to_meta(model: nn.Module) -> nn.Module:
    if all(p.device.type == "meta" for p in model.parameters()):
        return model
    clone = copy.deepcopy(model)
    return clone.to("meta")


def count_flops(
    model: nn.Module,
    img_size: int | tuple[int, int] = 224,
    batch: int = 1,
    in_chans: int | None = None,
    model_name: str | None = None,
) -> FlopReport:
    """Count parameters and forward FLOPs (1 MAC = 1 FLOP) of `model` on a (batch, C, H, W) input."""
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    if in_chans is None:
        first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        in_chans = first.in_channels if first is not None else 3
    params = count_params(model)
    params_by_category: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        cat = _category_of(name, "base")
        params_by_category[cat] += p.numel()

    meta = _to_meta(model)
    meta.eval()
    by_category: dict[str, int] = {c: 0 for c in CATEGORIES}
    by_stage: dict[str, int] = defaultdict(int)
    names = {m: n for n, m in meta.named_modules()}

    def record(module: nn.Module, cat: str, value: int) -> None:
        name = names.get(module, "")
        by_category[_category_of(name, cat)] += int(value)
        by_stage[_stage_of(name)] += int(value)

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        res = _leaf_flops(module, inputs, output)
        if res is not None:
            record(module, *res)

    handles = []
    patched = []
    for m in meta.modules():
        if _is_ss2d(m):
            m.forward_core = types.MethodType(_make_core_stub(record), m)
            patched.append(m)
        if len(list(m.children())) == 0 or isinstance(m, nn.Linear | nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(hook))
    try:
        x = torch.empty(batch, in_chans, *img_size, device="meta")
        with torch.no_grad():
            meta(x)
    finally:
        for hd in handles:
            hd.remove()
        for m in patched:
            del m.forward_core
    total = sum(by_category.values())
    name = model_name or getattr(model, "arch_name", None) or type(model).__name__
    return FlopReport(
        model_name=name,
        input_shape=(batch, in_chans, *img_size),
        params=params,
        flops=total,
        by_category=dict(by_category),
        by_stage=dict(by_stage),
        params_by_category=dict(params_by_category),
    )


def model_flops_summary(name: str, img_size: int | tuple[int, int] = 224, **create_kwargs: Any) -> str:
    """Build a registered model by name (random weights) and return its params/FLOPs report as text."""
    import timm

    from adaptor_peft.models import mamba_adaptor as _family  # noqa: F401  (registers b1/b2)

    if not timm.is_model(name):
        raise ValueError(
            f"unknown model {name!r}; registered VMamba / Mamba-Adaptor models: {_family_names()}"
        )
    try:  # on the meta device: no memory, no init cost (b2 builds in well under a second)
        with torch.device("meta"):
            model = timm.create_model(name, **create_kwargs)
    except (NotImplementedError, RuntimeError):  # an init that needs real data: build on the CPU
        model = timm.create_model(name, **create_kwargs)
    return str(count_flops(model, img_size=img_size, model_name=name))


def _family_names() -> str:
    import timm

    names = timm.list_models("*vmamba*") + timm.list_models("*mamba_adaptor*")
    return ", ".join(sorted(set(names)))
