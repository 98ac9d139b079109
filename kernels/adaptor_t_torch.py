"""Fast PyTorch path for the Adaptor-T read-out (same signature as `adaptor_t_readout_ref`).

The gather + interpolation + weighted sum over K points is one `F.embedding_bag` call. The hidden
states are laid out channel-last as a table of rows (b, token, head) x (D/S * N) features (the
scan's token-major states are such a table already: no copy); every output row (b, i, head) is a
bag of 2K table rows (the two interpolation neighbours of each point) with per-sample weights
c * (1 - frac) and c * frac. Positions are clamped to [-1, L] first; a neighbour outside [0, L-1]
gets its index clamped into the sequence and a zero weight: zero padding without pad rows (and a
zero gradient beyond the padding, where the sampled value is constant). The embedding_bag kernel
sums contiguous D/S-vectors without materialising a K-times larger tensor, and its autograd gives
the gradients to h and to the per-sample weights (hence to the positions through the
interpolation slope, to the softmax weights and to C).

For N = 1 the read-out through C is folded into the per-sample weights, so the only full-size
passes are the bag sum, the gamma scale and the hand-back, plus the transpose of h into the table
when h is not token-major. Without a gradient the result is a contiguous (B, G*D, L) tensor built
per batch element through cache-sized buffers (the caller's add is then contiguous); with one it
is a (B, G*D, L) view of a channel-last buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adaptor_t_ref import check_readout_shapes

PAD_BEFORE = 0  # the table has no padding rows: token l is row l (outside taps get zero weight)


def states_table(h: torch.Tensor) -> torch.Tensor:
    """(B, G*D, N, L) -> channel-last table (B, L, G*D*N); a view (no copy) when h is token-major.

    `selective_scan_torch(..., return_states=True)` returns its states in that layout already.
    """
    batch, channels, n, length = h.shape
    return h.permute(0, 3, 1, 2).contiguous().view(batch, length, channels * n)


def adaptor_t_readout_torch(
    h: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
    C: torch.Tensor,
    gamma: torch.Tensor,
    relative: bool = True,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Vectorized Adaptor-T read-out; h (B,G*D,N,L), offsets/weights (B,G*S,K,L), C (B,G,N,L) -> (B,G*D,L).

    `table` may pass `states_table(h)` when the caller already made it (it is read instead of h).
    """
    batch, groups, d_inner, n, heads, points, length = check_readout_shapes(h, offsets, weights, C, gamma)
    # (B, L, G, S, K) views of the (B, G*S, K, L) operands
    pos = offsets.reshape(batch, groups, heads, points, length).permute(0, 4, 1, 2, 3)
    wts = weights.reshape(batch, groups, heads, points, length).permute(0, 4, 1, 2, 3)
    return readout_tokens(states_table(h) if table is None else table, pos, wts, C, gamma, relative, n)


# Opaque to torch.compile, like the scan: in-place accumulation into the caller's buffer and an
# embedding_bag gather that is already one fused pass.
@torch.compiler.disable
def readout_tokens(
    table: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
    C: torch.Tensor,
    gamma: torch.Tensor,
    relative: bool,
    d_state: int,
    add_to: torch.Tensor | None = None,
) -> torch.Tensor:
    """The read-out on a `states_table`, with offsets/weights shaped (B, L, G, S, K) in any memory layout.

    Elementwise steps run in the operands' own memory order (the Adaptor-T module passes them
    point-major, where its softmax is fast); only the final bag tensors are written token-major.
    With `add_to` (B, G*D, L) the result is `add_to + read-out`; on the CPU without autograd it is
    accumulated into add_to's memory (no full-size temporary, no separate add pass).
    """
    batch, length, groups, heads, points = offsets.shape
    n = d_state
    gs = groups * heads
    rows_per_seq = length
    d_inner = table.shape[-1] // (groups * n)
    # Row (b, j, gs) of the bag table holds the states of head gs at padded position j.
    flat = table.view(batch * rows_per_seq * gs, (d_inner // heads) * n)
    dev = table.device

    pos = offsets
    if pos.dtype in (torch.float16, torch.bfloat16):  # positions up to L need more than 8-11 bits
        pos = pos.float()
    if relative:
        pos = pos + torch.arange(length, device=dev, dtype=pos.dtype).view(1, length, 1, 1, 1)
    # NaN offsets land at -1 (a zero sample) instead of becoming out-of-range bag indices
    pos = torch.nan_to_num(pos, nan=-1.0).clamp(-1.0, float(length))  # beyond: sample is 0
    lo = torch.floor(pos)
    frac = pos - lo  # d frac / d pos = 1: the gradient reaches the offsets through the lerp slope

    # Bag indices (B, L, G, S, 2, K): the rows of (b, lo, g, s) and of the next token, clamped into
    # the sequence; a neighbour outside [0, L-1] keeps a zero weight (zero padding without pad rows).
    first = (torch.arange(batch, device=dev) * rows_per_seq).view(batch, 1, 1, 1, 1) * gs
    first = first + torch.arange(gs, device=dev).view(1, 1, groups, heads, 1)
    index_dtype = torch.int32 if flat.shape[0] + gs < 2**31 else torch.int64
    lo = lo.detach()
    indices = torch.empty(batch, length, groups, heads, 2, points, dtype=index_dtype, device=dev)
    for side, tap in enumerate((lo, lo + 1)):
        clamped = tap.clamp(0.0, float(length - 1))
        if flat.shape[0] < 2**24:  # float index arithmetic is exact here; in place, in tap's layout
            rows = clamped.mul_(gs).add_(first.to(lo.dtype))
        else:
            rows = clamped.long() * gs + first
        indices[:, :, :, :, side].copy_(rows)  # cast and re-layout in one pass

    wts = weights
    if n == 1:  # fold the read-out through C (one value per token and direction) into the weights
        wts = wts * C[:, :, 0, :].transpose(1, 2)[:, :, :, None, None]
    upper = wts * frac
    zero = torch.zeros((), dtype=upper.dtype, device=dev)
    # written token-major in one pass each (a stack would keep the operands' point-major layout)
    values = torch.empty(batch, length, groups, heads, 2, points, dtype=flat.dtype, device=dev)
    values[:, :, :, :, 0] = torch.where((lo >= 0) & (lo <= length - 1), wts - upper, zero)
    values[:, :, :, :, 1] = torch.where((lo >= -1) & (lo <= length - 2), upper, zero)
    bags = batch * length * gs
    operands = (table, offsets, weights, C, gamma, add_to)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands)
    if n == 1 and not needs_grad and not table.is_cuda:
        # CPU inference: one bag sum per batch element into an (L, G*D) buffer, scaled in place and
        # copied channel-major (a 2-D copy takes ATen's blocked transpose; adding a transposed view
        # is ~2x slower), then added to add_to[b] contiguously. Reusing one buffer per batch element
        # and accumulating in place avoids two full-size temporaries (their page faults cost as much
        # as the arithmetic).
        in_place = add_to is not None and add_to.dtype == flat.dtype
        out = add_to if in_place else flat.new_empty(batch, groups * d_inner, length)
        buf = flat.new_empty(groups * d_inner, length) if in_place else None
        idx = indices.view(batch, length * gs, 2 * points)
        val = values.view(batch, length * gs, 2 * points)
        for b in range(batch):
            m = F.embedding_bag(idx[b], flat, per_sample_weights=val[b], mode="sum")
            read_b = m.view(length, groups * d_inner).mul_(gamma).t()
            if buf is None:
                out[b].copy_(read_b)
            else:
                out[b].add_(buf.copy_(read_b))
        return out if in_place or add_to is None else add_to + out
    m = F.embedding_bag(
        indices.view(bags, 2 * points), flat, per_sample_weights=values.view(bags, 2 * points), mode="sum"
    )

    if n == 1:
        read = m.view(batch, length, groups * d_inner)
    else:
        m = m.view(batch, length, groups, d_inner, n)
        read = (m * C.permute(0, 3, 1, 2)[:, :, :, None, :]).sum(-1).reshape(batch, length, groups * d_inner)
    read = read.transpose(1, 2) * gamma[:, None]
    return read if add_to is None else add_to + read
