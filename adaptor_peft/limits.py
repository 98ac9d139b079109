"""Size limits for configs and recipes read from files: checked before anything is built or allocated.

One place for every bound (this module imports nothing from the package, so any layer may use it).
Each bound is far above what any real model or recipe uses, so only a crafted or corrupted input
meets it; the reason is written next to each. The largest real models: the released VMamba variants
(dims up to 128-1024, depths up to 2-2-27-2, d_state up to 16, ssm_ratio up to 2, mlp_ratio 4,
patch 4) and Mamba-Adaptor b1/b2 (S=4/8 heads x K=4 points, dilations (1, 2, 3), 3x3 kernels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ADAPTOR_LIMITS",
    "MAX_FINITE_MAGNITUDE",
    "MAX_HEADS_X_POINTS",
    "MAX_RECIPE_BYTES",
    "MAX_RECIPE_DEPTH",
    "MAX_RECIPE_NODES",
    "MAX_STAGES",
    "MAX_WIDTH_BUDGET",
    "MODEL_LIMITS",
    "check_adaptor_limits",
    "check_model_limits",
]

#: MambaAdaptorConfig int fields -> largest accepted value.
ADAPTOR_LIMITS: dict[str, int] = {
    "num_points": 64,  # K: the paper uses 4, the library's tests at most 8
    "num_heads": 256,  # S: b2 uses 8; S must also divide d_inner (<= 2048 in the released models)
    "kernel_size": 31,  # Adaptor-S uses 3x3; 31 is the largest kernel large-kernel CNNs use (RepLKNet)
    "dilation": 64,  # each entry of dilations: the paper uses 1-3, the tests at most 5
    "num_dilations": 64,  # len(dilations): the paper uses 3; split mode also needs <= d_inner of each block
}
#: num_heads * num_points: the phi projections' output width (b2: 32).
MAX_HEADS_X_POINTS = 1024

#: VSSM int/float kwargs -> largest accepted value (a list-valued key: the bound of each entry).
MODEL_LIMITS: dict[str, float] = {
    "dims": 8192,  # channels of a stage: the released models use at most 1024
    "depths": 64,  # blocks in a stage: at most 27 (vanilla small/base)
    "patch_size": 64,  # 4 in every release
    "in_chans": 1024,  # 3 for RGB; hyperspectral stacks stay in the hundreds
    "num_classes": 1_000_000,  # ImageNet-22k has 21,841
    "ssm_d_state": 256,  # at most 16
    "ssm_ratio": 16.0,  # at most 2
    "mlp_ratio": 16.0,  # at most 4
    "ssm_conv": 31,  # 3 in every release
    "ssm_dt_rank": 8192,  # "auto" (dims / 16) in every release
    "imgsize": 8192,  # 224 / 384 in the releases (used only for a position embedding)
}
#: number of stages (len(depths)): 4 in every release.
MAX_STAGES = 8
#: sum over stages of depth * dim**2, which a block's parameter count (~10-20 x dim**2) follows:
#: vanilla_vmamba_base, the largest release, is 9.3M; the bound is ~29x that (a ~3B-parameter model).
MAX_WIDTH_BUDGET = 2**28

#: Largest magnitude a stored weight may have without a warning: trained weights stay below ~1e3; fp32
#: reaches 3.4e38, so a finite 1e30+ value is a corrupted or crafted file (it overflows at the first matmul).
MAX_FINITE_MAGNITUDE = 1e30

#: Recipe YAML files: bytes, nesting depth and YAML nodes. The largest bundled recipe is a few KB,
#: about 10 levels deep with a few hundred nodes.
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_DEPTH = 32
MAX_RECIPE_NODES = 100_000


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_model_limits(config: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming ``where`` and the key when a VSSM config exceeds the size limits."""
    for key, bound in MODEL_LIMITS.items():
        value = config.get(key)
        values = list(value) if isinstance(value, list | tuple) else [value]
        for v in values:
            if _number(v) and not v <= bound:  # `not <=` also refuses NaN
                raise ValueError(
                    f"{where}: model config {key}={value!r} exceeds the limit {bound} "
                    f"(adaptor_peft.limits.MODEL_LIMITS; no real VMamba comes near it): fix the config"
                )
    depths = config.get("depths")
    if isinstance(depths, list | tuple):
        if len(depths) > MAX_STAGES:
            raise ValueError(
                f"{where}: model config depths has {len(depths)} stages, more than the limit {MAX_STAGES} "
                "(adaptor_peft.limits.MAX_STAGES): fix the config"
            )
        dims = config.get("dims", 96)
        if _number(dims):
            widths = [dims * 2**i for i in range(len(depths))]
        elif isinstance(dims, list | tuple):
            widths = list(dims)
        else:
            return
        if not all(_number(d) for d in list(depths) + widths):
            return
        budget = sum(d * w * w for d, w in zip(depths, widths))
        if budget > MAX_WIDTH_BUDGET or any(w > MODEL_LIMITS["dims"] for w in widths):
            raise ValueError(
                f"{where}: model config depths={list(depths)} x dims={dims!r} is too large (sum of "
                f"depth*dim^2 = {budget:.3g}, limit {MAX_WIDTH_BUDGET:.3g}, adaptor_peft.limits."
                "MAX_WIDTH_BUDGET; ~29x the largest released VMamba): fix the config"
            )


def check_adaptor_limits(values: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming ``where`` when adaptor fields (a partial mapping is fine) exceed the limits."""
    for key in ("num_points", "num_heads", "kernel_size"):
        v = values.get(key)
        if _number(v) and not v <= ADAPTOR_LIMITS[key]:
            raise ValueError(
                f"{where}: {key}={v!r} exceeds the limit {ADAPTOR_LIMITS[key]} "
                "(adaptor_peft.limits.ADAPTOR_LIMITS; no real model comes near it): use a smaller value"
            )
    heads, points = values.get("num_heads", 1), values.get("num_points", 1)
    if _number(heads) and _number(points) and heads * points > MAX_HEADS_X_POINTS:
        raise ValueError(
            f"{where}: num_heads x num_points = {heads} x {points} exceeds the limit {MAX_HEADS_X_POINTS} "
            "(adaptor_peft.limits.MAX_HEADS_X_POINTS): use fewer heads or points"
        )
    dilations = values.get("dilations")
    if isinstance(dilations, list | tuple):
        if len(dilations) > ADAPTOR_LIMITS["num_dilations"]:
            raise ValueError(
                f"{where}: dilations holds {len(dilations)} branches, more than the limit "
                f"{ADAPTOR_LIMITS['num_dilations']} (adaptor_peft.limits.ADAPTOR_LIMITS): use fewer dilations"
            )
        for d in dilations:
            if _number(d) and not d <= ADAPTOR_LIMITS["dilation"]:
                raise ValueError(
                    f"{where}: dilations entry {d!r} exceeds the limit {ADAPTOR_LIMITS['dilation']} "
                    "(adaptor_peft.limits.ADAPTOR_LIMITS): use smaller dilations"
                )
