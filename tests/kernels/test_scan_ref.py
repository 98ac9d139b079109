"""The sequential reference against an independent scalar loop, and its output contract."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adaptor_peft.kernels.scan_ref import selective_scan_ref


def _scalar_loop(u, delta, A, B, C, D, bias):
    """Per (batch, channel, state) scalar recurrence written straight from docs/scan.md section 1.1."""
    batch, kd, length = u.shape
    n, groups = A.shape[1], B.shape[1]
    y = torch.zeros(batch, kd, length, dtype=torch.float64)
    for b in range(batch):
        for c in range(kd):
            k = c // (kd // groups)
            h = [0.0] * n
            for t in range(length):
                dt = F.softplus(torch.tensor(float(delta[b, c, t] + bias[c]), dtype=torch.float64)).item()
                acc = 0.0
                for s in range(n):
                    h[s] = math.exp(dt * float(A[c, s])) * h[s] + dt * float(B[b, k, s, t]) * float(
                        u[b, c, t]
                    )
                    acc += float(C[b, k, s, t]) * h[s]
                y[b, c, t] = acc + float(D[c]) * float(u[b, c, t])
    return y


def test_ref_matches_scalar_loop():
    g = torch.Generator().manual_seed(1)
    u, delta = (
        torch.randn(2, 6, 9, generator=g, dtype=torch.float64),
        torch.randn(2, 6, 9, generator=g).double(),
    )
    A = -torch.rand(6, 3, generator=g, dtype=torch.float64) - 0.2
    B, C = torch.randn(2, 3, 3, 9, generator=g).double(), torch.randn(2, 3, 3, 9, generator=g).double()
    D, bias = torch.randn(6, generator=g).double(), torch.randn(6, generator=g).double()
    y = selective_scan_ref(u, delta, A, B, C, D, bias, delta_softplus=True)
    assert torch.allclose(y, _scalar_loop(u, delta, A, B, C, D, bias), rtol=1e-12, atol=1e-12)


def test_ref_output_contract():
    u = torch.randn(2, 4, 5, dtype=torch.bfloat16)
    delta = torch.rand(2, 4, 5, dtype=torch.bfloat16)
    A, B, C = -torch.rand(4, 2), torch.randn(2, 2, 2, 5), torch.randn(2, 2, 2, 5)
    y, last, states = selective_scan_ref(u, delta, A, B, C, return_last_state=True, return_states=True)
    assert y.dtype == last.dtype == states.dtype == torch.float32
    assert states.shape == (2, 4, 2, 5) and last.shape == (2, 4, 2)
    assert torch.equal(last, states[..., -1])
    # y is the C read-out of the states when D is None
    Cx = C.unsqueeze(2).expand(2, 2, 2, 2, 5).reshape(2, 4, 2, 5)
    assert torch.allclose(y, (states * Cx).sum(2), atol=1e-6)
    empty = selective_scan_ref(u[..., :0], delta[..., :0], A, B[..., :0], C[..., :0], return_states=True)
    assert empty[0].shape == (2, 4, 0) and empty[1].shape == (2, 4, 2, 0)
