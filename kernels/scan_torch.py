"""Fast PyTorch selective scan for CPU: exact two-level chunked scan with a hand-written backward.

Layout: the sequence (length L, padded to nC chunks of T steps) is held time-major, i.e. as
(T, Bt, G, P, nC, N) with channel c = g * P + p. One "step" then updates every chunk of every
channel at once with a single contiguous `addcmul`, so a scan costs about 2T + nC Python-level
ops instead of L. Per chunk the forward
  1. scans from a zero state to get the chunk's end state,
  2. carries the true entry state across chunks (nC small steps, decay exp(A * sum dt)),
  3. re-scans the chunk from its entry state, writing every h_t.
No log-space cumsums (they overflow, docs/scan.md section 4.1): every product of decays is formed
by multiplication or exp of a sum of dt * A, which is <= 0.

The backward (docs/scan.md section 1.2) recomputes h from the saved chunk-entry states and runs the
same two-level scan in reverse for the adjoint g_t = C_t dy_t + dh_ext_t + abar_{t+1} g_{t+1}.
When a gradient is needed the forward keeps u, delta + bias and dt in time-major layout (about
3 x (B, KD, L) floats, plus N/T of that for the chunk states), so the backward repeats neither
the softplus nor the transposes; nothing is kept under no_grad.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["default_chunk_size", "selective_scan_torch"]


def default_chunk_size(length: int) -> int:
    """Chunk length T ~ sqrt(L) clamped to 32..64; one chunk when L fits in it."""
    t = min(64, max(32, round(math.sqrt(max(length, 1)))))
    return max(1, min(t, length))


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


# (Bt, KD, nC, T) -> (T, Bt, KD, nC)
_SEQ = (3, 0, 1, 2)
# (Bt, G, N, nC, T) -> (T, Bt, G, nC, N); also states (Bt, KD, N, nC, T) -> (T, Bt, KD, nC, N)
_GRP = (4, 0, 1, 3, 2)


def _to_time_major(
    x: torch.Tensor,
    T: int,
    nC: int,
    perm: tuple[int, ...],
    dtype: torch.dtype,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """(*lead, L) -> contiguous buffer whose (*lead, nC, T) view is permuted by `perm`; zero padded.

    `add` (broadcastable to (*lead, 1, 1)) is added during the same copy; padding gets it too.
    """
    *lead, length = x.shape
    full = length // T
    rem = length - full * T
    shape = (*lead, nC, T)
    buf = torch.empty([shape[p] for p in perm], dtype=dtype, device=x.device)
    view = buf.permute(_inverse(perm))  # (*lead, nC, T), writes land time-major
    if full:
        src = x[..., : full * T].reshape(*lead, full, T)
        if add is None:
            view[..., :full, :].copy_(src)
        else:
            torch.add(src, add, out=view[..., :full, :])
    if rem:
        tail = view[..., full, :]
        if add is None:
            tail[..., :rem].copy_(x[..., full * T :])
            tail[..., rem:].zero_()
        else:
            torch.add(x[..., full * T :], add[..., 0], out=tail[..., :rem])
            tail[..., rem:].copy_(add[..., 0].expand_as(tail[..., rem:]))
    return buf


def _from_time_major(
    buf: torch.Tensor,
    length: int,
    T: int,
    perm: tuple[int, ...],
    plus: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Inverse of `_to_time_major`: back to a contiguous (*lead, L) tensor (padding dropped).

    `plus = (v, s)` adds v * s during the same copy, with v laid out like `buf` and s
    broadcastable to (*lead, 1, 1) (the D skip term).
    """
    view = buf.permute(_inverse(perm))  # (*lead, nC, T)
    lead = view.shape[:-2]
    full = length // T
    rem = length - full * T
    out = torch.empty((*lead, length), dtype=buf.dtype, device=buf.device)
    pv = None if plus is None else plus[0].permute(_inverse(perm))
    if full:
        dst = out[..., : full * T].view(*lead, full, T)
        if pv is None:
            dst.copy_(view[..., :full, :])
        else:
            torch.addcmul(view[..., :full, :], pv[..., :full, :], plus[1], out=dst)
    if rem:
        if pv is None:
            out[..., full * T :].copy_(view[..., full, :rem])
        else:
            torch.addcmul(
                view[..., full, :rem], pv[..., full, :rem], plus[1][..., 0], out=out[..., full * T :]
            )
    return out


def softplus_fp32(z: torch.Tensor) -> torch.Tensor:
    """Accurate softplus from vectorized exp/log (ATen's log1p is scalar on CPU, ~3x slower).

    log1p(e) = log(w) + (e - (w - 1)) / w with w = 1 + e: the second term restores the
    rounding error of w (the softplus pitfall of docs/scan.md section 4.4). exp is clamped at 80
    (no overflow); beyond that softplus(z) = z, which the final maximum supplies
    (softplus(z) >= z everywhere).
    """
    e = torch.clamp_max(z, 80.0).exp_()
    w = e + 1.0
    e.sub_(torch.sub(w, 1.0)).div_(w)  # rounding correction
    return torch.maximum(w.log_().add_(e), z, out=w)


class _Geometry:
    """Shapes shared by forward and backward."""

    def __init__(self, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, chunk_size: int | None) -> None:
        self.Bt, self.KD, self.L = u.shape
        self.N = A.shape[1]
        self.G = B.shape[1]
        if self.KD % self.G:
            raise ValueError(f"channels {self.KD} are not divisible by the {self.G} B/C groups")
        self.P = self.KD // self.G
        self.T = chunk_size if chunk_size is not None else default_chunk_size(self.L)
        self.nC = max(1, -(-self.L // self.T))


def _prep_dt(
    delta: torch.Tensor,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    geo: _Geometry,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (z, dt) in (T, Bt, G, P, nC): z = delta + bias (fused in the transpose), dt = softplus(z)."""
    bias = None if delta_bias is None else delta_bias.to(dtype).view(geo.KD, 1, 1)
    z = _to_time_major(delta, geo.T, geo.nC, _SEQ, dtype, add=bias)
    z = z.view(geo.T, geo.Bt, geo.G, geo.P, geo.nC)
    if not softplus:
        return z, z
    dt = F.softplus(z) if z.dtype == torch.float64 else softplus_fp32(z)
    return z, dt


# Per-step updates touch Bt*G*P*nC*N elements. When that is small, ATen's OpenMP fork/join per
# op costs more than the work (and stalls badly on a loaded machine), so the step is cut into
# pieces below ATen's parallel grain (32768) that run inline; large steps stay parallel.
_GRAIN = 32000
_SPLIT_BELOW = 1 << 18


def _pieces(m: int) -> list[tuple[int, int]]:
    if m >= _SPLIT_BELOW:
        return [(0, m)]
    k = max(1, -(-m // _GRAIN))
    step = -(-m // k)
    return [(lo, min(m, lo + step)) for lo in range(0, m, step)]


def _step_loop(
    a: torch.Tensor, x: torch.Tensor, init: torch.Tensor | None, *, reverse: bool, in_place: bool
) -> torch.Tensor | None:
    """First-order recurrence along dim 0 of (T, ...) tensors, per element of the rest.

    Forward:  s_t = a_t s_{t-1} + x_t, s_{-1} = init.
    Reverse:  s_t = a_{t+1} s_{t+1} + x_t, s_{T-1} = x_{T-1} + init (init already decayed).
    in_place writes every s_t into x; otherwise only the final s (t = T-1, or 0 in reverse) is
    returned and x is left untouched.
    """
    T = x.shape[0]
    m = x[0].numel()
    a2, x2 = a.reshape(T, m), x.view(T, m)
    i2 = None if init is None else init.reshape(m)
    end = None if in_place else torch.empty(m, dtype=x.dtype, device=x.device)
    for lo, hi in _pieces(m):
        ap, xp = a2[:, lo:hi], x2[:, lo:hi]
        ip = None if i2 is None else i2[lo:hi]
        if in_place:
            if not reverse:
                if ip is not None:
                    xp[0].addcmul_(ap[0], ip)
                for t in range(1, T):
                    xp[t].addcmul_(ap[t], xp[t - 1])
            else:
                if ip is not None:
                    xp[T - 1].add_(ip)
                for t in range(T - 2, -1, -1):
                    xp[t].addcmul_(ap[t + 1], xp[t + 1])
        else:
            sp = end[lo:hi]
            first = 0 if not reverse else T - 1
            sp.copy_(xp[first])
            if ip is not None:
                sp.addcmul_(ap[0], ip) if not reverse else sp.add_(ip)
            steps = range(1, T) if not reverse else range(T - 2, -1, -1)
            for t in steps:
                torch.addcmul(xp[t], ap[t] if not reverse else ap[t + 1], sp, out=sp)
    return None if in_place else end.view(x.shape[1:])


def _scan_chunks(a: torch.Tensor, x: torch.Tensor, h_in: torch.Tensor) -> None:
    """In place x <- h: h_t = a_t h_{t-1} + x_t along dim 0, with h_{-1} = h_in per chunk."""
    _step_loop(a, x, h_in, reverse=False, in_place=True)


def _entry_states(
    a: torch.Tensor, x: torch.Tensor, decay: torch.Tensor, h0: torch.Tensor | None
) -> torch.Tensor:
    """State entering each chunk (Bt, G, P, nC, N); `decay` is the whole-chunk decay product."""
    nC = x.shape[-2]
    h_in = torch.zeros_like(x[0])
    if h0 is not None:
        h_in[..., 0, :] = h0
    if nC == 1:
        return h_in
    end = _step_loop(a, x, None, reverse=False, in_place=False)  # chunk-local, from zero
    for c in range(1, nC):
        torch.addcmul(end[..., c - 1, :], decay[..., c - 1, :], h_in[..., c - 1, :], out=h_in[..., c, :])
    return h_in


def _reverse_scan_chunks(a: torch.Tensor, w: torch.Tensor, dt: torch.Tensor, A_b: torch.Tensor) -> None:
    """In place w <- g with g_t = w_t + a_{t+1} g_{t+1} over the whole (chunked) sequence."""
    nC = w.shape[-2]
    carry = None
    if nC > 1:
        local = _step_loop(a, w, None, reverse=True, in_place=False)  # g at chunk start, zero carry
        # decay from the carry (entering at t = T-1 with weight 1) down to t = 0 of the chunk
        q = torch.exp((dt.sum(0) - dt[0]).unsqueeze(-1) * A_b[0])
        carry = torch.zeros_like(local)
        for c in range(nC - 1, 0, -1):
            g0 = torch.addcmul(local[..., c, :], q[..., c, :], carry[..., c, :])
            torch.mul(a[0][..., c, :], g0, out=carry[..., c - 1, :])
    _step_loop(a, w, carry, reverse=True, in_place=True)


def _decay_and_input(
    geo: _Geometry, u_tm: torch.Tensor, dt: torch.Tensor, A_b: torch.Tensor, B_tm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """abar = exp(dt A) and x = dt u B, both (T, Bt, G, P, nC, N)."""
    shape = (geo.T, geo.Bt, geo.G, geo.P, geo.nC, geo.N)
    a = torch.empty(shape, dtype=dt.dtype, device=dt.device)
    torch.mul(dt.unsqueeze(-1), A_b, out=a).exp_()
    x = torch.empty(shape, dtype=dt.dtype, device=dt.device)
    if geo.N == 1:
        torch.mul(dt, u_tm, out=x[..., 0]).mul_(B_tm[..., 0])
    else:
        torch.mul((dt * u_tm).unsqueeze(-1), B_tm, out=x)
    return a, x


def _token_major_states(h: torch.Tensor, spare: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    """Time-major h (T, Bt, G, P, nC, N) -> token-major states (Bt, L, KD, N), written into spare's memory.

    Token-major rows (KD*N contiguous features per token) are what Adaptor-T gathers from, so it
    reads them without another transpose. The copy runs one step t at a time: each piece is a
    batch of small (KD, nC) -> (nC, KD) transposes that stay in cache (a single strided copy of
    the whole tensor is about 1.5x slower).
    """
    T, Bt, KD, nC, N, L = geo.T, geo.Bt, geo.KD, geo.nC, geo.N, geo.L
    hv = h.view(T, Bt, KD, nC, N)
    out = spare.view(-1)[: Bt * L * KD * N].view(Bt, L, KD, N)
    full, rem = L // T, L % T
    if full:
        dst = out[:, : full * T].unflatten(1, (full, T))  # (Bt, full, T, KD, N)
        for t in range(T):
            dst[:, :, t].copy_(hv[t, :, :, :full].transpose(1, 2))
    if rem:
        out[:, full * T :].copy_(hv[:rem, :, :, full].transpose(0, 1))
    return out


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        softplus: bool,
        return_last_state: bool,
        return_states: bool,
        chunk_size: int | None,
    ):
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        geo = _Geometry(u, A, B, chunk_size)
        T, nC, G, P, N, Bt, KD, L = geo.T, geo.nC, geo.G, geo.P, geo.N, geo.Bt, geo.KD, geo.L
        u_tm = _to_time_major(u, T, nC, _SEQ, dtype).view(T, Bt, G, P, nC)
        z, dt = _prep_dt(delta, delta_bias, softplus, geo, dtype)
        B_tm = _to_time_major(B, T, nC, _GRP, dtype).unsqueeze(3)  # (T, Bt, G, 1, nC, N)
        C_tm = _to_time_major(C, T, nC, _GRP, dtype).unsqueeze(3)
        A_b = A.to(dtype).view(1, 1, G, P, 1, N)
        a, h = _decay_and_input(geo, u_tm, dt, A_b, B_tm)
        decay = torch.exp(dt.sum(0).unsqueeze(-1) * A_b[0])
        h_in = _entry_states(a, h, decay, None)
        del decay
        _scan_chunks(a, h, h_in)
        # the decays are dead now: their (already paged-in) buffer receives the states
        states = _token_major_states(h, a, geo) if return_states else None
        del a
        if N == 1:
            y = h[..., 0] * C_tm[..., 0]
        else:
            y = (h * C_tm).sum(-1)
        plus = None if D is None else (u_tm.view(T, Bt, KD, nC), D.to(dtype).view(KD, 1, 1))
        outs = [_from_time_major(y.view(T, Bt, KD, nC), L, T, _SEQ, plus)]
        del y
        if return_last_state:
            t, c = (L - 1) % T, (L - 1) // T
            outs.append(h[t, ..., c, :].reshape(Bt, KD, N).clone())
        if return_states:
            outs.append(states.permute(0, 2, 3, 1))  # (Bt, KD, N, L) view of a token-major buffer
        ctx.geo = geo
        ctx.dtype = dtype
        ctx.softplus = softplus
        ctx.flags = (return_last_state, return_states)
        ctx.u_dtype, ctx.delta_dtype = u.dtype, delta.dtype
        if any(ctx.needs_input_grad):
            # time-major intermediates are kept: the backward then needs no softplus or transposes
            ctx.tm = (u_tm, z if softplus else None, dt, B_tm, C_tm, h_in)
            ctx.save_for_backward(A, B, C, D, delta_bias)
        ctx.set_materialize_grads(False)
        return tuple(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001, ANN205
        A, B, C, D, delta_bias = ctx.saved_tensors
        u_tm, z, dt, B_tm, C_tm, h_in = ctx.tm
        geo, dtype = ctx.geo, ctx.dtype
        T, nC, G, P, N, Bt, KD, L = geo.T, geo.nC, geo.G, geo.P, geo.N, geo.Bt, geo.KD, geo.L
        grads = list(grads)
        dy = grads.pop(0)
        dlast = grads.pop(0) if ctx.flags[0] else None
        dstates = grads.pop(0) if ctx.flags[1] else None
        need = ctx.needs_input_grad
        A_b = A.to(dtype).view(1, 1, G, P, 1, N)
        a, h = _decay_and_input(geo, u_tm, dt, A_b, B_tm)
        _scan_chunks(a, h, h_in)
        shape6 = (T, Bt, G, P, nC, N)
        dy_tm = None
        if dy is not None:
            dy_tm = _to_time_major(dy, T, nC, _SEQ, dtype).view(T, Bt, G, P, nC)
            w = dy_tm.unsqueeze(-1) * C_tm
        else:
            w = torch.zeros(shape6, dtype=dtype, device=dt.device)
        if dstates is not None:
            w += _to_time_major(dstates, T, nC, _GRP, dtype).view(shape6)
        if dlast is not None:
            t, c = (L - 1) % T, (L - 1) // T
            w[t, ..., c, :] += dlast.to(dtype).view(Bt, G, P, N)
        dC = None
        if need[4] and dy_tm is not None:  # needs h before its buffer is reused
            dC_tm = (h * dy_tm.unsqueeze(-1)).sum(3)  # (T, Bt, G, nC, N)
            dC = _from_time_major(dC_tm, L, T, _GRP).to(C.dtype)
        elif need[4]:
            dC = torch.zeros_like(C)
        _reverse_scan_chunks(a, w, dt, A_b)
        g = w
        # ah_t = abar_t h_{t-1}, built in the `a` buffer; then g * ah
        gah = a
        gah[1:].mul_(h[:-1])
        gah[0].mul_(h_in)
        gah.mul_(g)
        del h
        du = dddelta = dA = dB = dD = dbias = None
        if need[3]:
            if N == 1:
                dB_tm = torch.mul(g[..., 0], dt).mul_(u_tm).sum(3).unsqueeze(-1)
            else:
                dB_tm = (g * (dt * u_tm).unsqueeze(-1)).sum(3)
            dB = _from_time_major(dB_tm, L, T, _GRP).to(B.dtype)
        if need[2]:
            dA = (gah * dt.unsqueeze(-1)).sum((0, 1, 4)).reshape(KD, N).to(A.dtype)
        if need[5] and D is not None:
            if dy_tm is None:
                dD = torch.zeros_like(D)
            else:
                dD = (dy_tm * u_tm).sum((0, 1, 4)).reshape(KD).to(D.dtype)
        gB = g[..., 0].mul_(B_tm[..., 0]) if N == 1 else (g * B_tm).sum(-1)  # (T, Bt, G, P, nC)
        del g, w
        if need[1] or need[6]:
            ddt = gah[..., 0].mul_(A_b[..., 0]) if N == 1 else (gah * A_b).sum(-1)
            ddt.addcmul_(u_tm, gB)
            if ctx.softplus:
                ddt.mul_(torch.sigmoid(z))
            if need[6] and delta_bias is not None:
                dbias = ddt.sum((0, 1, 4)).reshape(KD).to(delta_bias.dtype)
            if need[1]:
                dddelta = _from_time_major(ddt.view(T, Bt, KD, nC), L, T, _SEQ).to(ctx.delta_dtype)
        if need[0]:
            du_tm = gB.mul_(dt).view(T, Bt, KD, nC)
            plus = None
            if D is not None and dy_tm is not None:
                plus = (dy_tm.view(T, Bt, KD, nC), D.to(dtype).view(KD, 1, 1))
            du = _from_time_major(du_tm, L, T, _SEQ, plus).to(ctx.u_dtype)
        return du, dddelta, dA, dB, dC, dD, dbias, None, None, None, None


# Opaque to torch.compile: the hand-written forward/backward write through `out=` views that inductor
# cannot lower, and compiling an already fused scan gains nothing; the model around it still compiles.
@torch.compiler.disable
def selective_scan_torch(
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
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Chunked selective scan (same contract as `selective_scan_ref`), differentiable by hand."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (B, KD, L); got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    Bt, KD, L = u.shape
    if A.dim() != 2 or A.shape[0] != KD:
        raise ValueError(f"A must be (KD={KD}, N); got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != Bt or t.shape[2] != N or t.shape[3] != L or t.shape != B.shape:
            raise ValueError(f"{name} must be (B={Bt}, G, N={N}, L={L}) like B; got {tuple(t.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    if L == 0:
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        from .scan_ref import selective_scan_ref

        return selective_scan_ref(
            u.to(dtype), delta, A, B, C, D, delta_bias, delta_softplus, return_last_state, return_states
        )
    return _SelectiveScanFn.apply(
        u, delta, A, B, C, D, delta_bias, delta_softplus, return_last_state, return_states, chunk_size
    )
