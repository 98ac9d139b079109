"""Adaptor-S against references built from plain nn.Conv2d, identity init, shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaptor_peft.adaptors import AdaptorS, MambaAdaptorConfig
from adaptor_peft.adaptors.spatial import split_sizes


def _randomise(module: AdaptorS, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in module.convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)


def _full_width_reference(module: AdaptorS, channels: int) -> list[nn.Conv2d]:
    """One full-width depthwise nn.Conv2d per dilation; in split mode zero outside the branch's channels."""
    refs, start = [], 0
    k = module.kernel_size
    for conv, width, r in zip(module.convs, module.widths, module.dilations):
        ref = nn.Conv2d(
            channels, channels, k, padding=r * (k - 1) // 2, dilation=r, groups=channels, bias=False
        )
        with torch.no_grad():
            ref.weight.zero_()
            if module.split:
                ref.weight[start : start + width] = conv.weight
                start += width
            else:
                ref.weight.copy_(conv.weight)
        refs.append(ref)
    return refs


@pytest.mark.parametrize("aggregation", ["split", "sum"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize(("dilations", "kernel_size"), [((1, 2, 3), 3), ((1, 3), 5), ((2,), 3)])
def test_matches_plain_conv2d_reference(aggregation, residual, dilations, kernel_size):
    channels = 10
    cfg = MambaAdaptorConfig(
        dilations=dilations, kernel_size=kernel_size, aggregation=aggregation, residual=residual
    )
    module = AdaptorS(channels, cfg)
    _randomise(module)
    y = torch.randn(2, channels, 7, 9)  # rectangular
    expected = sum(ref(y) for ref in _full_width_reference(module, channels))
    if residual:
        expected = expected + y
    out = module(y)
    assert out.shape == y.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_split_groups_are_contiguous_and_balanced():
    assert split_sizes(10, 3) == [4, 3, 3]
    assert split_sizes(16, 4) == [4, 4, 4, 4]
    module = AdaptorS(10, MambaAdaptorConfig(dilations=(1, 2, 3)))
    assert [c.weight.shape[0] for c in module.convs] == [4, 3, 3]
    assert [c.dilation for c in module.convs] == [(1, 1), (2, 2), (3, 3)]
    # a branch only sees its own channels: perturbing channel 0 leaves channels 4.. unchanged
    _randomise(module)
    y = torch.randn(1, 10, 6, 6)
    y2 = y.clone()
    y2[:, 0] += 1.0
    diff = (module(y2) - module(y)).abs().amax(dim=(0, 2, 3))
    assert diff[:4].max() > 0 and diff[4:].max() == 0


@pytest.mark.parametrize("aggregation", ["split", "sum"])
@pytest.mark.parametrize("residual", [True, False])
def test_identity_init(aggregation, residual):
    module = AdaptorS(12, MambaAdaptorConfig(aggregation=aggregation, residual=residual))
    y = torch.randn(2, 12, 5, 8)
    out = module(y)
    if residual:
        assert torch.equal(out, y)
        assert all(c.weight.abs().max() == 0 for c in module.convs)
    else:  # centred delta kernels (1/M per branch when summed)
        torch.testing.assert_close(out, y, atol=1e-6, rtol=1e-6)


def test_random_init_is_not_identity():
    module = AdaptorS(12, MambaAdaptorConfig(init="random"))
    y = torch.randn(2, 12, 5, 8)
    assert (module(y) - y).abs().max() > 1e-3


def test_too_many_split_branches_raise_naming_dilations():
    with pytest.raises(ValueError, match=r"dilations.*3 split branches do not fit 2 channels"):
        AdaptorS(2, MambaAdaptorConfig(dilations=(1, 2, 3)))
    AdaptorS(2, MambaAdaptorConfig(dilations=(1, 2, 3), aggregation="sum"))  # full-width branches fit


def test_gradients_reach_every_branch():
    module = AdaptorS(9, MambaAdaptorConfig())
    y = torch.randn(2, 9, 6, 7, requires_grad=True)
    module(y).pow(2).sum().backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().max() > 0 for c in module.convs)
    torch.testing.assert_close(y.grad, 2 * y.detach())  # zero convs: d(y + 0)^2 / dy
