"""Naive reference for the Adaptor-T read-out (the oracle the fast path is tested against).

Adaptor-T augments the SSM hidden states after the scan (docs/paper_digest.md §3.4): for every token i,
head s and point k it samples the hidden-state sequence of head s at a fractional position p with
linear interpolation (zero outside [0, L-1]), weights the K samples with softmax weights c, and
reads the result out through the scan's C, scaled by a per-channel gamma:

    out[b, g*D + d, i] = gamma[g*D + d] * sum_n C[b, g, n, i] * sum_k c[b, g*S + s, k, i]
                         * lerp(h[b, g*D + d, n, :], p[b, g*S + s, k, i]),      s = d // (D / S)

with p = i + offset (relative) or p = offset (absolute). This is the correction that is added to
the scan output y (C . h + D u), i.e. y~ = C . (h + gamma * m) + D u.
"""

from __future__ import annotations

import torch


def check_readout_shapes(
    h: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, C: torch.Tensor, gamma: torch.Tensor
) -> tuple[int, int, int, int, int, int, int]:
    """Validate the read-out operands; return (batch, directions, d_inner, d_state, heads, points, L)."""
    if h.dim() != 4:
        raise ValueError(f"h must be (B, G*D, N, L), got shape {tuple(h.shape)}")
    if C.dim() != 4:
        raise ValueError(f"C must be (B, G, N, L), got shape {tuple(C.shape)}")
    batch, channels, n, length = h.shape
    groups = C.shape[1]
    if C.shape != (batch, groups, n, length) or channels % groups:
        raise ValueError(f"C shape {tuple(C.shape)} does not match h shape {tuple(h.shape)}")
    if offsets.dim() != 4 or offsets.shape[0] != batch or offsets.shape[3] != length:
        raise ValueError(f"offsets must be (B, G*S, K, L), got {tuple(offsets.shape)} for h {tuple(h.shape)}")
    if weights.shape != offsets.shape:
        raise ValueError(f"weights shape {tuple(weights.shape)} != offsets shape {tuple(offsets.shape)}")
    if offsets.shape[1] % groups:
        raise ValueError(f"offsets dim 1 ({offsets.shape[1]}) is not a multiple of the {groups} directions")
    d_inner = channels // groups
    heads = offsets.shape[1] // groups
    if d_inner % heads:
        raise ValueError(f"{heads} heads do not divide d_inner={d_inner}")
    if gamma.shape != (channels,):
        raise ValueError(f"gamma must have shape ({channels},), got {tuple(gamma.shape)}")
    return batch, groups, d_inner, n, heads, offsets.shape[2], length


def lerp_zero_pad(seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of seq (..., L) at fractional pos (...,), zero outside [0, L-1]."""
    length = seq.shape[-1]
    lo = torch.floor(pos)
    frac = pos - lo
    lo_i = lo.long()
    out = torch.zeros_like(pos)
    for idx, w in ((lo_i, 1 - frac), (lo_i + 1, frac)):
        valid = (idx >= 0) & (idx < length)
        val = torch.gather(seq, -1, idx.clamp(0, max(length - 1, 0)).unsqueeze(-1)).squeeze(-1)
        out = out + torch.where(valid, w * val, torch.zeros_like(val))
    return out


def adaptor_t_readout_ref(
    h: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
    C: torch.Tensor,
    gamma: torch.Tensor,
    relative: bool = True,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loop over tokens and points; h (B,G*D,N,L), offsets/weights (B,G*S,K,L), C (B,G,N,L) -> (B,G*D,L).

    `table` (the fast path's precomputed channel-last states) is accepted for signature parity and ignored.
    """
    batch, groups, d_inner, n, heads, points, length = check_readout_shapes(h, offsets, weights, C, gamma)
    per_head = d_inner // heads
    # (B, G, S, Dh, N, L): head s of direction g owns channels [s*Dh, (s+1)*Dh) of that direction.
    hv = h.reshape(batch, groups, heads, per_head, n, length)
    off = offsets.reshape(batch, groups, heads, points, length)
    wts = weights.reshape(batch, groups, heads, points, length)
    cols = []
    for i in range(length):
        m_i = torch.zeros_like(hv[..., 0])  # (B, G, S, Dh, N)
        for k in range(points):
            pos = off[..., k, i] + i if relative else off[..., k, i]  # (B, G, S)
            pos = pos[:, :, :, None, None].expand(batch, groups, heads, per_head, n)
            sample = lerp_zero_pad(hv, pos)
            m_i = m_i + wts[..., k, i][:, :, :, None, None] * sample
        read = (m_i * C[:, :, None, None, :, i]).sum(-1)  # (B, G, S, Dh)
        cols.append(read.reshape(batch, groups * d_inner))
    out = torch.stack(cols, dim=-1) if length else h.new_zeros(batch, groups * d_inner, 0)
    return out * gamma[None, :, None]
