"""VMamba: visual state space models (Liu et al., NeurIPS 2024), checkpoint-compatible with MzeroMiko/VMamba.

The module tree and parameter names mirror the official `classification/models/vmamba.py`, so the
released checkpoints load with `load_state_dict(strict=True)` (see docs/vmamba.md). Read
top-down: building blocks, SS2D (the 2-D selective-scan mixer), VSSBlock, VSSM, checkpoint filter,
pretrained configs and the timm entry points.

Layouts: `norm_layer="ln2d"` (or "bn") runs channel-first (B, C, H, W) end to end with 1x1 convs as
linears (`Linear2d`); `norm_layer="ln"` runs channel-last (B, H, W, C) with nn.Linear. Both have the same
keys and shapes, so a checkpoint does not depend on the layout.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from adaptor_peft.kernels import dispatch as _kernels

from ..limits import check_model_limits
from .checkpoint import normalize_state_dict
from .validation import check_model_input

__all__ = [
    "LayerNorm2d",
    "Linear2d",
    "Mlp",
    "PatchMerging2D",
    "Permute",
    "SS2D",
    "VSSBlock",
    "VSSM",
    "checkpoint_filter_fn",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RELEASE_URL = "https://github.com/MzeroMiko/VMamba/releases/download/{tag}/{file}"


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------


class Linear2d(nn.Linear):
    """A 1x1 convolution stored as a 2-D Linear weight (out, in): acts on channel-first (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the weight over the channel dim of a (B, C, H, W) tensor."""
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # Official checkpoints may hold conv-style (out, in, 1, 1) weights for these layers.
        key = prefix + "weight"
        if key in state_dict and state_dict[key].dim() == 4 and state_dict[key].shape[2:] == (1, 1):
            state_dict[key] = state_dict[key].flatten(1)
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of a channel-first (B, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over C; the permutes are views (no copies)."""
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """`x.permute(*dims)` as a module (keeps the official Sequential indices)."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Permute the dims."""
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        """Show the permutation."""
        return str(self.dims)


class SoftmaxSpatial(nn.Module):
    """Softmax over the spatial positions of each channel (the `_onsoftmax` out-norm)."""

    def __init__(self, channel_first: bool) -> None:
        super().__init__()
        self.channel_first = channel_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over H*W, per channel."""
        if self.channel_first:
            b, c, h, w = x.shape
            return x.reshape(b, c, h * w).softmax(-1).view(b, c, h, w)
        b, h, w, c = x.shape
        return x.reshape(b, h * w, c).softmax(1).view(b, h, w, c)


_ACT_LAYERS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
}
_NORM_LAYERS: dict[str, type[nn.Module]] = {"ln": nn.LayerNorm, "ln2d": LayerNorm2d, "bn": nn.BatchNorm2d}


def _act_layer(act: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(act, str):
        if act.lower() not in _ACT_LAYERS:
            raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACT_LAYERS)}")
        return _ACT_LAYERS[act.lower()]
    return act


def _norm_layer(norm: str | type[nn.Module]) -> tuple[type[nn.Module], bool]:
    """Resolve a norm name to (class, channel_first)."""
    if isinstance(norm, str):
        if norm.lower() not in _NORM_LAYERS:
            raise ValueError(f"unknown norm_layer {norm!r}; expected one of {sorted(_NORM_LAYERS)}")
        return _NORM_LAYERS[norm.lower()], norm.lower() in ("ln2d", "bn")
    return norm, issubclass(norm, (LayerNorm2d, nn.BatchNorm2d))


def _maybe_permute(channel_first: bool, *dims: int) -> nn.Module:
    """Identity in channel-first mode, else the permute (keeps Sequential indices stable)."""
    return nn.Identity() if channel_first else Permute(*dims)


class PatchMerging2D(nn.Module):
    """Swin-style 2x2 patch merging (downsample v1): pad odd sizes, concat 4 phases, norm, reduce."""

    def __init__(
        self,
        dim: int,
        out_dim: int = -1,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        channel_first: bool = False,
    ) -> None:
        super().__init__()
        self.channel_first = channel_first
        linear = Linear2d if channel_first else nn.Linear
        # Built reduction-first so the state_dict order matches the official one.
        self.reduction = linear(4 * dim, 2 * dim if out_dim < 0 else out_dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C') (or the channel-first equivalent)."""
        if self.channel_first:
            h, w = x.shape[-2:]
            if h % 2 or w % 2:
                x = F.pad(x, (0, w % 2, 0, h % 2))
            parts = [x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]]
            x = torch.cat(parts, dim=1)
        else:
            h, w = x.shape[-3:-1]
            if h % 2 or w % 2:
                x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            parts = [
                x[..., 0::2, 0::2, :],
                x[..., 1::2, 0::2, :],
                x[..., 0::2, 1::2, :],
                x[..., 1::2, 1::2, :],
            ]
            x = torch.cat(parts, dim=-1)
        return self.reduction(self.norm(x))


class Mlp(nn.Module):
    """fc1 -> act -> drop -> fc2 -> drop (Linear2d in channel-first mode)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        channels_first: bool = False,
    ) -> None:
        super().__init__()
        linear = Linear2d if channels_first else nn.Linear
        self.fc1 = linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two-layer MLP."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class GatedMlp(nn.Module):
    """The official `gMlp` (gmlp=True): fc1 to 2*hidden, `fc2(x * act(z))`."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        channels_first: bool = False,
    ) -> None:
        super().__init__()
        self.channel_dim = 1 if channels_first else -1
        linear = Linear2d if channels_first else nn.Linear
        self.fc1 = linear(in_features, 2 * hidden_features)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated MLP."""
        x, z = self.fc1(x).chunk(2, dim=self.channel_dim)
        return self.drop(self.fc2(x * self.act(z)))


# ----------------------------------------------------------------------------------------------------
# SS2D: the 2-D selective-scan mixer
# ----------------------------------------------------------------------------------------------------

# Base names of the official SS2Dv2 family that share one math (they differ only in CUDA backends).
_V2_BASES = ("v01", "v02", "v03", "v04", "v05", "v2", "v3")
# Out-norm tags, stripped from the end of forward_type in this order (official grammar).
_OUT_NORM_TAGS = ("onnone", "ondwconv3", "oncnorm", "onsoftmax", "onsigmoid")


def parse_forward_type(forward_type: str) -> dict[str, Any]:
    """Split an official forward_type (e.g. "v05_noz", "v05_onsoftmax_noz") into its options."""
    if forward_type in ("v0", "v0seq"):
        return dict(base=forward_type, disable_z=False, disable_z_act=False, out_act=False, out_norm="ln")
    rest = forward_type
    flags = {}
    for tag in ("no32", "oact", "noz", "nozact"):
        flags[tag] = rest.endswith("_" + tag)
        if flags[tag]:
            rest = rest[: -len(tag) - 1]
    out_norm = "ln"
    for tag in _OUT_NORM_TAGS:
        if rest.endswith("_" + tag):
            out_norm = tag[2:]
            rest = rest[: -len(tag) - 1]
            break
    if rest not in _V2_BASES:
        raise ValueError(
            f"unsupported forward_type {forward_type!r} (base {rest!r}); supported: 'v0', 'v0seq' and "
            f"{list(_V2_BASES)} with the suffixes _noz, _nozact, _oact, _no32 and "
            f"_{'/_'.join(_OUT_NORM_TAGS)}"
        )
    return dict(
        base=rest,
        disable_z=flags["noz"],
        disable_z_act=flags["nozact"],
        out_act=flags["oact"],
        out_norm=out_norm,
    )


def _dt_init(
    d_inner: int,
    dt_rank: int,
    k: int,
    init: str,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial dt projection weight (K, D, R) and bias (K, D) for the given ssm_init."""
    if init == "v1":
        return 0.1 * torch.randn(k, d_inner, dt_rank), 0.1 * torch.randn(k, d_inner)
    if init == "v2":
        return 0.1 * torch.rand(k, d_inner, dt_rank), 0.1 * torch.rand(k, d_inner)
    # v0 (Mamba): U(+-R^-0.5) weight; bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max].
    std = dt_rank**-0.5
    weight = torch.empty(k, d_inner, dt_rank).uniform_(-std, std)
    log_dt = torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    bias = dt + torch.log(-torch.expm1(-dt))
    return weight, bias


class SS2D(nn.Module):
    """2-D selective scan (official SS2Dv0 / SS2Dv2 families) with Mamba-Adaptor hooks.

    forward: in_proj -> (split gate z) -> depthwise conv -> act -> cross-scan (4 directions) -> x_proj /
    dt_proj -> selective scan -> [adaptor_t] -> cross-merge -> [adaptor_s] -> out_norm -> (* z) -> out_proj.

    Adaptor hooks (plain attributes, not registered here, so the base state_dict is untouched until an
    adaptor module is assigned): `adaptor_t(hs, Cs, H, W, ys=ys)` gets the hidden states (B, 4*D, N, L)
    and the scan output ys (B, 4*D, L) and returns ys plus its read-out correction (it may reuse ys's
    memory); `adaptor_s(y)` maps the merged (B, D, H, W) output.
    """

    K = 4

    def __init__(
        self,
        d_model: int = 96,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        act_layer: type[nn.Module] = nn.SiLU,
        d_conv: int = 3,
        conv_bias: bool = True,
        dropout: float = 0.0,
        initialize: str = "v0",
        forward_type: str = "v2",
        channel_first: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        opts = parse_forward_type(forward_type)
        if opts["base"] in ("v0", "v0seq"):
            if channel_first:
                raise ValueError("forward_type 'v0' is channel-last only: use norm_layer='ln'")
            # The official SS2Dv0 hard-codes these.
            d_conv, conv_bias, act_layer = 3, True, nn.SiLU
        self.forward_type = forward_type
        self.channel_first = channel_first
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.disable_z = opts["disable_z"]
        self.disable_z_act = opts["disable_z_act"]
        self.scan_backend: str | None = None  # None: adaptor_peft.kernels dispatch (env ADAPTOR_PEFT_SCAN)
        self.adaptor_t: Callable[..., torch.Tensor] | None = None
        self.adaptor_s: Callable[..., torch.Tensor] | None = None
        k, d, r, n = self.K, self.d_inner, self.dt_rank, self.d_state
        linear = Linear2d if channel_first else nn.Linear

        # Own parameters first, in the official order (a module's own tensors precede its children's).
        bound = d**-0.5  # nn.Linear's default init, which the official x_proj keeps
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d).uniform_(-bound, bound))
        self.A_logs = nn.Parameter(self._a_log_init(k * d, n, initialize))
        self.Ds = nn.Parameter(torch.ones(k * d))
        dt_w, dt_b = _dt_init(d, r, k, initialize)
        self.dt_projs_weight = nn.Parameter(dt_w)
        self.dt_projs_bias = nn.Parameter(dt_b)

        d_proj = d if self.disable_z else 2 * d
        self.with_dconv = d_conv > 1 or opts["base"] in ("v0", "v0seq")
        self.act = act_layer()
        if opts["base"] in ("v0", "v0seq"):
            self.in_proj = nn.Linear(d_model, d_proj, bias=False)
            self.conv2d = nn.Conv2d(d, d, d_conv, padding=(d_conv - 1) // 2, groups=d, bias=conv_bias)
            self.out_norm = nn.LayerNorm(d)
        else:
            self.out_norm = self._make_out_norm(opts["out_norm"], d, channel_first)
            self.in_proj = linear(d_model, d_proj, bias=False)
            if d_conv > 1:
                self.conv2d = nn.Conv2d(d, d, d_conv, padding=(d_conv - 1) // 2, groups=d, bias=conv_bias)
        self.out_act = nn.GELU() if opts["out_act"] else nn.Identity()
        self.out_proj = linear(d, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @staticmethod
    def _a_log_init(channels: int, d_state: int, init: str) -> torch.Tensor:
        if init == "v1":
            return torch.randn(channels, d_state)
        if init == "v2":
            return torch.zeros(channels, d_state)
        # S4D-real: A = -(1..N) for every channel.
        return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(channels, 1)

    @staticmethod
    def _make_out_norm(kind: str, d: int, channel_first: bool) -> nn.Module:
        norm = LayerNorm2d if channel_first else nn.LayerNorm

        def dwconv3() -> list[nn.Module]:
            return [
                _maybe_permute(channel_first, 0, 3, 1, 2),
                nn.Conv2d(d, d, 3, padding=1, groups=d, bias=False),
                _maybe_permute(channel_first, 0, 2, 3, 1),
            ]

        if kind == "ln":
            return norm(d)
        if kind == "none":
            return nn.Identity()
        if kind == "dwconv3":
            return nn.Sequential(*dwconv3())
        if kind == "cnorm":
            return nn.Sequential(norm(d), *dwconv3())
        if kind == "softmax":
            return SoftmaxSpatial(channel_first)
        if kind == "sigmoid":
            return nn.Sigmoid()
        raise ValueError(f"unknown out_norm {kind!r}")

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """Scan core: (B, D, H, W) after conv/act -> merged (B, D, H, W) float32 (before out_norm)."""
        batch, d, h, w = x.shape
        k, n, r, length = self.K, self.d_state, self.dt_rank, h * w
        backend = {} if self.scan_backend is None else {"backend": self.scan_backend}
        xs = _kernels.cross_scan(x, channel_first=True, **backend)  # (B, K, D, L)
        # Grouped projections as batched matmuls: per direction k, (R+2N, D) @ (D, L).
        x_dbl = torch.matmul(self.x_proj_weight, xs)  # (B, K, R+2N, L)
        dts, Bs, Cs = x_dbl.split([r, n, n], dim=2)  # views; B/C stay grouped (B, K, N, L)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (B, K, D, L)
        # SSM parameters in fp32 (fp64 stays fp64, for gradchecks), whatever the activation dtype.
        ssm_dtype = torch.promote_types(self.A_logs.dtype, torch.float32)
        As = -torch.exp(self.A_logs.to(ssm_dtype))
        Ds = self.Ds.to(ssm_dtype)
        delta_bias = self.dt_projs_bias.reshape(-1).to(ssm_dtype)
        us = xs.reshape(batch, k * d, length)
        dts = dts.reshape(batch, k * d, length)
        if self.adaptor_t is None:
            ys = _kernels.selective_scan(
                us, dts, As, Bs, Cs, Ds, delta_bias, delta_softplus=True, backend=self.scan_backend
            )
        else:
            ys, hs = _kernels.selective_scan(
                us, dts, As, Bs, Cs, Ds, delta_bias, delta_softplus=True, return_states=True,
                backend=self.scan_backend,
            )  # fmt: skip
            ys = self.adaptor_t(hs, Cs, h, w, ys=ys)  # ys + read-out, in place when no grad is needed
        y = _kernels.cross_merge(ys.reshape(batch, k, d, h, w), **backend).view(batch, d, h, w)
        if self.adaptor_s is not None:
            y = self.adaptor_s(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) (channel-first) or (B, H, W, C) -> same layout with d_model channels."""
        x = self.in_proj(x)
        z = None
        if not self.disable_z:
            x, z = x.chunk(2, dim=1 if self.channel_first else -1)
            if not self.disable_z_act:
                z = self.act(z)
        if not self.channel_first:
            x = x.permute(0, 3, 1, 2)
        if self.with_dconv:
            x = self.conv2d(x)
        x = self.act(x)
        y = self.forward_core(x)
        if not self.channel_first:
            y = y.permute(0, 2, 3, 1)
        y = self.out_act(self.out_norm(y)).to(x.dtype)
        if z is not None:
            y = y * z
        return self.dropout(self.out_proj(y))

    def extra_repr(self) -> str:
        """Key hyper-parameters."""
        return (
            f"forward_type={self.forward_type!r}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"dt_rank={self.dt_rank}, channel_first={self.channel_first}"
        )


# ----------------------------------------------------------------------------------------------------
# Block and model
# ----------------------------------------------------------------------------------------------------


class VSSBlock(nn.Module):
    """Pre-norm block: x + drop_path(op(norm(x))), then x + drop_path(mlp(norm2(x)))."""

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        channel_first: bool = False,
        ssm_d_state: int = 16,
        ssm_ratio: float = 2.0,
        ssm_dt_rank: int | str = "auto",
        ssm_act_layer: type[nn.Module] = nn.SiLU,
        ssm_conv: int = 3,
        ssm_conv_bias: bool = True,
        ssm_drop_rate: float = 0.0,
        ssm_init: str = "v0",
        forward_type: str = "v2",
        mlp_ratio: float = 4.0,
        mlp_act_layer: type[nn.Module] = nn.GELU,
        mlp_drop_rate: float = 0.0,
        gmlp: bool = False,
        use_checkpoint: bool = False,
        post_norm: bool = False,
    ) -> None:
        super().__init__()
        self.ssm_branch = ssm_ratio > 0
        self.mlp_branch = mlp_ratio > 0
        self.grad_checkpointing = use_checkpoint
        self.post_norm = post_norm
        if self.ssm_branch:
            self.norm = norm_layer(hidden_dim)
            self.op = SS2D(
                d_model=hidden_dim,
                d_state=ssm_d_state,
                ssm_ratio=ssm_ratio,
                dt_rank=ssm_dt_rank,
                act_layer=ssm_act_layer,
                d_conv=ssm_conv,
                conv_bias=ssm_conv_bias,
                dropout=ssm_drop_rate,
                initialize=ssm_init,
                forward_type=forward_type,
                channel_first=channel_first,
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if self.mlp_branch:
            mlp_cls = GatedMlp if gmlp else Mlp
            self.norm2 = norm_layer(hidden_dim)
            self.mlp = mlp_cls(
                hidden_dim,
                int(hidden_dim * mlp_ratio),
                mlp_act_layer,
                mlp_drop_rate,
                channels_first=channel_first,
            )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ssm_branch:
            y = self.norm(self.op(x)) if self.post_norm else self.op(self.norm(x))
            x = x + self.drop_path(y)
        if self.mlp_branch:
            y = self.norm2(self.mlp(x)) if self.post_norm else self.mlp(self.norm2(x))
            x = x + self.drop_path(y)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block forward (recomputed in backward when grad checkpointing is on)."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def _patch_embed_v1(
    in_chans: int,
    dim: int,
    patch_size: int,
    patch_norm: bool,
    norm_layer: type[nn.Module],
    channel_first: bool,
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=True),
        _maybe_permute(channel_first, 0, 2, 3, 1),
        norm_layer(dim) if patch_norm else nn.Identity(),
    )


def _patch_embed_v2(
    in_chans: int,
    dim: int,
    patch_size: int,
    patch_norm: bool,
    norm_layer: type[nn.Module],
    channel_first: bool,
) -> nn.Sequential:
    # Two stride-(p/2) 3x3 convs (overlapping stem).
    stride, kernel, pad = patch_size // 2, 3, 1
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, kernel_size=kernel, stride=stride, padding=pad),
        _maybe_permute(channel_first, 0, 2, 3, 1),
        norm_layer(dim // 2) if patch_norm else nn.Identity(),
        _maybe_permute(channel_first, 0, 3, 1, 2),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, kernel_size=kernel, stride=stride, padding=pad),
        _maybe_permute(channel_first, 0, 2, 3, 1),
        norm_layer(dim) if patch_norm else nn.Identity(),
    )


def _downsample_conv(
    dim: int, out_dim: int, norm_layer: type[nn.Module], channel_first: bool, kernel: int, pad: int
) -> nn.Sequential:
    return nn.Sequential(
        _maybe_permute(channel_first, 0, 3, 1, 2),
        nn.Conv2d(dim, out_dim, kernel_size=kernel, stride=2, padding=pad),
        _maybe_permute(channel_first, 0, 2, 3, 1),
        norm_layer(out_dim),
    )


def _make_downsample(
    version: str, dim: int, out_dim: int, norm_layer: type[nn.Module], channel_first: bool
) -> nn.Module:
    if version == "v1":
        return PatchMerging2D(dim, out_dim, norm_layer=norm_layer, channel_first=channel_first)
    if version == "v2":
        return _downsample_conv(dim, out_dim, norm_layer, channel_first, kernel=2, pad=0)
    if version == "v3":
        return _downsample_conv(dim, out_dim, norm_layer, channel_first, kernel=3, pad=1)
    raise ValueError(f"unknown downsample_version {version!r}; expected 'v1', 'v2', 'v3' or 'none'")


class VSSM(nn.Module):
    """VMamba classifier/backbone; the constructor takes the official keyword names."""

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] | list[int] = (2, 2, 9, 2),
        dims: int | tuple[int, ...] | list[int] = 96,
        # SS2D
        ssm_d_state: int = 16,
        ssm_ratio: float = 2.0,
        ssm_dt_rank: int | str = "auto",
        ssm_act_layer: str | type[nn.Module] = "silu",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = True,
        ssm_drop_rate: float = 0.0,
        ssm_init: str = "v0",
        forward_type: str = "v2",
        # MLP
        mlp_ratio: float = 4.0,
        mlp_act_layer: str | type[nn.Module] = "gelu",
        mlp_drop_rate: float = 0.0,
        gmlp: bool = False,
        # model
        drop_path_rate: float = 0.1,
        patch_norm: bool = True,
        norm_layer: str | type[nn.Module] = "ln",
        downsample_version: str = "v2",
        patchembed_version: str = "v1",
        use_checkpoint: bool = False,
        posembed: bool = False,
        imgsize: int = 224,
        global_pool: str = "avg",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"VSSM got unexpected keyword arguments {sorted(kwargs)}")
        check_model_limits(
            dict(
                patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, depths=depths, dims=dims,
                ssm_d_state=ssm_d_state, ssm_ratio=ssm_ratio, ssm_dt_rank=ssm_dt_rank, ssm_conv=ssm_conv,
                mlp_ratio=mlp_ratio, imgsize=imgsize,
            ),
            "VSSM",
        )  # fmt: skip
        if global_pool not in ("avg", "") or (global_pool == "" and num_classes > 0):
            raise ValueError(f"global_pool must be 'avg', or '' with num_classes=0; got {global_pool!r}")
        if ssm_init not in ("v0", "v1", "v2"):
            raise ValueError(f"unknown ssm_init {ssm_init!r}; expected 'v0', 'v1' or 'v2'")
        norm_cls, self.channel_first = _norm_layer(norm_layer)
        ssm_act = _act_layer(ssm_act_layer)
        mlp_act = _act_layer(mlp_act_layer)
        self.num_layers = len(depths)
        if isinstance(dims, int):
            dims = [int(dims * 2**i) for i in range(self.num_layers)]
        self.dims = list(dims)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.dims[-1]
        self.patch_size = patch_size
        self.global_pool = global_pool
        self.grad_checkpointing = False
        # Input checks (models/validation.py), opt-in: zero-pad H/W up to the patch multiple instead of
        # failing, and fail fast on NaN/Inf inputs (costs an isfinite pass and a sync per forward).
        self.pad_to_patch = False
        self.check_finite = False

        # JSON-safe resolved config (used by adaptor files / info to describe the base model).
        self.model_config: dict[str, Any] = dict(
            patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, depths=list(depths),
            dims=list(self.dims), ssm_d_state=ssm_d_state, ssm_ratio=ssm_ratio, ssm_dt_rank=ssm_dt_rank,
            ssm_act_layer=ssm_act_layer if isinstance(ssm_act_layer, str) else ssm_act_layer.__name__,
            ssm_conv=ssm_conv, ssm_conv_bias=ssm_conv_bias, ssm_drop_rate=ssm_drop_rate, ssm_init=ssm_init,
            forward_type=forward_type, mlp_ratio=mlp_ratio,
            mlp_act_layer=mlp_act_layer if isinstance(mlp_act_layer, str) else mlp_act_layer.__name__,
            mlp_drop_rate=mlp_drop_rate, gmlp=gmlp, drop_path_rate=drop_path_rate, patch_norm=patch_norm,
            norm_layer=norm_layer if isinstance(norm_layer, str) else norm_layer.__name__,
            downsample_version=downsample_version, patchembed_version=patchembed_version,
            posembed=posembed, imgsize=imgsize,
        )  # fmt: skip

        self.pos_embed = None
        if posembed:
            grid = imgsize // patch_size
            self.pos_embed = nn.Parameter(torch.zeros(1, self.dims[0], grid, grid))
            trunc_normal_(self.pos_embed, std=0.02)

        if patchembed_version == "v1":
            make_embed = _patch_embed_v1
        elif patchembed_version == "v2":
            make_embed = _patch_embed_v2
        else:
            raise ValueError(f"unknown patchembed_version {patchembed_version!r}; expected 'v1' or 'v2'")
        self.patch_embed = make_embed(
            in_chans, self.dims[0], patch_size, patch_norm, norm_cls, self.channel_first
        )

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(depths):
            dim = self.dims[i]
            if i < self.num_layers - 1 and downsample_version != "none":
                downsample = _make_downsample(
                    downsample_version, dim, self.dims[i + 1], norm_cls, self.channel_first
                )
            else:
                downsample = nn.Identity()
            blocks = [
                VSSBlock(
                    hidden_dim=dim,
                    drop_path=dpr[sum(depths[:i]) + j],
                    norm_layer=norm_cls,
                    channel_first=self.channel_first,
                    ssm_d_state=ssm_d_state,
                    ssm_ratio=ssm_ratio,
                    ssm_dt_rank=ssm_dt_rank,
                    ssm_act_layer=ssm_act,
                    ssm_conv=ssm_conv,
                    ssm_conv_bias=ssm_conv_bias,
                    ssm_drop_rate=ssm_drop_rate,
                    ssm_init=ssm_init,
                    forward_type=forward_type,
                    mlp_ratio=mlp_ratio,
                    mlp_act_layer=mlp_act,
                    mlp_drop_rate=mlp_drop_rate,
                    gmlp=gmlp,
                )
                for j in range(depth)
            ]
            self.layers.append(
                nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=downsample))
            )
            # Pyramid level i = output of stage i's blocks, before its downsample.
            self.feature_info.append(
                dict(num_chs=dim, reduction=patch_size * 2**i, module=f"layers.{i}.blocks")
            )

        self.classifier = nn.Sequential(
            OrderedDict(
                norm=norm_cls(self.num_features),
                permute=_maybe_permute(self.channel_first, 0, 3, 1, 2),
                avgpool=nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity(),
                flatten=nn.Flatten(1) if global_pool else nn.Identity(),
                head=nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity(),
            )
        )
        if not self.classifier.norm.weight.is_meta:  # meta builds (shape checks) skip the slow init
            self.apply(self._init_weights)
        if use_checkpoint:
            self.set_grad_checkpointing(True)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official: trunc_normal(0.02) for every Linear (Linear2d too), LayerNorm 1/0; convs keep torch init.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm API -----------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (pos_embed, the SSM A_logs and Ds)."""
        names = {n for n, _ in self.named_parameters() if n.endswith((".A_logs", ".Ds"))}
        if self.pos_embed is not None:
            names.add("pos_embed")
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise LR decay (stem, blocks in order, then the head norm)."""
        return dict(
            stem=r"^patch_embed|^pos_embed",
            blocks=r"^layers\.(\d+)"
            if coarse
            else [
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^layers\.(\d+)\.downsample", (99999,)),  # the downsample closes its stage
                (r"^classifier\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (torch.utils.checkpoint, non-reentrant)."""
        self.grad_checkpointing = enable
        for m in self.modules():
            if isinstance(m, VSSBlock):
                m.grad_checkpointing = enable

    def set_scan_backend(self, backend: str | None) -> None:
        """Force a scan backend ("ref", "torch", "triton") in every SS2D; None = the kernels dispatch."""
        for m in self.modules():
            if isinstance(m, SS2D):
                m.scan_backend = backend

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final Linear."""
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head (num_classes=0 gives pooled features); global_pool in {"avg", ""}."""
        if global_pool == "" and num_classes > 0:
            raise ValueError("global_pool='' (no pooling) only works with num_classes=0 (no head)")
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
            self.classifier.avgpool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
            self.classifier.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        ref = self.classifier.norm.weight if hasattr(self.classifier.norm, "weight") else None
        kw = dict(device=ref.device, dtype=ref.dtype) if ref is not None else {}
        self.classifier.head = (
            nn.Linear(self.num_features, num_classes, **kw) if num_classes > 0 else nn.Identity()
        )

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            pos = self.pos_embed if self.channel_first else self.pos_embed.permute(0, 2, 3, 1)
            x = x + pos
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled, un-normed final map (B, C, H, W) channel-first or (B, H, W, C) channel-last."""
        x = check_model_input(self, x)
        x = self._embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """norm -> pool -> head; pre_logits returns the pooled features."""
        c = self.classifier
        x = c.flatten(c.avgpool(c.permute(c.norm(x))))
        return x if pre_logits else c.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.forward_head(self.forward_features(x))

    def _to_fmt(self, x: torch.Tensor, output_fmt: str) -> torch.Tensor:
        if self.channel_first:
            return x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1)
        return x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage outputs of the blocks (before each downsample), timm 1.0 semantics.

        indices: last n stages if int, all if None, else the listed ones. norm applies the head norm to
        the last stage's intermediate (the only level it fits). output_fmt: NCHW or NHWC in either layout.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        layers = self.layers if (torch.jit.is_scripting() or not stop_early) else self.layers[: max_index + 1]
        intermediates = []
        x = self._embed(check_model_input(self, x))
        last = len(self.layers) - 1
        for i, layer in enumerate(layers):
            x = layer.blocks(x)
            if i in take_indices:
                feat = self.classifier.norm(x) if (norm and i == last) else x
                intermediates.append(self._to_fmt(feat, output_fmt).contiguous())
            x = layer.downsample(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and the head) not needed for the given intermediates."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        self.layers[-1].downsample = nn.Identity()  # features are taken before it
        if max_index < len(self.dims) - 1 or prune_norm:
            self.num_features = self.head_hidden_size = self.dims[max_index]
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# ----------------------------------------------------------------------------------------------------
# Checkpoints, configs, registration
# ----------------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official checkpoint -> this model: unwrap, legacy names, 4-D 1x1 weights, pos_embed resize."""
    state_dict = normalize_state_dict(state_dict)
    pos = state_dict.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is not None and target is not None and pos.shape != target.shape:
        state_dict["pos_embed"] = F.interpolate(pos.float(), size=target.shape[-2:], mode="bicubic").to(
            pos.dtype
        )
    return state_dict


def vmamba_cfg(file: str = "", tag: str = "#v2cls", **kwargs: Any) -> dict[str, Any]:
    """timm pretrained_cfg of a VMamba-family model (data config, head name, release URL of `file`)."""
    return {
        "url": _RELEASE_URL.format(tag=tag.replace("#", "%23"), file=file) if file else "",
        "notes": (f"official checkpoint: {file} (release {tag})",) if file else (),
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "patch_embed.0",
        "classifier": "classifier.head",
        "license": "mit",
        "paper_ids": "arXiv:2401.10166",
        "origin_url": "https://github.com/MzeroMiko/VMamba",
        **kwargs,
    }


# Official constructor arguments of the nine released ImageNet-1K classifiers (docs/vmamba.md §2.2) and the
# name of each in tests/data/conformance/released_variants_keys.json.
V2_COMMON_ARGS = dict(
    patch_size=4, in_chans=3, num_classes=1000, ssm_d_state=1, ssm_dt_rank="auto", ssm_act_layer="silu",
    ssm_conv=3, ssm_conv_bias=False, ssm_drop_rate=0.0, ssm_init="v0", forward_type="v05_noz", mlp_ratio=4.0,
    mlp_act_layer="gelu", mlp_drop_rate=0.0, gmlp=False, patch_norm=True, norm_layer="ln2d",
    downsample_version="v3", patchembed_version="v2", posembed=False, imgsize=224,
)  # fmt: skip
_V0_COMMON = dict(
    patch_size=4, in_chans=3, num_classes=1000, ssm_d_state=16, ssm_ratio=2.0, ssm_dt_rank="auto",
    ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=True, ssm_drop_rate=0.0, ssm_init="v0", forward_type="v0",
    mlp_ratio=0.0, mlp_act_layer="gelu", mlp_drop_rate=0.0, gmlp=False, patch_norm=True, norm_layer="ln",
    downsample_version="v1", patchembed_version="v1", posembed=False, imgsize=224,
)  # fmt: skip

RELEASED_VARIANTS: dict[str, dict[str, Any]] = {
    "vmamba_tiny_s1l8": dict(
        release_name="vssm1_tiny_0230s",
        file="vssm1_tiny_0230s_ckpt_epoch_264.pth",
        tag="#v2cls",
        args=dict(V2_COMMON_ARGS, depths=[2, 2, 8, 2], dims=96, ssm_ratio=1.0, drop_path_rate=0.2),
    ),
    "vmamba_small_s1l20": dict(
        release_name="vssm1_small_0229s",
        file="vssm1_small_0229s_ckpt_epoch_240.pth",
        tag="#v2cls",
        args=dict(V2_COMMON_ARGS, depths=[2, 2, 20, 2], dims=96, ssm_ratio=1.0, drop_path_rate=0.3),
    ),
    "vmamba_base_s1l20": dict(
        release_name="vssm1_base_0229s",
        file="vssm1_base_0229s_ckpt_epoch_225.pth",
        tag="#v2cls",
        args=dict(V2_COMMON_ARGS, depths=[2, 2, 20, 2], dims=128, ssm_ratio=1.0, drop_path_rate=0.5),
    ),
    "vmamba_tiny_s2l5": dict(
        release_name="vssm_tiny_0230",
        file="vssm_tiny_0230_ckpt_epoch_262.pth",
        tag="#v2cls",
        args=dict(V2_COMMON_ARGS, depths=[2, 2, 5, 2], dims=96, ssm_ratio=2.0, drop_path_rate=0.2),
    ),
    "vmamba_small_s2l15": dict(
        release_name="vssm_small_0229",
        file="vssm_small_0229_ckpt_epoch_222.pth",
        tag="#v2cls",
        args=dict(V2_COMMON_ARGS, depths=[2, 2, 15, 2], dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
    ),
    "vmamba_base_s2l15": dict(
        release_name="vssm_base_0229",
        file="vssm_base_0229_ckpt_epoch_237.pth",
        tag="#v2cls",
        args=dict(V2_COMMON_ARGS, depths=[2, 2, 15, 2], dims=128, ssm_ratio=2.0, drop_path_rate=0.6),
    ),
    "vanilla_vmamba_tiny": dict(
        release_name="vanilla_vmamba_tiny",
        file="vssmtiny_dp01_ckpt_epoch_292.pth",
        tag="#v0cls",
        args=dict(_V0_COMMON, depths=[2, 2, 9, 2], dims=96, drop_path_rate=0.2),
    ),
    "vanilla_vmamba_small": dict(
        release_name="vanilla_vmamba_small",
        file="vssmsmall_dp03_ckpt_epoch_238.pth",
        tag="#v0cls",
        args=dict(_V0_COMMON, depths=[2, 2, 27, 2], dims=96, drop_path_rate=0.3),
    ),
    "vanilla_vmamba_base": dict(
        release_name="vanilla_vmamba_base",
        file="vssmbase_dp06_ckpt_epoch_241.pth",
        tag="#v0cls",
        args=dict(_V0_COMMON, depths=[2, 2, 27, 2], dims=128, drop_path_rate=0.6),
    ),
}

# A tiny model for tests: the released v2 layout (0230s) at dims 16.
_TEST_ARGS = dict(
    V2_COMMON_ARGS, depths=[1, 1, 2, 1], dims=16, ssm_ratio=1.0, drop_path_rate=0.0, num_classes=10
)

default_cfgs = generate_default_cfgs(
    {
        **{f"{name}.in1k": vmamba_cfg(v["file"], v["tag"]) for name, v in RELEASED_VARIANTS.items()},
        "test_vmamba": vmamba_cfg(num_classes=10, input_size=(3, 64, 64), pool_size=(2, 2)),
    }
)


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs: Any) -> VSSM:
    model = build_model_with_cfg(
        VSSM,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )
    model.arch_name = variant
    return model


def _released(name: str, pretrained: bool, kwargs: dict[str, Any]) -> VSSM:
    return _create_vmamba(name, pretrained=pretrained, **dict(RELEASED_VARIANTS[name]["args"], **kwargs))


@register_model
def vmamba_tiny_s1l8(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-T[s1l8] (vssm1_tiny_0230s, 30.2M params, 82.6% IN-1k): the paper's VMamba-T."""
    return _released("vmamba_tiny_s1l8", pretrained, kwargs)


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-S[s1l20] (vssm1_small_0229s, 49.0M params, 83.3%)."""
    return _released("vmamba_small_s1l20", pretrained, kwargs)


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-B[s1l20] (vssm1_base_0229s, 86.6M params, 83.8%)."""
    return _released("vmamba_base_s1l20", pretrained, kwargs)


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-T[s2l5] (vssm_tiny_0230, 30.7M params, 82.5%)."""
    return _released("vmamba_tiny_s2l5", pretrained, kwargs)


@register_model
def vmamba_small_s2l15(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-S[s2l15] (vssm_small_0229, 50.1M params, 83.6%): the paper's VMamba-S."""
    return _released("vmamba_small_s2l15", pretrained, kwargs)


@register_model
def vmamba_base_s2l15(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """VMamba-B[s2l15] (vssm_base_0229, 88.6M params, 83.9%): the paper's VMamba-B."""
    return _released("vmamba_base_s2l15", pretrained, kwargs)


@register_model
def vanilla_vmamba_tiny(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """Vanilla-VMamba-T (v0, 22.9M params, 82.2%)."""
    return _released("vanilla_vmamba_tiny", pretrained, kwargs)


@register_model
def vanilla_vmamba_small(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """Vanilla-VMamba-S (v0, 44.4M params, 83.5%)."""
    return _released("vanilla_vmamba_small", pretrained, kwargs)


@register_model
def vanilla_vmamba_base(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """Vanilla-VMamba-B (v0, 76.3M params, 83.7%)."""
    return _released("vanilla_vmamba_base", pretrained, kwargs)


@register_model
def test_vmamba(pretrained: bool = False, **kwargs: Any) -> VSSM:
    """Tiny v05_noz / ln2d model (dims 16, depths 1-1-2-1, 10 classes) for tests."""
    return _create_vmamba("test_vmamba", pretrained=pretrained, **dict(_TEST_ARGS, **kwargs))


def released_variant_args(name: str) -> dict[str, Any]:
    """Official constructor kwargs of a registered released variant (a copy)."""
    if name not in RELEASED_VARIANTS:
        if name == "test_vmamba":
            return dict(_TEST_ARGS)
        raise KeyError(f"unknown VMamba variant {name!r}; known: {sorted(RELEASED_VARIANTS)}")
    return dict(RELEASED_VARIANTS[name]["args"])
