"""Independent scalar oracle for Adaptor-T, written from the equations (docs/paper_digest.md §3.4).

Nothing here comes from adaptor_peft: every value is a 0-dim tensor combined by plain Python loops
(so autograd through the oracle gives independent reference gradients too). Only tiny shapes.

For batch b, direction g (of G), token i (of L), head s (of S), point k (of K), channel d (of D),
state n (of N):

    q_i          = h[g, :, :, i] flattened (d*N + n), or its mean over n ("state_mean": index d)
    logit[s, k]  = phi_c(q_i)[s*K + k];  c[s, k] = exp(logit[s, k]) / sum_k' exp(logit[s, k'])
    raw[s, k]    = phi_p(q_i)[s*K + k]  (dynamic)  or  static[s, k]
    p[s, k]      = i + raw (relative)   or  (L - 1) / (1 + exp(-raw))  (absolute)
    m[d, n]      = sum_k c[s, k] * lerp(h[g, d, n, :], p[s, k]),  s = d // (D / S)
    out[g*D + d, i] = (ys[g*D + d, i] +) sum_n C[g, n, i] * gamma[d] * m[d, n]

lerp(x, p) = (1 - t) * x[floor(p)] + t * x[floor(p) + 1] with t = p - floor(p), where a tap outside
[0, L-1] reads zero. A parameter with leading dim 1 is shared by all directions, otherwise
index g picks direction g's copy.
"""

from __future__ import annotations

import math

import torch


def _nested(t: torch.Tensor) -> list:
    """Tensor -> nested Python lists of 0-dim tensors (autograd views of t)."""
    if t.dim() == 0:
        return t
    return [_nested(x) for x in t.unbind(0)]


def _direction(param: list, g: int) -> list:
    """The copy of a (P, ...) parameter that direction g uses: P == 1 is shared."""
    return param[0] if len(param) == 1 else param[g]


def lerp_zero(seq: list, p: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of the scalars seq[0..L-1] at position p; taps outside the sequence read 0."""
    lo = math.floor(float(p.detach()))
    t = p - lo
    total = p * 0.0  # keeps a tensor (and a zero gradient to p) when both taps fall outside
    for j, w in ((lo, 1.0 - t), (lo + 1, t)):
        if 0 <= j <= len(seq) - 1:
            total = total + w * seq[j]
    return total


def _linear(weight: list, bias: list, row: int, q: list) -> torch.Tensor:
    """Row `row` of weight @ q + bias, as an explicit sum."""
    total = bias[row]
    for f, value in enumerate(q):
        total = total + weight[row][f] * value
    return total


def adaptor_t_oracle(
    hs: torch.Tensor,
    Cs: torch.Tensor,
    *,
    heads: int,
    points: int,
    relative: bool,
    phi_input: str,
    gamma: torch.Tensor,
    phi_c_weight: torch.Tensor,
    phi_c_bias: torch.Tensor,
    phi_p_weight: torch.Tensor | None = None,
    phi_p_bias: torch.Tensor | None = None,
    static_offsets: torch.Tensor | None = None,
    ys: torch.Tensor | None = None,
) -> torch.Tensor:
    """hs (B, G*D, N, L), Cs (B, G, N, L) -> (B, G*D, L); phi (P, S*K, in), gamma (P, D), static (P, S, K)."""
    batch, channels, n_state, length = hs.shape
    groups = Cs.shape[1]
    d_inner = channels // groups
    per_head = d_inner // heads
    dynamic = static_offsets is None
    h, C = _nested(hs), _nested(Cs)
    gam, wc, bc = _nested(gamma), _nested(phi_c_weight), _nested(phi_c_bias)
    if dynamic:
        wp, bp = _nested(phi_p_weight), _nested(phi_p_bias)
    else:
        static = _nested(static_offsets)
    y = _nested(ys) if ys is not None else None

    out = [[[None] * length for _ in range(channels)] for _ in range(batch)]
    for b in range(batch):
        for g in range(groups):
            for i in range(length):
                if phi_input == "state":
                    q = [h[b][g * d_inner + d][n][i] for d in range(d_inner) for n in range(n_state)]
                else:  # state_mean
                    q = [
                        sum(h[b][g * d_inner + d][n][i] for n in range(n_state)) / n_state
                        for d in range(d_inner)
                    ]
                for s in range(heads):
                    # softmax over the K points of this head
                    logits = [
                        _linear(_direction(wc, g), _direction(bc, g), s * points + k, q)
                        for k in range(points)
                    ]
                    exps = [torch.exp(x) for x in logits]
                    denom = sum(exps)
                    c = [e / denom for e in exps]
                    pos = []
                    for k in range(points):
                        if dynamic:
                            raw = _linear(_direction(wp, g), _direction(bp, g), s * points + k, q)
                        else:
                            raw = _direction(static, g)[s][k]
                        pos.append(i + raw if relative else (length - 1) / (1.0 + torch.exp(-raw)))
                    for dd in range(per_head):
                        d = s * per_head + dd
                        row = g * d_inner + d
                        value = 0.0
                        for n in range(n_state):
                            seq = [h[b][row][n][j] for j in range(length)]
                            m_dn = 0.0
                            for k in range(points):
                                m_dn = m_dn + c[k] * lerp_zero(seq, pos[k])
                            value = value + C[b][g][n][i] * _direction(gam, g)[d] * m_dn
                        out[b][row][i] = value if y is None else y[b][row][i] + value
    return torch.stack([torch.stack([torch.stack(r) for r in per_b]) for per_b in out])


def oracle_for(
    module: torch.nn.Module, hs: torch.Tensor, Cs: torch.Tensor, ys: torch.Tensor | None = None
) -> torch.Tensor:
    """adaptor_t_oracle with the parameter tensors (and the config) read off an AdaptorT module."""
    params = dict(module.named_parameters())
    dynamic = "phi_p.weight" in params
    return adaptor_t_oracle(
        hs,
        Cs,
        heads=module.heads,
        points=module.points,
        relative=module.relative,
        phi_input=module.phi_input,
        gamma=params["gamma"],
        phi_c_weight=params["phi_c.weight"],
        phi_c_bias=params["phi_c.bias"],
        phi_p_weight=params["phi_p.weight"] if dynamic else None,
        phi_p_bias=params["phi_p.bias"] if dynamic else None,
        static_offsets=None if dynamic else params["static_offsets"],
        ys=ys,
    )
