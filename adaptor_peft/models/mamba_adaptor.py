"""Mamba-Adaptor-b1 / b2: VMamba-v2 backbones with Adaptor-T and Adaptor-S in every block (from scratch).

Usage (a) of the paper (docs/paper_digest.md §6.1): a general visual backbone. No weights and no architecture
table were released, so the configs below are best guesses, chosen so that this library's counter
(`adaptor_peft.flops`, 1 MAC = 1 FLOP, scan and adaptors included) lands on the paper's sizes:

- b2: VMamba-T[s1l8] (dims 96-768, depths 2-2-8-2, d_state 1, ssm_ratio 1, v05_noz, ln2d) with
  S=8 heads x K=4 points, per-direction phi: 31,647,144 params / 5.383 GFLOPs (paper 32M / 5.4G).
- b1: the same layout at half width (dims 48-384) with S=4 x K=4, per-direction phi:
  8,175,944 params / 1.398 GFLOPs (paper 7.8M / 1.4G).

Reasoning:
- b2 = VMamba-T[s1l8] + adaptors: 83.0 = 82.6 + the paper's "+0.4 with both adaptors" (the s1l8 model is
  the paper's VMamba-T), and 32M / 5.4G is VMamba-T's 30.25M / 4.91G plus ~1.5M / ~0.5G, which is what
  per-direction phi_p / phi_c with S*K = 32 in all 14 blocks cost (shared phi would add only ~0.2M).
- b1: the s1l8 layout at half width is 7.81M / 1.25G bare; the same rule for the heads (S = dims[0] / 12,
  i.e. 12 channels per head at every stage in both models) gives S=4, K=4 and 8.18M / 1.40G.
  (dims 40-320 at ssm_ratio 2 fits about as well; the half-width s1l8 keeps one family.)
- Adaptor-S: split depthwise 3x3 with dilations (1, 2, 3), residual (the library default).
- Non-identity init (`init="random"`: gamma = 1, random phi and convs), everything trainable.
- Drop path: 0.2 for b2 (VMamba-T's), 0.1 for b1 (guess: half-width models use less).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors

from .vmamba import V2_COMMON_ARGS, VSSM, checkpoint_filter_fn, vmamba_cfg

__all__ = ["MAMBA_ADAPTOR_VARIANTS", "MambaAdaptorNet", "mamba_adaptor_variant_args"]


class MambaAdaptorNet(VSSM):
    """A VSSM with Mamba-Adaptor modules built in (all parameters trainable); `adaptor` = config or dict."""

    def __init__(self, adaptor: MambaAdaptorConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        if adaptor is None:
            adaptor = MambaAdaptorConfig(init="random", share_across_directions=False)
        elif isinstance(adaptor, dict):
            adaptor = MambaAdaptorConfig.from_dict(adaptor)  # validated (limits too) before the base is built
        elif not isinstance(adaptor, MambaAdaptorConfig):
            raise TypeError(f"adaptor must be a MambaAdaptorConfig or a dict, got {type(adaptor).__name__}")
        super().__init__(**kwargs)
        inject_adaptors(self, adaptor, freeze_base=False)

    def no_weight_decay(self) -> set[str]:
        """VSSM's set plus the adaptor scales, static offsets and phi biases (2-D: timm would decay them)."""
        names = super().no_weight_decay()
        for name, _ in self.named_parameters():
            if (".adaptor_t." in name or ".adaptor_s." in name) and name.endswith(
                (".gamma", ".bias", ".static_offsets")
            ):
                names.add(name)
        return names


def _adaptor(heads: int, points: int) -> dict[str, Any]:
    return dict(
        temporal=True,
        spatial=True,
        num_heads=heads,
        num_points=points,
        share_across_directions=False,
        dilations=[1, 2, 3],
        kernel_size=3,
        aggregation="split",
        init="random",
    )


MAMBA_ADAPTOR_VARIANTS: dict[str, dict[str, Any]] = {
    "mamba_adaptor_b1": dict(
        V2_COMMON_ARGS,
        depths=[2, 2, 8, 2],
        dims=48,
        ssm_ratio=1.0,
        drop_path_rate=0.1,
        adaptor=_adaptor(4, 4),
    ),
    "mamba_adaptor_b2": dict(
        V2_COMMON_ARGS,
        depths=[2, 2, 8, 2],
        dims=96,
        ssm_ratio=1.0,
        drop_path_rate=0.2,
        adaptor=_adaptor(8, 4),
    ),
    # Tiny model for tests: the b-layout at dims 16, depths 1-1-2-1, 10 classes.
    "test_mamba_adaptor": dict(
        V2_COMMON_ARGS,
        depths=[1, 1, 2, 1],
        dims=16,
        ssm_ratio=1.0,
        drop_path_rate=0.0,
        num_classes=10,
        adaptor=_adaptor(2, 2),
    ),  # fmt: skip
}

_PAPER = dict(
    paper_ids="arXiv:2505.12685", origin_url="https://arxiv.org/abs/2505.12685", license="apache-2.0"
)
default_cfgs = generate_default_cfgs(
    {
        # No weights were released: the configs have no URL/file (pretrained=True raises in timm).
        "mamba_adaptor_b1.untrained": vmamba_cfg(**_PAPER),
        "mamba_adaptor_b2.untrained": vmamba_cfg(**_PAPER),
        "test_mamba_adaptor.untrained": vmamba_cfg(
            num_classes=10, input_size=(3, 64, 64), pool_size=(2, 2), **_PAPER
        ),
    }
)


def mamba_adaptor_variant_args(name: str) -> dict[str, Any]:
    """Constructor kwargs of a registered Mamba-Adaptor variant (a deep-enough copy)."""
    if name not in MAMBA_ADAPTOR_VARIANTS:
        raise KeyError(f"unknown Mamba-Adaptor variant {name!r}; known: {sorted(MAMBA_ADAPTOR_VARIANTS)}")
    args = dict(MAMBA_ADAPTOR_VARIANTS[name])
    args["adaptor"] = dict(args["adaptor"])
    return args


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> MambaAdaptorNet:
    args = mamba_adaptor_variant_args(variant)
    if isinstance(kwargs.get("adaptor"), dict):  # partial override of the adaptor fields
        args["adaptor"].update(kwargs.pop("adaptor"))
    model = build_model_with_cfg(
        MambaAdaptorNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(args, **kwargs),
    )
    target: nn.Module = getattr(model, "model", model)  # features_only wraps the net
    target.arch_name = variant
    return model


@register_model
def mamba_adaptor_b1(pretrained: bool = False, **kwargs: Any) -> MambaAdaptorNet:
    """Mamba-Adaptor-b1 (best guess: half-width VMamba-T[s1l8] + adaptors; 8.18M / 1.40G; paper 7.8M/1.4G)."""
    return _create("mamba_adaptor_b1", pretrained, kwargs)


@register_model
def mamba_adaptor_b2(pretrained: bool = False, **kwargs: Any) -> MambaAdaptorNet:
    """Mamba-Adaptor-b2 (best guess: VMamba-T[s1l8] + adaptors; 31.65M / 5.38G; paper 32M / 5.4G)."""
    return _create("mamba_adaptor_b2", pretrained, kwargs)


@register_model
def test_mamba_adaptor(pretrained: bool = False, **kwargs: Any) -> MambaAdaptorNet:
    """Tiny Mamba-Adaptor (dims 16, depths 1-1-2-1, S=2, K=2, 10 classes) for tests."""
    return _create("test_mamba_adaptor", pretrained, kwargs)
