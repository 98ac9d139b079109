"""Cross-scan / cross-merge for the "torch" backend: fewer copies than the reference, same numbers.

cross_scan writes the four directions straight into one (B, 4, D, L) buffer (the reference
stacks, flips and concatenates: about twice the memory traffic). Each is the other's adjoint,
so the autograd backward of one is the other. Results equal the references bit for bit (the
merge adds in the reference's order).
"""

from __future__ import annotations

import torch

__all__ = ["cross_merge_torch", "cross_scan_torch"]


def _scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, H*W)."""
    b, d, h, w = x.shape
    out = torch.empty((b, 4, d, h * w), dtype=x.dtype, device=x.device)
    out[:, 0].view(b, d, h, w).copy_(x)
    out[:, 1].view(b, d, w, h).copy_(x.transpose(2, 3))
    out[:, 2:].copy_(out[:, :2].flip(-1))
    return out


def _merge(ys: torch.Tensor) -> torch.Tensor:
    """(B, 4, D, H, W) -> (B, D, H*W)."""
    b, _, d, h, w = ys.shape
    seq = ys.reshape(b, 4, d, h * w)
    t = seq[:, 0:2] + seq[:, 2:4].flip(-1)
    return t[:, 0] + t[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, h * w)


class _CrossScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.hw = x.shape[2:]
        return _scan(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        h, w = ctx.hw
        return _merge(g.reshape(*g.shape[:3], h, w)).view(g.shape[0], g.shape[2], h, w)


class _CrossMerge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.hw = ys.shape[3:]
        return _merge(ys)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        h, w = ctx.hw
        return _scan(g.reshape(g.shape[0], g.shape[1], h, w)).view(g.shape[0], 4, g.shape[1], h, w)


def cross_scan_torch(x: torch.Tensor, channel_first: bool = True) -> torch.Tensor:
    """(B, D, H, W) (or (B, H, W, D) with channel_first=False) -> (B, 4, D, H*W)."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects a 4-D (B, D, H, W) tensor; got shape {tuple(x.shape)}")
    if not channel_first:
        x = x.permute(0, 3, 1, 2)
    return _CrossScan.apply(x)


def cross_merge_torch(ys: torch.Tensor) -> torch.Tensor:
    """(B, 4, D, H, W) per-direction outputs (scan order on the grid) -> (B, D, H*W)."""
    if ys.dim() != 5 or ys.shape[1] != 4:
        raise ValueError(f"cross_merge expects a (B, 4, D, H, W) tensor; got shape {tuple(ys.shape)}")
    return _CrossMerge.apply(ys)
