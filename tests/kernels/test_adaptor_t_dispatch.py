"""dispatch.adaptor_t_readout: every backend gives the naive loop's read-out, with and without add_to."""

from __future__ import annotations

import pytest
import torch

from adaptor_peft.kernels import dispatch


def _operands(seed=0):
    g = torch.Generator().manual_seed(seed)
    batch, groups, d_inner, n, heads, points, length = 2, 2, 4, 2, 2, 3, 5
    h = torch.randn(batch, groups * d_inner, n, length, generator=g, dtype=torch.float64)
    # (B, L, G, S, K): relative offsets up to +-4 tokens, so some taps fall outside the sequence
    offsets = (torch.rand(batch, length, groups, heads, points, generator=g, dtype=torch.float64) - 0.5) * 8
    weights = torch.softmax(torch.randn(batch, length, groups, heads, points, generator=g), -1).double()
    C = torch.randn(batch, groups, n, length, generator=g, dtype=torch.float64)
    gamma = torch.randn(groups * d_inner, generator=g, dtype=torch.float64)
    return h, offsets, weights, C, gamma


def _loop(h, offsets, weights, C, gamma):
    """out[b,gD+d,i] = gamma * sum_n C[b,g,n,i] * sum_k w * lerp(h[b,gD+d,n,:], i + offset), 0 outside."""
    batch, channels, n, length = h.shape
    _, _, groups, heads, points = offsets.shape
    d_inner = channels // groups
    out = torch.zeros(batch, channels, length, dtype=torch.float64)
    for b in range(batch):
        for g in range(groups):
            for d in range(d_inner):
                s = d // (d_inner // heads)
                for i in range(length):
                    total = 0.0
                    for k in range(points):
                        p = i + offsets[b, i, g, s, k].item()
                        lo = int(torch.floor(torch.tensor(p)).item())
                        frac = p - lo
                        for nn in range(n):
                            row = h[b, g * d_inner + d, nn]
                            a = row[lo].item() if 0 <= lo < length else 0.0
                            c = row[lo + 1].item() if 0 <= lo + 1 < length else 0.0
                            total += (
                                weights[b, i, g, s, k].item() * C[b, g, nn, i].item() * (a + frac * (c - a))
                            )
                    out[b, g * d_inner + d, i] = gamma[g * d_inner + d] * total
    return out


@pytest.mark.parametrize("backend", ["ref", "torch", "triton"])
def test_every_backend_equals_the_loop(backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ops = _operands()
    expected = _loop(*ops)
    got = dispatch.adaptor_t_readout(*ops, relative=True, backend=backend)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    ys = torch.randn(expected.shape, dtype=torch.float64)
    got = dispatch.adaptor_t_readout(*ops, relative=True, add_to=ys.clone(), backend=backend)
    torch.testing.assert_close(got, ys + expected, atol=1e-10, rtol=0)


def test_backend_comes_from_the_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(
        dispatch, "adaptor_t_readout_ref", lambda *a, **k: calls.append("ref") or a[0][:, :, 0]
    )
    monkeypatch.setenv(dispatch.ENV_VAR, "ref")
    dispatch.adaptor_t_readout(*_operands())
    assert calls == ["ref"]
