"""Triton selective scan (Mamba S6, VMamba conventions): chunk-tiled forward and recompute backward.

Layout and math follow `scan_ref.selective_scan_ref`: u, delta (Bt, KD, L) with any strides; A (KD, N);
B, C (Bt, G, N, L) grouped (channel c reads group c // (KD // G)); D, delta_bias (KD,).

One program owns BLOCK_R channels of one group of one batch row and walks L in tiles of BLOCK_T
steps. Inside a tile the recurrence h_t = a_t h_{t-1} + x_t is a `tl.associative_scan` over
(a, x) pairs, and the state entering the tile is injected afterwards (h = x_scan + a_scan * carry).
The forward saves the state entering every tile (`ck`); the backward visits tiles last to first,
recomputes h from `ck`, runs the adjoint g_t = C_t dy_t + dh_ext_t + a_{t+1} g_{t+1} as a reverse
scan, and reduces dB/dC over the program's channels (all in one group); programs sharing a group
then combine with atomics, or with per-program partials summed on the host (DETERMINISTIC).
All math is fp32 (fp64 for fp64 inputs); y and the states come out in that dtype, gradients in the
dtype of each input. Offsets inside one batch row are int32 (KD * N * L < 2^31).
"""

# Triton kernel arguments stay unannotated: annotations change how Triton specializes them.
# ruff: noqa: ANN001

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .triton_utils import check_device, is_interpreted, next_pow2

# Elements of one (BLOCK_R, BLOCK_N, BLOCK_T) tile on the GPU: the backward keeps ~12 such tiles live,
# so 2048 elements over 128-256 threads stays within registers (a guess until measured on a GPU).
_GPU_TILE_BUDGET = 2048
# Under the interpreter the cost is per program and per loop iteration, so use few, large programs.
_INTERP_TILE_BUDGET = 1 << 16
# Backward adjoint scan: False = time-reversed loads + forward scan + gather flip (default, safe);
# True = tl.associative_scan(reverse=True). Both are tested; flip only after a GPU run confirms it.
NATIVE_REVERSE = False
# dB/dC when several programs share a group: False = atomic adds (GPU default, order-dependent
# rounding); True = per-program partials summed on the host (bit-reproducible, more memory).
# torch.use_deterministic_algorithms(True) also selects the partials.
DETERMINISTIC = False


@triton.jit
def _softplus(z):
    # log1p(exp(z)) with Kahan's trick: log(exp(z) + 1) loses up to 1e-4 relative for z ~ -7, and
    # libdevice.log1p does not run under the interpreter. torch's threshold (20) is kept.
    e = tl.exp(tl.minimum(z, 20.0))
    w = 1.0 + e
    den = tl.where(w == 1.0, 1.0, w - 1.0)
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / den))
    return tl.where(z > 20.0, z, lp)


@triton.jit
def _first_order(a1, b1, a2, b2):
    # (a1, b1) is the earlier element: composing h -> a1 h + b1 then h -> a2 h + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _ssm_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
    y_ptr, ck_ptr, last_ptr, hs_ptr,
    L, KD, Dg, N, n_tiles, n_cblk,
    su_b, su_c, su_l, sd_b, sd_c, sd_l, sA_c, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sD, sbias,
    shs_b, shs_c, shs_n, shs_l,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_CK: tl.constexpr, STORE_STATES: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    # Every tensor is 3-D (rows, states, steps), size 1 where a quantity does not depend on an axis,
    # so the loads, the scan and the reductions share one layout (no shared-memory conversions).
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # batch offsets in int64; offsets within a batch row fit int32
    g = pid // n_cblk
    rows = (pid % n_cblk) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None, None]
    rmask = rows < Dg
    ch = g * Dg + rows
    n = tl.arange(0, BLOCK_N)[None, :, None]
    nmask = n < N
    tt = tl.arange(0, BLOCK_T)[None, None, :]
    rn_mask = rmask & nmask

    A = tl.load(A_ptr + ch * sA_c + n * sA_n, mask=rn_mask, other=0.0).to(ACC)  # (R, N, 1)
    if HAS_D:
        Dv = tl.load(D_ptr + ch * sD, mask=rmask, other=0.0).to(ACC)  # (R, 1, 1)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch * sbias, mask=rmask, other=0.0).to(ACC)

    u_rows = u_ptr + b * su_b + ch * su_c
    d_rows = dl_ptr + b * sd_b + ch * sd_c
    B_rows = B_ptr + b * sB_b + g * sB_g + n * sB_n
    C_rows = C_ptr + b * sC_b + g * sC_g + n * sC_n
    y_rows = y_ptr + b * KD * L + ch * L  # y is a fresh contiguous (Bt, KD, L) tensor
    ck_rows = ck_ptr + b * KD * n_tiles * N + ch * (n_tiles * N) + n  # (Bt, KD, n_tiles, N)
    hs_rows = hs_ptr + b * shs_b + ch * shs_c + n * shs_n

    h = tl.zeros((BLOCK_R, BLOCK_N, 1), dtype=ACC)
    for it in range(n_tiles):
        t = it * BLOCK_T + tt
        tmask = t < L
        m_rt = rmask & tmask
        m_nt = nmask & tmask
        if STORE_CK:
            tl.store(ck_rows + it * N, h, mask=rn_mask)
        u = tl.load(u_rows + t * su_l, mask=m_rt, other=0.0).to(ACC)  # (R, 1, T)
        z = tl.load(d_rows + t * sd_l, mask=m_rt, other=0.0).to(ACC)
        if HAS_BIAS:
            z = z + bias
        if SOFTPLUS:
            dt = _softplus(z)
        else:
            dt = z
        Bt = tl.load(B_rows + t * sB_l, mask=m_nt, other=0.0).to(ACC)  # (1, N, T)
        Ct = tl.load(C_rows + t * sC_l, mask=m_nt, other=0.0).to(ACC)
        # Steps past L keep the state (a = 1, x = 0) so the carry out of the last tile is h_{L-1}.
        a = tl.where(tmask, tl.exp(dt * A), 1.0)  # (R, N, T)
        x = (dt * u) * Bt
        pa, pb = tl.associative_scan((a, x), axis=2, combine_fn=_first_order)
        hs = pb + pa * h
        y = tl.sum(hs * Ct, axis=1, keep_dims=True)  # (R, 1, T)
        if HAS_D:
            y = y + Dv * u
        tl.store(y_rows + t, y, mask=m_rt)
        if STORE_STATES:
            tl.store(hs_rows + t * shs_l, hs, mask=rn_mask & tmask)
        h = tl.sum(tl.where(tt == BLOCK_T - 1, hs, 0.0), axis=2, keep_dims=True)
    tl.store(last_ptr + b * KD * N + ch * N + n, h, mask=rn_mask)


@triton.jit
def _ssm_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ck_ptr,
    dy_ptr, dh_ptr, dlast_ptr,
    du_ptr, ddl_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    L, KD, Dg, N, G, Bt, n_tiles, n_cblk,
    su_b, su_c, su_l, sd_b, sd_c, sd_l, sA_c, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sD, sbias,
    sdy_b, sdy_c, sdy_l, sdh_b, sdh_c, sdh_n, sdh_l, sdl_b, sdl_c, sdl_n,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DH: tl.constexpr, HAS_DLAST: tl.constexpr, NATIVE_REVERSE: tl.constexpr, ATOMIC_BC: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = pid // n_cblk
    blk = pid % n_cblk
    rows = blk * BLOCK_R + tl.arange(0, BLOCK_R)[:, None, None]
    rmask = rows < Dg
    ch = g * Dg + rows
    n = tl.arange(0, BLOCK_N)[None, :, None]
    nmask = n < N
    tt = tl.arange(0, BLOCK_T)[None, None, :]
    rn_mask = rmask & nmask

    A = tl.load(A_ptr + ch * sA_c + n * sA_n, mask=rn_mask, other=0.0).to(ACC)  # (R, N, 1)
    if HAS_D:
        Dv = tl.load(D_ptr + ch * sD, mask=rmask, other=0.0).to(ACC)  # (R, 1, 1)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch * sbias, mask=rmask, other=0.0).to(ACC)

    u_rows = u_ptr + b * su_b + ch * su_c
    d_rows = dl_ptr + b * sd_b + ch * sd_c
    dy_rows = dy_ptr + b * sdy_b + ch * sdy_c
    B_rows = B_ptr + b * sB_b + g * sB_g + n * sB_n
    C_rows = C_ptr + b * sC_b + g * sC_g + n * sC_n
    ck_rows = ck_ptr + b * KD * n_tiles * N + ch * (n_tiles * N) + n
    dh_rows = dh_ptr + b * sdh_b + ch * sdh_c + n * sdh_n
    du_rows = du_ptr + b * KD * L + ch * L  # du, ddelta: fresh contiguous (Bt, KD, L)
    ddl_rows = ddl_ptr + b * KD * L + ch * L
    if ATOMIC_BC:  # dB/dC: (Bt, G, N, L), zero-initialised, shared by the group's channel blocks
        bc_rows = b * G * N * L + (g * N + n) * L
    else:  # per-block partials (n_cblk, Bt, G, N, L), summed on the host
        bc_rows = (blk * Bt + b) * G * N * L + (g * N + n) * L

    if HAS_DLAST:
        dlast = tl.load(dlast_ptr + b * sdl_b + ch * sdl_c + n * sdl_n, mask=rn_mask, other=0.0).to(ACC)
    gc = tl.zeros((BLOCK_R, BLOCK_N, 1), dtype=ACC)  # adjoint at the first step of the tile to the right
    dA_acc = tl.zeros((BLOCK_R, BLOCK_N, 1), dtype=ACC)
    dD_acc = tl.zeros((BLOCK_R, 1, 1), dtype=ACC)
    db_acc = tl.zeros((BLOCK_R, 1, 1), dtype=ACC)
    for i in range(n_tiles):
        it = n_tiles - 1 - i
        t = it * BLOCK_T + tt
        tmask = t < L
        m_rt = rmask & tmask
        m_nt = nmask & tmask
        u = tl.load(u_rows + t * su_l, mask=m_rt, other=0.0).to(ACC)  # (R, 1, T)
        z = tl.load(d_rows + t * sd_l, mask=m_rt, other=0.0).to(ACC)
        if HAS_BIAS:
            z = z + bias
        if SOFTPLUS:
            dt = _softplus(z)
        else:
            dt = z
        dy = tl.load(dy_rows + t * sdy_l, mask=m_rt, other=0.0).to(ACC)
        Bv = tl.load(B_rows + t * sB_l, mask=m_nt, other=0.0).to(ACC)  # (1, N, T)
        Cv = tl.load(C_rows + t * sC_l, mask=m_nt, other=0.0).to(ACC)

        # Recompute the states of this tile from its checkpoint.
        h0 = tl.load(ck_rows + it * N, mask=rn_mask, other=0.0)  # (R, N, 1)
        a = tl.exp(dt * A)
        dtu = dt * u
        x = dtu * Bv
        pa, pb = tl.associative_scan((a, x), axis=2, combine_fn=_first_order)
        h = pb + pa * h0

        # Adjoint g_t = C_t dy_t (+ dh_ext_t) + a_{t+1} g_{t+1}, a scan backwards in time. By default
        # its inputs are loaded time-reversed (tr), scanned forwards, and the result flipped back with
        # a gather: `associative_scan(reverse=True)` with a non-commutative combine has had GPU
        # lowering bugs (triton#4362). NATIVE_REVERSE=True uses it directly (kept for GPU checks).
        if NATIVE_REVERSE:
            tr = t
        else:
            tr = it * BLOCK_T + (BLOCK_T - 1 - tt)
        trmask = tr < L
        # a_{t+1} from delta shifted by one step (0 past the end, where g is 0 anyway).
        trn = tr + 1
        zn = tl.load(d_rows + trn * sd_l, mask=rmask & (trn < L), other=0.0).to(ACC)
        if HAS_BIAS:
            zn = zn + bias
        if SOFTPLUS:
            dtn = _softplus(zn)
        else:
            dtn = zn
        an = tl.where(trn < L, tl.exp(dtn * A), 0.0)
        if NATIVE_REVERSE:
            xg = Cv * dy
        else:
            Cr = tl.load(C_rows + tr * sC_l, mask=nmask & trmask, other=0.0).to(ACC)
            dyr = tl.load(dy_rows + tr * sdy_l, mask=rmask & trmask, other=0.0).to(ACC)
            xg = Cr * dyr
        if HAS_DH:
            xg += tl.load(dh_rows + tr * sdh_l, mask=rn_mask & trmask, other=0.0).to(ACC)
        if HAS_DLAST:
            xg += tl.where(tr == L - 1, dlast, 0.0)
        if NATIVE_REVERSE:
            qa, qb = tl.associative_scan((an, xg), axis=2, combine_fn=_first_order, reverse=True)
            gg = qb + qa * gc
        else:
            qa, qb = tl.associative_scan((an, xg), axis=2, combine_fn=_first_order)
            flip = tl.broadcast_to(BLOCK_T - 1 - tt, (BLOCK_R, BLOCK_N, BLOCK_T))
            gg = tl.gather(qb + qa * gc, flip, axis=2)
        gc = tl.sum(tl.where(tt == 0, gg, 0.0), axis=2, keep_dims=True)

        ah = h - x  # a_t h_{t-1}, without needing h shifted by one step
        dC = tl.sum(dy * h, axis=0, keep_dims=True)  # (1, N, T): reduced over this block's channels
        dB = tl.sum(gg * dtu, axis=0, keep_dims=True)
        if ATOMIC_BC:  # relaxed: only the final sums matter (the default acq_rel orders every add;
            # on an H100 that made the analogous Adaptor-T scatter ~4x slower)
            tl.atomic_add(dC_ptr + bc_rows + t, dC, mask=m_nt, sem="relaxed")
            tl.atomic_add(dB_ptr + bc_rows + t, dB, mask=m_nt, sem="relaxed")
        else:
            tl.store(dC_ptr + bc_rows + t, dC, mask=m_nt)
            tl.store(dB_ptr + bc_rows + t, dB, mask=m_nt)
        gB = tl.sum(gg * Bv, axis=1, keep_dims=True)  # (R, 1, T)
        du = dt * gB
        if HAS_D:
            du += Dv * dy
            dD_acc += tl.sum(dy * u, axis=2, keep_dims=True)
        ddt = tl.sum(gg * (A * ah), axis=1, keep_dims=True) + gB * u
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(z)
        tl.store(du_rows + t, du, mask=m_rt)
        tl.store(ddl_rows + t, ddt, mask=m_rt)
        # Masked: past the end of the sequence gg is 0 only in exact arithmetic, and 0 * whatever the
        # padded lanes hold must not reach dA (an L = 1 tile gave garbage on an H100 without it).
        dA_acc += tl.sum(tl.where(m_rt, gg * (dt * ah), 0.0), axis=2, keep_dims=True)
        db_acc += tl.sum(tl.where(m_rt, ddt, 0.0), axis=2, keep_dims=True)
    tl.store(dA_ptr + b * KD * N + ch * N + n, dA_acc, mask=rn_mask)
    tl.store(dD_ptr + b * KD + ch, dD_acc, mask=rmask)
    tl.store(dbias_ptr + b * KD + ch, db_acc, mask=rmask)


class _Tiles(NamedTuple):
    rows: int  # BLOCK_R of the forward: channels of one group per program
    n: int  # BLOCK_N: next power of two >= N
    t: int  # BLOCK_T: steps per tile, the checkpoint interval (shared by forward and backward)
    warps: int
    bwd_rows: int  # the backward holds ~2x the live tiles: fewer rows, more threads per element
    bwd_warps: int


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _tiles(batch: int, groups: int, per_group: int, n: int, length: int, device: torch.device,
           chunk: int | None, block_rows: int | None) -> _Tiles:  # fmt: skip
    """Tile sizes: large tiles under the interpreter (it pays per program and step), register-sized
    tiles on the GPU, shrunk until there are about two programs per SM when the batch is small."""
    bn = next_pow2(n)
    if is_interpreted(_ssm_fwd_kernel):
        bt = chunk or min(max(next_pow2(length), 2), 32)
        br = block_rows or max(1, min(next_pow2(per_group), _INTERP_TILE_BUDGET // (bn * bt)))
        warps, bwd_rows, bwd_warps = 4, br, 4
    else:
        # Register-sized tiles; the sizes and warp counts were checked for spills with ptxas (sm_90)
        # but not timed on a GPU yet: benchmarks/gpu_check.sh is the place to retune them.
        bt = chunk or min(64 if bn <= 4 else 32, max(16, next_pow2(length)))
        br = block_rows or max(1, min(next_pow2(per_group), 64, _GPU_TILE_BUDGET // (bn * bt)))
        if block_rows is None:
            while br > 4 and batch * groups * triton.cdiv(per_group, br) < 2 * _sm_count(device):
                br //= 2
        warps = max(1, min(8, br * bn * bt // (256 if bn == 1 else 512)))
        bwd_rows = block_rows or (br if bn > 1 else min(br, 16))
        bwd_warps = max(1, min(8, 2 * warps))
    for name, v in (("chunk", bt), ("block_rows", br)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"selective_scan_triton: {name} must be a power of two, got {v}")
    if br * bn * bt > 1 << 20:
        raise ValueError(f"selective_scan_triton: tile {br}x{bn}x{bt} exceeds Triton's 2^20 elements")
    return _Tiles(br, bn, bt, warps, bwd_rows, bwd_warps)


def _acc_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _tl_dtype(dtype: torch.dtype):  # noqa: ANN202
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_shapes(u, delta, A, B, C, D, delta_bias) -> tuple[int, int, int, int, int]:  # noqa: ANN001
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan_triton: u and delta must be (B, KD, L), got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")  # fmt: skip
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"selective_scan_triton: A must be (KD={channels}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n or t.shape[3] != length:
            raise ValueError(f"selective_scan_triton: {name} must be (B={batch}, G, N={n}, L={length}), "
                             f"got {tuple(t.shape)}")  # fmt: skip
    groups = B.shape[1]
    if C.shape[1] != groups or channels % groups:
        raise ValueError(f"selective_scan_triton: {channels} channels do not split into the B/C groups "
                         f"({B.shape[1]}, {C.shape[1]})")  # fmt: skip
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(f"selective_scan_triton: {name} must be ({channels},), got {tuple(t.shape)}")
    # Offsets inside one batch row are int32 in the kernels (the batch offset is int64).
    extents = [sum((s - 1) * abs(st) for s, st in zip(t.shape[1:], t.stride()[1:])) for t in (u, delta, B, C)]
    if max(extents + [channels * n * length]) >= 2**31:
        raise ValueError(f"selective_scan_triton: one batch row of (KD={channels}, N={n}, L={length}) "
                         "spans 2^31 elements or more; split the channels")  # fmt: skip
    return batch, channels, length, n, groups


def _scan_forward(u, delta, A, B, C, D, delta_bias, softplus, store_ck, store_states, tiles):  # noqa: ANN001, ANN202
    batch, channels, length, n, groups = u.shape[0], u.shape[1], u.shape[2], A.shape[1], B.shape[1]
    dg = channels // groups
    acc = _acc_dtype(u)
    n_tiles = triton.cdiv(length, tiles.t)
    n_cblk = triton.cdiv(dg, tiles.rows)
    y = torch.empty(batch, channels, length, device=u.device, dtype=acc)
    last = torch.zeros(batch, channels, n, device=u.device, dtype=acc)
    ck = torch.empty(batch, channels, n_tiles if store_ck else 0, n, device=u.device, dtype=acc)
    states = torch.empty(batch, channels, n, length if store_states else 0, device=u.device, dtype=acc)
    hs_strides = states.stride() if store_states else (0, 0, 0, 0)
    if batch == 0 or channels == 0 or n == 0:
        return y.zero_(), last, ck.zero_(), states.zero_()
    dummy = A
    grid = (groups * n_cblk, batch)
    _ssm_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy,
        y, ck, last, states,
        length, channels, dg, n, n_tiles, n_cblk,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        D.stride(0) if D is not None else 0, delta_bias.stride(0) if delta_bias is not None else 0,
        *hs_strides,
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
        STORE_CK=store_ck, STORE_STATES=store_states, ACC=_tl_dtype(acc),
        BLOCK_R=tiles.rows, BLOCK_N=tiles.n, BLOCK_T=tiles.t, num_warps=tiles.warps,
    )  # fmt: skip
    return y, last, ck, states


def _scan_backward(saved, tiles, softplus, dy, dlast, dstates):  # noqa: ANN001, ANN202
    u, delta, A, B, C, D, delta_bias, ck = saved
    batch, channels, length = u.shape
    n, groups = A.shape[1], B.shape[1]
    dg = channels // groups
    acc = ck.dtype
    n_tiles, n_cblk = ck.shape[2], triton.cdiv(dg, tiles.bwd_rows)
    dev = u.device
    deterministic = DETERMINISTIC or torch.are_deterministic_algorithms_enabled()
    atomic = n_cblk > 1 and not deterministic
    if dy is None:
        dy = torch.zeros(batch, channels, length, device=dev, dtype=acc)
    du = torch.empty(batch, channels, length, device=dev, dtype=u.dtype)
    ddelta = torch.empty(batch, channels, length, device=dev, dtype=delta.dtype)
    dA = torch.empty(batch, channels, n, device=dev, dtype=acc)
    dD = torch.empty(batch, channels, device=dev, dtype=acc)
    dbias = torch.empty(batch, channels, device=dev, dtype=acc)
    parts = 1 if atomic else n_cblk
    alloc = torch.zeros if atomic else torch.empty
    dB = alloc(parts, batch, groups, n, length, device=dev, dtype=acc)
    dC = alloc(parts, batch, groups, n, length, device=dev, dtype=acc)
    dummy = A
    dh_strides = dstates.stride() if dstates is not None else (0, 0, 0, 0)
    dl_strides = dlast.stride() if dlast is not None else (0, 0, 0)
    grid = (groups * n_cblk, batch)
    _ssm_bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy,
        delta_bias if delta_bias is not None else dummy, ck,
        dy, dstates if dstates is not None else dummy, dlast if dlast is not None else dummy,
        du, ddelta, dA, dD, dbias, dB, dC,
        length, channels, dg, n, groups, batch, n_tiles, n_cblk,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        D.stride(0) if D is not None else 0, delta_bias.stride(0) if delta_bias is not None else 0,
        *dy.stride(), *dh_strides, *dl_strides,
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
        HAS_DH=dstates is not None, HAS_DLAST=dlast is not None, NATIVE_REVERSE=NATIVE_REVERSE,
        ATOMIC_BC=atomic, ACC=_tl_dtype(acc),
        BLOCK_R=tiles.bwd_rows, BLOCK_N=tiles.n, BLOCK_T=tiles.t, num_warps=tiles.bwd_warps,
    )  # fmt: skip
    dB = dB.sum(0) if parts > 1 else dB[0]
    dC = dC.sum(0) if parts > 1 else dC[0]
    return (
        du,
        ddelta,
        dA.sum(0).to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else None,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
    )


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, return_states, tiles, needs_grad):  # noqa: ANN001, ANN205
        # needs_grad comes from the caller: inside forward() grad mode is always off.
        y, last, ck, states = _scan_forward(
            u, delta, A, B, C, D, delta_bias, softplus, needs_grad, return_states, tiles
        )
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ck)
        ctx.softplus, ctx.tiles = softplus, tiles  # the backward must reuse the checkpoint interval
        ctx.set_materialize_grads(False)
        if not return_states:
            ctx.mark_non_differentiable(states)
        return y, last, states

    @staticmethod
    def backward(ctx, dy, dlast, dstates):  # noqa: ANN001, ANN205
        grads = _scan_backward(ctx.saved_tensors, ctx.tiles, ctx.softplus, dy, dlast, dstates)
        return (*grads, None, None, None, None)


def selective_scan_triton(
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
    *,
    chunk: int | None = None,
    block_rows: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Triton selective scan with the signature of `selective_scan_ref` (chunk/block_rows: tile overrides)."""
    device = check_device(_ssm_fwd_kernel, "selective_scan_triton", u, delta, A, B, C, D, delta_bias)
    batch, channels, length, n, groups = _check_shapes(u, delta, A, B, C, D, delta_bias)
    tiles = _tiles(batch, groups, channels // groups, n, length, device, chunk, block_rows)
    tensors = (u, delta, A, B, C, D, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    y, last, states = _SelectiveScanTriton.apply(
        *tensors, bool(delta_softplus), bool(return_states), tiles, needs_grad
    )
    out = [y]
    if return_last_state:
        out.append(last)
    if return_states:
        out.append(states)
    return out[0] if len(out) == 1 else tuple(out)


__all__ = ["selective_scan_triton"]
