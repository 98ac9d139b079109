"""Triton cross-scan / cross-merge (VMamba's four directions over an H x W grid), with autograd.

Same semantics as `cross_scan_ref` / `cross_merge_ref`: direction 0 is row-major (h*W + w),
1 column-major (w*H + h), 2 and 3 are 0 and 1 reversed. A program owns a (BLOCK_D, BLOCK_H,
BLOCK_W) tile of the grid and touches the four sequence positions of each cell, so every load and
store is a gather/scatter of whole tiles. Merge adds in the reference's order
((y0 + y2) + (y1 + y3)), so results are bit-identical. The backward of scan is merge and vice versa.
"""

# Triton kernel arguments stay unannotated: annotations change how Triton specializes them.
# ruff: noqa: ANN001

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_utils import check_device, is_interpreted, next_pow2


@triton.jit
def _tile_offsets(pid_hw, n_bw, H, W, Dd, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_W: tl.constexpr):  # fmt: skip
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    h = (pid_hw // n_bw) * BLOCK_H + tl.arange(0, BLOCK_H)
    w = (pid_hw % n_bw) * BLOCK_W + tl.arange(0, BLOCK_W)
    d3 = d[:, None, None].to(tl.int64)
    h3 = h[None, :, None]
    w3 = w[None, None, :]
    mask = (d3 < Dd) & (h3 < H) & (w3 < W)
    return d3, h3, w3, mask


@triton.jit
def _round_to_bf16(x):
    # fp32 -> nearest bf16 (ties to even), returned as the fp32 holding that value.
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return ((bits >> 16) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _cross_scan_kernel(
    x_ptr, out_ptr, H, W, Dd, n_bw, sx_b, sx_d, sx_h, sx_w,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(2).to(tl.int64)
    d3, h3, w3, mask = _tile_offsets(tl.program_id(0), n_bw, H, W, Dd, BLOCK_D, BLOCK_H, BLOCK_W)
    L = H * W
    v = tl.load(x_ptr + b * sx_b + d3 * sx_d + h3 * sx_h + w3 * sx_w, mask=mask)
    l_row = h3 * W + w3
    l_col = w3 * H + h3
    base = out_ptr + (b * 4 * Dd + d3) * L  # out: contiguous (B, 4, D, L)
    step = Dd * L  # one direction
    tl.store(base + l_row, v, mask=mask)
    tl.store(base + step + l_col, v, mask=mask)
    tl.store(base + 2 * step + (L - 1 - l_row), v, mask=mask)
    tl.store(base + 3 * step + (L - 1 - l_col), v, mask=mask)


@triton.jit
def _cross_merge_kernel(
    y_ptr, out_ptr, H, W, Dd, n_bw, sy_b, sy_k, sy_d, sy_l, so_b, so_d, so_h, so_w, BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(2).to(tl.int64)
    d3, h3, w3, mask = _tile_offsets(tl.program_id(0), n_bw, H, W, Dd, BLOCK_D, BLOCK_H, BLOCK_W)
    L = H * W
    l_row = h3 * W + w3
    l_col = w3 * H + h3
    base = y_ptr + b * sy_b + d3 * sy_d
    y0 = tl.load(base + l_row * sy_l, mask=mask)
    y1 = tl.load(base + sy_k + l_col * sy_l, mask=mask)
    y2 = tl.load(base + 2 * sy_k + (L - 1 - l_row) * sy_l, mask=mask)
    y3 = tl.load(base + 3 * sy_k + (L - 1 - l_col) * sy_l, mask=mask)
    # The reference's order, with every partial sum rounded to the storage dtype as torch does, so
    # results match bit for bit. bf16 is summed in fp32 and rounded to nearest-even by hand: the
    # interpreter has no bf16 arithmetic and truncates on casts.
    if BF16:
        t0 = _round_to_bf16(y0.to(tl.float32) + y2.to(tl.float32))
        t1 = _round_to_bf16(y1.to(tl.float32) + y3.to(tl.float32))
        bits = _round_to_bf16(t0 + t1).to(tl.uint32, bitcast=True) >> 16
        out = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = (y0 + y2) + (y1 + y3)
    tl.store(out_ptr + b * so_b + d3 * so_d + h3 * so_h + w3 * so_w, out, mask=mask)


def _blocks(d: int, h: int, w: int, interpret: bool) -> tuple[int, int, int]:
    if interpret:  # one program per batch row when it fits: the interpreter pays per program
        bw = next_pow2(w)
        bh = min(next_pow2(h), max(1, (1 << 14) // bw))
        bd = min(next_pow2(d), max(1, (1 << 16) // (bh * bw)))
        return bd, bh, bw
    bw = min(next_pow2(w), 32)
    bh = min(next_pow2(h), 16)
    bd = min(next_pow2(d), max(1, 2048 // (bh * bw)))
    return bd, bh, bw


def _scan(x: torch.Tensor, batch: int, d: int, h: int, w: int, strides: tuple[int, ...]) -> torch.Tensor:
    out = torch.empty(batch, 4, d, h * w, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    bd, bh, bw = _blocks(d, h, w, is_interpreted(_cross_scan_kernel))
    n_bw = triton.cdiv(w, bw)
    grid = (triton.cdiv(h, bh) * n_bw, triton.cdiv(d, bd), batch)
    _cross_scan_kernel[grid](x, out, h, w, d, n_bw, *strides, BLOCK_D=bd, BLOCK_H=bh, BLOCK_W=bw)
    return out


def _merge(ys: torch.Tensor, out: torch.Tensor, h: int, w: int, out_strides: tuple[int, ...]) -> torch.Tensor:
    """ys: (B, 4, D, L) any strides; writes the merged grid into `out` through (b, d, h, w) strides."""
    batch, _, d, _ = ys.shape
    if out.numel() == 0:
        return out
    bd, bh, bw = _blocks(d, h, w, is_interpreted(_cross_merge_kernel))
    n_bw = triton.cdiv(w, bw)
    grid = (triton.cdiv(h, bh) * n_bw, triton.cdiv(d, bd), batch)
    _cross_merge_kernel[grid](
        ys,
        out,
        h,
        w,
        d,
        n_bw,
        *ys.stride(),
        *out_strides,
        BF16=ys.dtype == torch.bfloat16,
        BLOCK_D=bd,
        BLOCK_H=bh,
        BLOCK_W=bw,
    )
    return out


def _scan_dims(x: torch.Tensor, channel_first: bool) -> tuple[int, int, int, int, tuple[int, ...]]:
    if channel_first:
        batch, d, h, w = x.shape
        sb, sd, sh, sw = x.stride()
    else:
        batch, h, w, d = x.shape
        sb, sh, sw, sd = x.stride()
    return batch, d, h, w, (sb, sd, sh, sw)


class _CrossScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, channel_first):  # noqa: ANN001, ANN205
        batch, d, h, w, strides = _scan_dims(x, channel_first)
        ctx.dims, ctx.channel_first = (batch, d, h, w), channel_first
        return _scan(x, batch, d, h, w, strides)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        batch, d, h, w = ctx.dims
        shape = (batch, d, h, w) if ctx.channel_first else (batch, h, w, d)
        dx = torch.empty(shape, device=g.device, dtype=g.dtype)
        _, _, _, _, strides = _scan_dims(dx, ctx.channel_first)
        return _merge(g, dx, h, w, strides), None


class _CrossMergeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys):  # noqa: ANN001, ANN205
        batch, _, d, h, w = ys.shape
        ctx.dims = (batch, d, h, w)
        out = torch.empty(batch, d, h * w, device=ys.device, dtype=ys.dtype)
        return _merge(ys.reshape(batch, 4, d, h * w), out, h, w, (d * h * w, h * w, w, 1))

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        batch, d, h, w = ctx.dims
        gs = g.stride()
        dys = _scan(g, batch, d, h, w, (gs[0], gs[1], gs[2] * w, gs[2]))
        return dys.view(batch, 4, d, h, w)


def cross_scan_triton(x: torch.Tensor, channel_first: bool = True) -> torch.Tensor:
    """(B, D, H, W) (or (B, H, W, D) with channel_first=False) -> (B, 4, D, H*W), as `cross_scan_ref`."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan_triton: x must be 4-D, got shape {tuple(x.shape)}")
    check_device(_cross_scan_kernel, "cross_scan_triton", x)
    return _CrossScanTriton.apply(x, bool(channel_first))


def cross_merge_triton(ys: torch.Tensor) -> torch.Tensor:
    """(B, 4, D, H, W) per-direction outputs -> (B, D, H*W), as `cross_merge_ref`."""
    if ys.dim() != 5 or ys.shape[1] != 4:
        raise ValueError(f"cross_merge_triton: ys must be (B, 4, D, H, W), got shape {tuple(ys.shape)}")
    check_device(_cross_merge_kernel, "cross_merge_triton", ys)
    return _CrossMergeTriton.apply(ys)


__all__ = ["cross_merge_triton", "cross_scan_triton"]
