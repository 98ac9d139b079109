"""Triton kernel for the Adaptor-T read-out: gather + interpolation + weighted sum + read-out through C.

Same math as `adaptor_t_ref.adaptor_t_readout_ref`, with the operands the Adaptor-T module holds:

    out[b, g*D + d, i] = gamma[g*D + d] * sum_n C[b, g, n, i] * sum_k w[b, i, g, s, k]
                         * lerp(h[b, g*D + d, n, :], pos[b, i, g, s, k]),       s = d // (D / S)

h (B, G*D, N, L), offsets/weights (B, L, G, S, K) and C (B, G, N, L) are read through their strides
(no copies: channel-major or token-major states, point-major or expand()ed offsets). Positions follow
`adaptor_t.readout_tokens`: pos = i + offset (relative) or offset, NaN -> -1, clamped to [-1, L];
tap floor(pos) gets w * (1 - frac), the next token w * frac, and a tap outside [0, L-1] reads zero.
The position gradient w * (h[lo+1] - h[lo]) is zero for NaN and outside [-1, L]; at pos == -1 and
pos == L exactly it follows the installed torch's clamp backward (2.11 passes it, 2.14 does not),
so the kernel and the torch path agree; the reference, which does not clamp, keeps it at -1.

One program owns one token tile of one head (b, g, s) and loops over the head's channels in chunks
and over n. The tap positions and weights of the tile are computed once; every channel chunk gathers
a (channels, points, tokens) tile of both taps (tokens innermost: the channel-major rows the Triton
scan returns are contiguous along L, and relative offsets keep the gathered columns close).
The backward (same grid) scatters dh with atomic adds into a zero-initialised fp32 buffer, reduces
d(weights) and d(pos) over the head's channels and n in registers (stored once, no atomics), and
writes per-head partials of dC and per-tile partials of dgamma that the host sums (deterministic).
All math is fp32 (fp64 when h is fp64); fp16/bf16 operands are cast on load.
"""

# Triton kernel arguments stay unannotated: annotations change how Triton specializes them.
# ruff: noqa: ANN001

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .triton_utils import check_device, is_interpreted, next_pow2

NAME = "adaptor_t_readout_triton"
# Elements of one (BLOCK_D, BLOCK_K, BLOCK_L) gather tile on the GPU over 4 warps. Timed on an H100
# (benchmarks/adaptor_t_kernel.py: B=64, VMamba-T stages, K=4, BLOCK_L=64): small tiles win, the
# gathers need occupancy more than reuse. Forward at stage 1: 512 elements (BLOCK_D=2) 1300 GB/s,
# 1024: 1005, 2048: 530; at stage 4 (only 512 programs) 1024 beat 512 (0.27 vs 0.34 ms). Backward:
# 512 was fastest or equal at every stage (9.6 vs 11.8 ms at stage 1 for 1024, 15.3 for 2048).
_GPU_TILE_SMALL = 512
_GPU_TILE_FEW_PROGRAMS = 1024  # forward tile when there are fewer programs than _MANY_PROGRAMS
_MANY_PROGRAMS = 1024
# Under the interpreter the cost is per program and per loop iteration: few, large programs.
_INTERP_TILE = 1 << 15


@triton.jit
def _tap_setup(off_ptr, w_ptr, b, g, s, i, L, K,
               so_b, so_l, so_g, so_s, so_k, sw_b, sw_l, sw_g, sw_s, sw_k,
               RELATIVE: tl.constexpr, CLAMP_INCLUSIVE: tl.constexpr, ACC: tl.constexpr,
               BLOCK_K: tl.constexpr):  # fmt: skip
    # Shapes (1, BLOCK_K, BLOCK_L): the two taps of every point of the token tile.
    k = tl.arange(0, BLOCK_K)[None, :, None]
    lk_mask = (k < K) & (i < L)
    off = tl.load(off_ptr + b * so_b + i * so_l + g * so_g + s * so_s + k * so_k, mask=lk_mask, other=0.0)
    w = tl.load(w_ptr + b * sw_b + i * sw_l + g * sw_g + s * sw_s + k * sw_k, mask=lk_mask, other=0.0)
    w = w.to(ACC)
    raw = off.to(ACC)
    if RELATIVE:
        raw = raw + i
    # The torch path's clamp(-1, L) passes the gradient inside (-1, L), at the bounds themselves only
    # in some torch versions (CLAMP_INCLUSIVE mirrors the installed one); NaN compares false: no gradient.
    if CLAMP_INCLUSIVE:
        slope_mask = (raw >= -1.0) & (raw <= L) & lk_mask
    else:
        slope_mask = (raw > -1.0) & (raw < L) & lk_mask
    pos = tl.where(raw != raw, -1.0, raw)  # NaN reads position -1 (a zero sample)
    pos = tl.minimum(tl.maximum(pos, -1.0), L * 1.0)
    lo = tl.floor(pos)
    frac = pos - lo
    lo_i = lo.to(tl.int32)
    valid0 = (lo_i >= 0) & (lo_i <= L - 1) & lk_mask
    valid1 = (lo_i >= -1) & (lo_i <= L - 2) & lk_mask
    upper = w * frac
    w0 = tl.where(valid0, w - upper, 0.0)
    w1 = tl.where(valid1, upper, 0.0)
    idx0 = tl.minimum(tl.maximum(lo_i, 0), L - 1)
    idx1 = tl.minimum(tl.maximum(lo_i + 1, 0), L - 1)
    return w, frac, w0, w1, idx0, idx1, valid0, valid1, slope_mask, lk_mask


@triton.jit
def _readout_fwd_kernel(
    h_ptr, off_ptr, w_ptr, C_ptr, gamma_ptr, add_ptr, out_ptr,
    L, K, N, S, Dh, GD,
    sh_b, sh_c, sh_n, sh_l, so_b, so_l, so_g, so_s, so_k, sw_b, sw_l, sw_g, sw_s, sw_k,
    sC_b, sC_g, sC_n, sC_l, s_gamma, sa_b, sa_c, sa_l,
    RELATIVE: tl.constexpr, HAS_ADD: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    # Axes: 0 = channel of the head, 1 = point k, 2 = token i (size 1 where a value does not depend on it).
    i = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)[None, None, :]
    gs = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # batch offsets in int64; offsets within a batch row fit int32
    g = gs // S
    s = gs % S
    lmask = i < L
    _, _, w0, w1, idx0, idx1, valid0, valid1, _, _ = _tap_setup(
        off_ptr, w_ptr, b, g, s, i, L, K, so_b, so_l, so_g, so_s, so_k, sw_b, sw_l, sw_g, sw_s, sw_k,
        RELATIVE, False, ACC, BLOCK_K,
    )  # fmt: skip
    C_row = C_ptr + b * sC_b + g * sC_g + i * sC_l
    for d0 in range(0, Dh, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)[:, None, None]
        dmask = dd < Dh
        ch = g * (S * Dh) + s * Dh + dd
        h_row = h_ptr + b * sh_b + ch * sh_c
        acc = tl.zeros((BLOCK_D, 1, BLOCK_L), dtype=ACC)
        for n in range(N):
            c = tl.load(C_row + n * sC_n, mask=lmask, other=0.0).to(ACC)  # (1, 1, BLOCK_L)
            v0 = tl.load(h_row + n * sh_n + idx0 * sh_l, mask=dmask & valid0, other=0.0).to(ACC)
            v1 = tl.load(h_row + n * sh_n + idx1 * sh_l, mask=dmask & valid1, other=0.0).to(ACC)
            acc += tl.sum(w0 * v0 + w1 * v1, axis=1, keep_dims=True) * c
        gam = tl.load(gamma_ptr + ch * s_gamma, mask=dmask, other=0.0).to(ACC)  # (BLOCK_D, 1, 1)
        acc = acc * gam
        if HAS_ADD:  # the scan output y: read here instead of a separate full-size add pass
            acc += tl.load(add_ptr + b * sa_b + ch * sa_c + i * sa_l, mask=dmask & lmask, other=0.0).to(ACC)
        tl.store(out_ptr + b * GD * L + ch * L + i, acc, mask=dmask & lmask)


@triton.jit
def _readout_bwd_kernel(
    h_ptr, off_ptr, w_ptr, C_ptr, gamma_ptr, dout_ptr,
    dh_ptr, doff_ptr, dw_ptr, dC_ptr, dgamma_ptr,
    L, K, N, S, Dh, GD, G, Bt, n_ltiles,
    sh_b, sh_c, sh_n, sh_l, so_b, so_l, so_g, so_s, so_k, sw_b, sw_l, sw_g, sw_s, sw_k,
    sC_b, sC_g, sC_n, sC_l, s_gamma, sdo_b, sdo_c, sdo_l,
    RELATIVE: tl.constexpr, CLAMP_INCLUSIVE: tl.constexpr, HAS_DH: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    lt = tl.program_id(0)
    i = lt * BLOCK_L + tl.arange(0, BLOCK_L)[None, None, :]
    gs = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = gs // S
    s = gs % S
    lmask = i < L
    w, frac, w0, w1, idx0, idx1, valid0, valid1, slope_mask, lk_mask = _tap_setup(
        off_ptr, w_ptr, b, g, s, i, L, K, so_b, so_l, so_g, so_s, so_k, sw_b, sw_l, sw_g, sw_s, sw_k,
        RELATIVE, CLAMP_INCLUSIVE, ACC, BLOCK_K,
    )  # fmt: skip
    C_row = C_ptr + b * sC_b + g * sC_g + i * sC_l
    nn = tl.arange(0, BLOCK_N)[:, None, None]
    dw_acc = tl.zeros((1, BLOCK_K, BLOCK_L), dtype=ACC)  # sum over channels and n of dm * C * tap value
    dslope_acc = tl.zeros((1, BLOCK_K, BLOCK_L), dtype=ACC)  # ... of dm * C * (h[lo+1] - h[lo])
    dC_acc = tl.zeros((BLOCK_N, 1, BLOCK_L), dtype=ACC)  # this head's share of dC
    for d0 in range(0, Dh, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)[:, None, None]
        dmask = dd < Dh
        ch = g * (S * Dh) + s * Dh + dd
        h_row = h_ptr + b * sh_b + ch * sh_c
        dh_row = dh_ptr + b * GD * N * L + ch * (N * L)  # dh: fresh contiguous (B, G*D, N, L)
        dout = tl.load(dout_ptr + b * sdo_b + ch * sdo_c + i * sdo_l, mask=dmask & lmask, other=0.0)
        dout = dout.to(ACC)  # (BLOCK_D, 1, BLOCK_L)
        gam = tl.load(gamma_ptr + ch * s_gamma, mask=dmask, other=0.0).to(ACC)
        dm = dout * gam
        dgam = tl.zeros((BLOCK_D, 1, 1), dtype=ACC)
        for n in range(N):
            c = tl.load(C_row + n * sC_n, mask=lmask, other=0.0).to(ACC)
            v0 = tl.load(h_row + n * sh_n + idx0 * sh_l, mask=dmask & valid0, other=0.0).to(ACC)
            v1 = tl.load(h_row + n * sh_n + idx1 * sh_l, mask=dmask & valid1, other=0.0).to(ACC)
            m = tl.sum(w0 * v0 + w1 * v1, axis=1, keep_dims=True)  # (BLOCK_D, 1, BLOCK_L)
            dgam += tl.sum(dout * c * m, axis=2, keep_dims=True)
            dc = tl.sum(dm * m, axis=0, keep_dims=True)  # (1, 1, BLOCK_L)
            dC_acc += tl.where(nn == n, dc, 0.0)
            dmc = dm * c
            diff = v1 - v0  # outside taps were loaded as 0: their value and slope terms vanish
            dw_acc += tl.sum(dmc * (v0 + frac * diff), axis=0, keep_dims=True)
            dslope_acc += tl.sum(dmc * diff, axis=0, keep_dims=True)
            if HAS_DH:  # relaxed: plain `red` adds; the default acq_rel made the backward 10x slower
                tl.atomic_add(dh_row + n * L + idx0, dmc * w0, mask=dmask & valid0, sem="relaxed")
                tl.atomic_add(dh_row + n * L + idx1, dmc * w1, mask=dmask & valid1, sem="relaxed")
        tl.store(dgamma_ptr + (b * n_ltiles + lt) * GD + ch, dgam, mask=dmask)
    k = tl.arange(0, BLOCK_K)[None, :, None]
    tok = b * L * G * S * K + i * (G * S * K) + gs * K + k  # doff, dw: fresh contiguous (B, L, G, S, K)
    tl.store(dw_ptr + tok, dw_acc, mask=lk_mask)
    tl.store(doff_ptr + tok, tl.where(slope_mask, w * dslope_acc, 0.0), mask=lk_mask)
    # dC partials (S, B, G, N, L): one slice per head, summed on the host.
    dC_rows = dC_ptr + ((s * Bt + b) * G + g) * N * L + nn * L + i
    tl.store(dC_rows, dC_acc, mask=(nn < N) & lmask)


class _Tiles(NamedTuple):
    d: int  # BLOCK_D of the forward: channels of the head per chunk
    k: int  # BLOCK_K: next power of two >= K
    l: int  # BLOCK_L: tokens per program (shared by forward and backward: the dgamma partials use it)
    warps: int
    bwd_d: int
    bwd_warps: int


def _tiles(
    per_head: int,
    points: int,
    length: int,
    interpreted: bool,
    block_d: int | None = None,
    block_l: int | None = None,
    num_warps: int | None = None,
    heads_total: int = 1,
) -> _Tiles:
    """Large tiles under the interpreter (it pays per program and loop step), register-sized on the GPU.

    heads_total = B * G * S (programs per token tile). block_d (both passes), block_l and num_warps
    override the choice (powers of two).
    """
    bk = next_pow2(points)
    if interpreted:
        bl = block_l or min(next_pow2(length), 64)
        bd = block_d or max(1, min(next_pow2(per_head), _INTERP_TILE // (bk * bl)))
        tiles = _Tiles(bd, bk, bl, num_warps or 4, bd, num_warps or 4)
    else:
        bl = block_l or min(64, max(16, next_pow2(length)))
        many = triton.cdiv(length, bl) * heads_total >= _MANY_PROGRAMS
        fwd_tile = _GPU_TILE_SMALL if many else _GPU_TILE_FEW_PROGRAMS
        bd = block_d or max(1, min(next_pow2(per_head), fwd_tile // (bk * bl)))
        bwd_d = block_d or max(1, min(next_pow2(per_head), _GPU_TILE_SMALL // (bk * bl)))
        tiles = _Tiles(bd, bk, bl, num_warps or 4, bwd_d, num_warps or 4)
    for name, v in (("block_d", tiles.d), ("block_l", tiles.l), ("num_warps", tiles.warps)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{NAME}: {name} must be a power of two, got {v}")
    if tiles.d * tiles.k * tiles.l > 1 << 20:
        raise ValueError(f"{NAME}: tile {tiles.d}x{tiles.k}x{tiles.l} exceeds Triton's 2^20 elements")
    return tiles


@functools.cache
def clamp_grad_at_bounds() -> bool:
    """Whether this torch's clamp backward passes the gradient at the bounds (2.11: yes; 2.14: no)."""
    with torch.enable_grad():
        x = torch.tensor([-1.0, 1.0], requires_grad=True)
        (grad,) = torch.autograd.grad(x.clamp(-1.0, 1.0).sum(), x)
    return bool(grad.ne(0).all())


def _acc_dtype(h: torch.Tensor) -> torch.dtype:
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def _tl_dtype(dtype: torch.dtype):  # noqa: ANN202
    return tl.float64 if dtype == torch.float64 else tl.float32


def _extent(t: torch.Tensor) -> int:
    """Largest element offset inside one batch row of t (the kernels index within a row in int32)."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


def check_shapes(
    h: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, C: torch.Tensor, gamma: torch.Tensor
) -> tuple[int, int, int, int, int, int, int]:
    """Validate (B, G*D, N, L) h, (B, L, G, S, K) offsets/weights, (B, G, N, L) C, (G*D,) gamma.

    Returns (batch, directions, d_inner, d_state, heads, points, L).
    """
    if h.dim() != 4:
        raise ValueError(f"{NAME}: h must be (B, G*D, N, L), got shape {tuple(h.shape)}")
    batch, channels, n, length = h.shape
    if C.dim() != 4 or C.shape[0] != batch or C.shape[2:] != (n, length):
        raise ValueError(f"{NAME}: C must be (B={batch}, G, N={n}, L={length}), got shape {tuple(C.shape)}")
    groups = C.shape[1]
    if groups == 0 or channels % groups:
        raise ValueError(
            f"{NAME}: the {channels} channels of h do not split into the G={groups} directions of C"
        )
    if offsets.dim() != 5 or offsets.shape[:3] != (batch, length, groups):
        raise ValueError(
            f"{NAME}: offsets must be (B={batch}, L={length}, G={groups}, S, K), "
            f"got shape {tuple(offsets.shape)}"
        )
    if weights.shape != offsets.shape:
        raise ValueError(
            f"{NAME}: weights shape {tuple(weights.shape)} != offsets shape {tuple(offsets.shape)}"
        )
    heads, points = offsets.shape[3], offsets.shape[4]
    d_inner = channels // groups
    if heads == 0 or d_inner % heads:
        raise ValueError(f"{NAME}: S={heads} heads (offsets dim 3) do not divide d_inner={d_inner}")
    if gamma.dim() != 1 or gamma.shape[0] != channels:
        raise ValueError(f"{NAME}: gamma must have shape ({channels},), got {tuple(gamma.shape)}")
    if max(_extent(h), _extent(offsets), _extent(weights), _extent(C), channels * n * length) >= 2**31:
        raise ValueError(f"{NAME}: one batch row of h {tuple(h.shape)} spans 2^31 elements or more")
    return batch, groups, d_inner, n, heads, points, length


def _forward(h, offsets, weights, C, gamma, add_to, relative, dims, tiles, in_place=False):  # noqa: ANN202
    batch, groups, d_inner, n, heads, points, length = dims
    acc = _acc_dtype(h)
    if in_place:  # contiguous, of the compute dtype: every element is read and written by one thread
        out = add_to
    else:
        out = torch.empty(batch, groups * d_inner, length, device=h.device, dtype=acc)
    if out.numel() == 0 or points == 0 or n == 0:
        if in_place:
            return out
        return out.zero_() if add_to is None else out.copy_(add_to)
    grid = (triton.cdiv(length, tiles.l), groups * heads, batch)
    _readout_fwd_kernel[grid](
        h, offsets, weights, C, gamma, add_to if add_to is not None else out, out,
        length, points, n, heads, d_inner // heads, groups * d_inner,
        *h.stride(), *offsets.stride(), *weights.stride(), *C.stride(), gamma.stride(0),
        *(add_to.stride() if add_to is not None else (0, 0, 0)),
        RELATIVE=bool(relative), HAS_ADD=add_to is not None, ACC=_tl_dtype(acc),
        BLOCK_D=tiles.d, BLOCK_K=tiles.k, BLOCK_L=tiles.l, num_warps=tiles.warps,
    )  # fmt: skip
    return out


def _backward(saved, dout, relative, dims, tiles, need_dh):  # noqa: ANN202
    h, offsets, weights, C, gamma = saved
    batch, groups, d_inner, n, heads, points, length = dims
    acc = _acc_dtype(h)
    dev = h.device
    n_ltiles = triton.cdiv(length, tiles.l)
    channels = groups * d_inner
    dh = torch.zeros(batch, channels, n, length, device=dev, dtype=acc) if need_dh else None
    doff = torch.zeros(batch, length, groups, heads, points, device=dev, dtype=acc)
    dw = torch.zeros_like(doff)
    dC = torch.zeros(heads, batch, groups, n, length, device=dev, dtype=acc)
    dgamma = torch.zeros(batch, n_ltiles, channels, device=dev, dtype=acc)
    if dout.numel() and points and n:
        grid = (n_ltiles, groups * heads, batch)
        _readout_bwd_kernel[grid](
            h, offsets, weights, C, gamma, dout,
            dh if need_dh else doff, doff, dw, dC, dgamma,
            length, points, n, heads, d_inner // heads, channels, groups, batch, n_ltiles,
            *h.stride(), *offsets.stride(), *weights.stride(), *C.stride(), gamma.stride(0), *dout.stride(),
            RELATIVE=bool(relative), CLAMP_INCLUSIVE=clamp_grad_at_bounds(), HAS_DH=need_dh,
            ACC=_tl_dtype(acc),
            BLOCK_D=tiles.bwd_d, BLOCK_K=tiles.k, BLOCK_L=tiles.l, BLOCK_N=next_pow2(n),
            num_warps=tiles.bwd_warps,
        )  # fmt: skip
    return (
        dh.to(h.dtype) if need_dh else None,
        doff.to(offsets.dtype),
        dw.to(weights.dtype),
        dC.sum(0).to(C.dtype),
        dgamma.sum((0, 1)).to(gamma.dtype),
    )


class _ReadoutTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, offsets, weights, C, gamma, add_to, relative, dims, tiles):  # noqa: ANN001, ANN205
        ctx.save_for_backward(h, offsets, weights, C, gamma)
        ctx.relative, ctx.dims, ctx.tiles = relative, dims, tiles
        ctx.add_dtype = add_to.dtype if add_to is not None else None
        return _forward(h, offsets, weights, C, gamma, add_to, relative, dims, tiles)

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001, ANN205
        need = ctx.needs_input_grad
        grads = _backward(ctx.saved_tensors, dout, ctx.relative, ctx.dims, ctx.tiles, need_dh=need[0])
        d_add = dout.to(ctx.add_dtype) if need[5] else None
        return (*(gr if need[j] else None for j, gr in enumerate(grads)), d_add, None, None, None)


def adaptor_t_readout_triton(
    h: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
    C: torch.Tensor,
    gamma: torch.Tensor,
    relative: bool = True,
    *,
    add_to: torch.Tensor | None = None,
    block_d: int | None = None,
    block_l: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Fused Adaptor-T read-out; h (B,G*D,N,L), offsets/weights (B,L,G,S,K), C (B,G,N,L) -> (B,G*D,L) fp32.

    Any strides for every operand; fp64 h computes in fp64. Differentiable in all five tensors.
    add_to (B, G*D, L), e.g. the scan output y: returns add_to + read-out in one pass (differentiable
    in add_to too); without autograd, a contiguous add_to of the compute dtype is updated in place and
    returned, as `readout_tokens(..., add_to=)` does on the CPU.
    block_d / block_l / num_warps: tile overrides (benchmarks, tests).
    """
    check_device(_readout_fwd_kernel, NAME, h, offsets, weights, C, gamma, add_to)
    dims = check_shapes(h, offsets, weights, C, gamma)
    batch, groups, d_inner, _, heads, points, length = dims
    if add_to is not None and tuple(add_to.shape) != (batch, groups * d_inner, length):
        raise ValueError(
            f"{NAME}: add_to must be (B={batch}, G*D={groups * d_inner}, L={length}), "
            f"got {tuple(add_to.shape)}"
        )
    if add_to is not None and _extent(add_to) >= 2**31:
        raise ValueError(f"{NAME}: one batch row of add_to {tuple(add_to.shape)} spans 2^31 elements or more")
    interpreted = is_interpreted(_readout_fwd_kernel)
    tiles = _tiles(d_inner // heads, points, length, interpreted, block_d, block_l, num_warps,
                   heads_total=batch * groups * heads)  # fmt: skip
    operands = (h, offsets, weights, C, gamma, add_to)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands)):
        in_place = add_to is not None and add_to.dtype == _acc_dtype(h) and add_to.is_contiguous()
        return _forward(h, offsets, weights, C, gamma, add_to, relative, dims, tiles, in_place)
    return _ReadoutTriton.apply(h, offsets, weights, C, gamma, add_to, bool(relative), dims, tiles)


__all__ = ["adaptor_t_readout_triton", "check_shapes"]
