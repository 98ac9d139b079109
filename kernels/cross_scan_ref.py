"""Reference cross-scan / cross-merge (VMamba `scans=0`: four directions over an H x W grid).

Direction k=0 is row-major (index h*W + w), k=1 column-major (w*H + h), k=2 and k=3 are k=0
and k=1 reversed along L. Cross-merge is the adjoint: it sums the four directions back onto
the row-major grid, so merge(scan(x)) == 4 * x.
"""

from __future__ import annotations

import torch


def cross_scan_ref(x: torch.Tensor, channel_first: bool = True) -> torch.Tensor:
    """(B, D, H, W) (or (B, H, W, D) with channel_first=False) -> (B, 4, D, H*W)."""
    if not channel_first:
        x = x.permute(0, 3, 1, 2)
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    fwd = torch.stack([rows, cols], dim=1)
    return torch.cat([fwd, fwd.flip(-1)], dim=1)


def cross_merge_ref(ys: torch.Tensor) -> torch.Tensor:
    """(B, 4, D, H, W) per-direction outputs (in scan order, viewed on the grid) -> (B, D, H*W)."""
    batch, _, d, h, w = ys.shape
    seq = ys.reshape(batch, 4, d, h * w)
    t = seq[:, 0:2] + seq[:, 2:4].flip(-1)
    cols = t[:, 1].reshape(batch, d, w, h).transpose(2, 3).reshape(batch, d, h * w)
    return t[:, 0] + cols
