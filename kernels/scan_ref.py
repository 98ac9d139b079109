"""Sequential reference selective scan (the oracle every fast path is tested against).

VMamba conventions: u, delta (B, KD, L); A (KD, N); B, C (B, G, N, L) grouped, channel c uses
group c // (KD // G); D, delta_bias (KD,). Computation runs in float32, or float64 when u is
float64, and the output has that dtype (VMamba's "oflex": fp16/bf16 in, fp32 out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def expand_groups(BC: torch.Tensor, channels: int) -> torch.Tensor:
    """Broadcast grouped (B, G, N, L) B or C to per-channel (B, KD, N, L) (a view when possible)."""
    batch, groups, n, length = BC.shape
    if channels % groups:
        raise ValueError(f"channels {channels} are not divisible by the {groups} B/C groups")
    per = channels // groups
    return BC.unsqueeze(2).expand(batch, groups, per, n, length).reshape(batch, channels, n, length)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    return_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Step-by-step selective scan; returns y, then last state (B,KD,N) and/or states (B,KD,N,L)."""
    dtype = _compute_dtype(u)
    u_, dt = u.to(dtype), delta.to(dtype)
    A_ = A.to(dtype)
    batch, channels, length = u_.shape
    n = A_.shape[1]
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bx = expand_groups(B.to(dtype), channels)
    Cx = expand_groups(C.to(dtype), channels)
    h = u_.new_zeros(batch, channels, n)
    ys, hs = [], []
    for t in range(length):
        dA = torch.exp(dt[:, :, t, None] * A_)  # (B, KD, N)
        h = dA * h + (dt[:, :, t] * u_[:, :, t])[..., None] * Bx[:, :, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
        if return_states:
            hs.append(h)
    y = torch.stack(ys, dim=-1) if length else u_.new_zeros(batch, channels, 0)
    if D is not None:
        y = y + D.to(dtype)[None, :, None] * u_
    out: list[torch.Tensor] = [y]
    if return_last_state:
        out.append(h)
    if return_states:
        out.append(torch.stack(hs, dim=-1) if length else u_.new_zeros(batch, channels, n, 0))
    return out[0] if len(out) == 1 else tuple(out)
