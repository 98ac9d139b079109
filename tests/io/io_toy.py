"""Toy adaptor backend and file-editing helpers for adaptor-file tests (independent of the real adaptors)."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

import adaptor_peft.io as aio


@dataclass
class ToyAdaptorConfig:
    """Stand-in for MambaAdaptorConfig: to_dict/from_dict and a validation rule."""

    rank: int = 2
    dilation: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ToyAdaptorConfig:
        cfg = cls(**d)
        if not isinstance(cfg.rank, int) or cfg.rank < 1:
            raise ValueError(f"rank must be >= 1, got {cfg.rank}")
        return cfg


class ToyAdaptorS(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.down = nn.Linear(c, r, bias=False)
        self.up = nn.Linear(r, c, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, y):
        return y + self.up(self.down(y))


class ToyOp(nn.Module):
    """Has the SS2D hook attributes (adaptor_t / adaptor_s default None)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = nn.Linear(c, c)
        self.adaptor_t = None
        self.adaptor_s = None

    def forward(self, x):
        y = torch.tanh(self.proj(x))
        return self.adaptor_s(y) if self.adaptor_s is not None else y


class ToyNet(nn.Module):
    def __init__(self, c: int = 8, depth: int = 2, num_classes: int = 3, arch: str = "toy_net") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential() for _ in range(depth))
        for b in self.blocks:
            b.add_module("op", ToyOp(c))
        self.head = nn.Linear(c, num_classes)
        self.pretrained_cfg = {"architecture": arch}

    def forward(self, x):
        for b in self.blocks:
            x = x + b.op(x)
        return self.head(x)


def toy_inject(model: nn.Module, config: ToyAdaptorConfig, freeze_base: bool = True) -> nn.Module:
    for b in model.blocks:
        b.op.adaptor_s = ToyAdaptorS(b.op.proj.in_features, config.rank)
    if freeze_base:
        for n, p in model.named_parameters():
            p.requires_grad_(".adaptor_s." in f".{n}" or n.startswith("head."))
    model.adaptor_config = config
    return model


def toy_adaptor_state_dict(model: nn.Module, include_head: bool = True) -> dict:
    return {
        k: v
        for k, v in model.state_dict().items()
        if ".adaptor_s." in k or (include_head and k.startswith("head."))
    }


TOY_API = SimpleNamespace(
    MambaAdaptorConfig=ToyAdaptorConfig,
    inject_adaptors=toy_inject,
    adaptor_state_dict=toy_adaptor_state_dict,
)


def make_base(seed: int = 0, **kw) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet(**kw).eval()


def make_trained(seed: int = 0, rank: int = 2, **kw) -> ToyNet:
    """A base with injected adaptors and non-trivial adaptor/head values."""
    m = toy_inject(make_base(seed, **kw), ToyAdaptorConfig(rank=rank))
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for v in toy_adaptor_state_dict(m).values():
            v.copy_(torch.randn(v.shape, generator=g))
    return m


def state_snapshot(model: nn.Module) -> dict:
    """Everything load_adaptors could change: tensors (cloned), requires_grad flags, adaptor config."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "config": getattr(model, "adaptor_config", None),
    }


def same_snapshot(a: dict, b: dict) -> bool:
    return (
        a["state"].keys() == b["state"].keys()
        and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
        and a["grad"] == b["grad"]
        and a["config"] == b["config"]
    )


def split_file(data: bytes) -> tuple[dict, bytes]:
    """(header JSON, data bytes) of a safetensors blob."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_file(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def rewrite(src: Path, dst: Path, edit_tensors=None, edit_meta=None, resign: bool = True) -> Path:
    """Re-save an adaptor file through plain safetensors after editing its tensors / metadata.

    With ``resign`` the tensor table and content checksum are recomputed, so the result is a
    well-formed file whose *content* is wrong (what a buggy writer or a wrong model would produce).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors:
        tensors = edit_tensors(tensors) or tensors
    if edit_meta:
        meta = edit_meta(meta) or meta
    if resign and aio.META_TENSORS in meta:
        meta[aio.META_TENSORS] = json.dumps(
            {k: {"dtype": aio.DTYPE_TAGS[t.dtype], "shape": list(t.shape)} for k, t in tensors.items()}
        )
    if resign and aio.META_CONTENT_SHA256 in meta:
        meta[aio.META_CONTENT_SHA256] = aio.content_digest(meta, tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst
