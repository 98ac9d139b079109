"""From-scratch training smoke check: the tiny Mamba-Adaptor learns the shipped MNIST subset."""

from __future__ import annotations

from importlib import resources

import numpy as np
import timm
import torch
import torch.nn.functional as F

from adaptor_peft.models import mamba_adaptor  # noqa: F401  (registers the family)


def _mnist(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(resources.files("adaptor_peft") / "assets" / "mnist_train.npz")
    x = torch.from_numpy(data["x"][:n]).float().div(255)
    x = F.pad(x, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1)  # 28 -> 32, gray -> 3 channels
    return (x - 0.13) / 0.31, torch.from_numpy(data["y"][:n])


def test_thirty_steps_from_scratch_decrease_the_loss() -> None:
    x, y = _mnist(480)
    model = timm.create_model("test_mamba_adaptor", drop_path_rate=0.05)
    assert model.adaptor_config.init == "random"
    assert all(p.requires_grad for p in model.parameters())  # from scratch: everything trains
    gammas = [m.gamma for n, m in model.named_modules() if n.endswith("adaptor_t")]
    assert gammas and all(torch.equal(g, torch.ones_like(g)) for g in gammas)  # non-identity init
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    losses = []
    for step in range(30):
        idx = torch.arange(step * 16, step * 16 + 16)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert first > 2.0  # chance level is ln(10) = 2.30
    assert last < first - 0.5, losses
    model.eval()
    with torch.no_grad():
        acc = (model(x[:160]).argmax(1) == y[:160]).float().mean().item()
    assert acc > 0.4  # chance is 0.1
