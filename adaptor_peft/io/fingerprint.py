"""Fingerprint of a model's frozen base weights, stored in adaptor files to detect the wrong base."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch
from torch import nn

FINGERPRINT_ALGORITHM = "sha256-v1"
# Per-tensor digests are shortened: they only locate the first differing tensor in an error message,
# the full structure/value digests decide the match.
_TENSOR_DIGEST_CHARS = 12


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a tensor (any dtype, bf16 included), on the CPU."""
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return memoryview(flat.view(torch.uint8).numpy())


def base_tensors(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The model's state_dict minus the excluded keys (adaptor, head and other trained tensors)."""
    skip = set(exclude)
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def _layout(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}".replace(" ", "")


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> dict:
    """Digest of sorted (name, shape, dtype) plus the full bytes of every tensor.

    Hashing every byte costs about 0.07 s for a 30M-parameter fp32 model (sha256 runs at ~2 GB/s),
    so no sampling is needed. Returns a JSON-serialisable dict:
    ``{"algorithm", "num_tensors", "structure", "values", "tensors": {name: "dtype[shape]:digest"}}``.
    """
    structure = hashlib.sha256()
    values = hashlib.sha256()
    per_tensor: dict[str, str] = {}
    for name in sorted(tensors):
        t = tensors[name]
        structure.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        digest = hashlib.sha256(tensor_bytes(t)).hexdigest()
        values.update(f"{name}|{digest}\n".encode())
        per_tensor[name] = f"{_layout(t)}:{digest[:_TENSOR_DIGEST_CHARS]}"
    return {
        "algorithm": FINGERPRINT_ALGORITHM,
        "num_tensors": len(per_tensor),
        "structure": structure.hexdigest(),
        "values": values.hexdigest(),
        "tensors": per_tensor,
    }


def model_fingerprint(model: nn.Module, exclude: Iterable[str] = ()) -> dict:
    """Fingerprint of the model's base tensors (state_dict minus ``exclude``)."""
    return fingerprint_tensors(base_tensors(model, exclude))


def first_difference(stored: Mapping[str, str], current: Mapping[str, str]) -> tuple[str, str] | None:
    """First tensor that differs, layout differences (presence, dtype, shape) before value differences.

    Entries are the ``"dtype[shape]:digest"`` strings of :func:`fingerprint_tensors`; returns
    ``(name, reason)`` or None when both agree.
    """
    names = sorted(set(stored) | set(current))
    for name in names:
        if name not in current:
            return name, f"in the saved base ({stored[name].rpartition(':')[0]}) but missing from the model"
        if name not in stored:
            return name, f"in the model ({current[name].rpartition(':')[0]}) but not in the saved base"
        was, now = stored[name].rpartition(":")[0], current[name].rpartition(":")[0]
        if was != now:
            return name, f"saved base has {was}, the model has {now}"
    for name in names:
        if stored[name] != current[name]:
            return name, "different values"
    return None
