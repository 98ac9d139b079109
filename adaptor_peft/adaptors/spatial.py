"""Adaptor-S: multi-dilated depthwise convolutions on the merged 2-D SSM output (docs/paper_digest.md §4.4).

y (B, D, H, W), right after cross-merge and before out_norm:
- "split": the D channels are cut into M contiguous groups (sizes differ by at most 1), group m
  gets a depthwise k x k conv with dilation r_m, the results are concatenated (D channels, the
  cost of one depthwise conv);
- "sum": M full-width depthwise branches, one per dilation, summed.
Residual (y + conv(y)) or replacement (conv(y)). Identity init: zero weights with the residual,
a centred delta kernel (1/M per branch in "sum" mode) without it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MambaAdaptorConfig


def split_sizes(channels: int, parts: int) -> list[int]:
    """Contiguous group sizes for `parts` groups over `channels` (the first ones get the remainder)."""
    base, extra = divmod(channels, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class AdaptorS(nn.Module):
    """Adaptor-S for one SS2D block; forward(y) with y (B, D, H, W) channel-first, same shape out."""

    def __init__(self, channels: int, config: MambaAdaptorConfig) -> None:
        super().__init__()
        dilations, k = tuple(config.dilations), config.kernel_size
        if config.aggregation == "split" and len(dilations) > channels:
            raise ValueError(
                f"MambaAdaptorConfig.dilations: {len(dilations)} split branches do not fit "
                f"{channels} channels"
            )
        self.channels, self.dilations, self.kernel_size = channels, dilations, k
        self.split = config.aggregation == "split"
        self.residual = config.residual
        self.random_init = config.init == "random"
        widths = split_sizes(channels, len(dilations)) if self.split else [channels] * len(dilations)
        self.widths = widths
        self.convs = nn.ModuleList(
            nn.Conv2d(w, w, k, padding=r * (k - 1) // 2, dilation=r, groups=w, bias=False)
            for w, r in zip(widths, dilations)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Identity init (see module docstring) or random (PyTorch's default conv init)."""
        for conv in self.convs:
            if self.random_init:
                conv.reset_parameters()
                continue
            conv.weight.zero_()
            if not self.residual:  # replacement: a centred delta keeps y unchanged
                c = self.kernel_size // 2
                conv.weight[:, :, c, c] = 1.0 if self.split else 1.0 / len(self.convs)

    def extra_repr(self) -> str:
        """Config summary for print(model)."""
        mode = "split" if self.split else "sum"
        return f"channels={self.channels}, dilations={self.dilations}, {mode}, residual={self.residual}"

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the dilated depthwise branches; y (B, D, H, W)."""
        x = y.to(self.convs[0].weight.dtype)  # no-op normally; the merged scan output is fp32
        if self.split:
            parts = torch.split(x, self.widths, dim=1)
            out = torch.cat([conv(p) for conv, p in zip(self.convs, parts)], dim=1)
        else:
            out = self.convs[0](x)
            for conv in self.convs[1:]:
                out = out + conv(x)
        out = out.to(y.dtype)
        return y + out if self.residual else out
