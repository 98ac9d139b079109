"""One entry point per primitive (selective scan, cross-scan/merge, Adaptor-T read-out) over the backends.

Backends: "torch" (fast CPU path, also fine on any device), "triton" (GPU kernels; on CPU only
through the interpreter, TRITON_INTERPRET=1, for tests), "ref" (sequential oracle).
Choice: the `backend` argument, else the env var ADAPTOR_PEFT_SCAN, else "triton" for CUDA
tensors and "torch" otherwise. The Triton modules are imported only when asked for, so this
package imports without a working Triton.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from .adaptor_t_ref import adaptor_t_readout_ref
from .adaptor_t_torch import readout_tokens, states_table
from .cross_scan_ref import cross_merge_ref, cross_scan_ref
from .cross_scan_torch import cross_merge_torch, cross_scan_torch
from .scan_ref import selective_scan_ref
from .scan_torch import selective_scan_torch

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "adaptor_t_readout",
    "available_backends",
    "cross_merge",
    "cross_scan",
    "resolve_backend",
    "selective_scan",
]

BACKENDS = ("ref", "torch", "triton")
ENV_VAR = "ADAPTOR_PEFT_SCAN"

_TRITON_MODULES = {
    "scan": "adaptor_peft.kernels.scan_triton",
    "cross": "adaptor_peft.kernels.cross_scan_triton",
    "adaptor_t": "adaptor_peft.kernels.adaptor_t_triton",
}
_triton_cache: dict[str, ModuleType] = {}


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _load_triton(which: str) -> ModuleType:
    """Import a Triton kernel module on first use; a failure names the backend and the cause."""
    if which not in _triton_cache:
        name = _TRITON_MODULES[which]
        try:
            _triton_cache[which] = importlib.import_module(name)
        except Exception as exc:  # ImportError, or triton failing at decoration time
            raise RuntimeError(
                f"selective-scan backend 'triton' is unavailable: importing {name} failed with "
                f"{type(exc).__name__}: {exc}. Use backend='torch' (or {ENV_VAR}=torch)."
            ) from exc
    return _triton_cache[which]


def resolve_backend(backend: str | None, tensor: torch.Tensor) -> str:
    """The backend to run for `tensor`: explicit argument, else $ADAPTOR_PEFT_SCAN, else by device."""
    source = "backend argument"
    if backend is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            backend, source = env.lower(), f"environment variable {ENV_VAR}"
        else:
            backend = "triton" if tensor.is_cuda else "torch"
            source = "device default"
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown selective-scan backend {backend!r} (from the {source}); expected one of {BACKENDS}"
        )
    if backend == "triton" and not tensor.is_cuda and not _interpreter_on():
        raise RuntimeError(
            f"selective-scan backend 'triton' (from the {source}) cannot run on "
            f"{tensor.device.type} tensors: it needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "import (slow, for tests only). "
            "Use backend='torch' on CPU."
        )
    return backend


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on `device` here (triton only on CUDA, or with TRITON_INTERPRET=1)."""
    dev = torch.device(device)
    out = ["ref", "torch"]
    if dev.type == "cuda" or _interpreter_on():
        try:
            _load_triton("scan")
            out.append("triton")
        except RuntimeError:
            pass
    return out


def selective_scan(
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
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Selective scan on the chosen backend; returns y, then last state and/or all states."""
    name = resolve_backend(backend, u)
    if name == "torch":
        fn = selective_scan_torch
    elif name == "ref":
        fn = selective_scan_ref
    else:
        fn = _load_triton("scan").selective_scan_triton
    return fn(u, delta, A, B, C, D, delta_bias, delta_softplus, return_last_state, return_states)


def cross_scan(x: torch.Tensor, channel_first: bool = True, backend: str | None = None) -> torch.Tensor:
    """(B, D, H, W) (or (B, H, W, D) with channel_first=False) -> (B, 4, D, H*W)."""
    name = resolve_backend(backend, x)
    if name == "triton":
        return _load_triton("cross").cross_scan_triton(x, channel_first=channel_first)
    if name == "torch":
        return cross_scan_torch(x, channel_first=channel_first)
    return cross_scan_ref(x, channel_first=channel_first)


def cross_merge(ys: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """(B, 4, D, H, W) per-direction outputs -> (B, D, H*W), the adjoint of cross_scan."""
    name = resolve_backend(backend, ys)
    if name == "triton":
        return _load_triton("cross").cross_merge_triton(ys)
    if name == "torch":
        return cross_merge_torch(ys)
    return cross_merge_ref(ys)


def adaptor_t_readout(
    h: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
    C: torch.Tensor,
    gamma: torch.Tensor,
    relative: bool = True,
    *,
    add_to: torch.Tensor | None = None,
    table: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Adaptor-T read-out C . (gamma * m) (+ add_to); h (B,G*D,N,L), offsets/weights (B,L,G,S,K) -> (B,G*D,L).

    `table` may pass `states_table(h)` when the caller already made it (the torch backend reads it).
    """
    name = resolve_backend(backend, h)
    if name == "triton":
        return _load_triton("adaptor_t").adaptor_t_readout_triton(
            h, offsets, weights, C, gamma, relative, add_to=add_to
        )
    if name == "torch":
        table = states_table(h) if table is None else table
        return readout_tokens(table, offsets, weights, C, gamma, relative, h.shape[2], add_to=add_to)
    batch, length, groups, heads, points = offsets.shape
    as_ref = lambda t: t.permute(0, 2, 3, 4, 1).reshape(batch, groups * heads, points, length)  # noqa: E731
    out = adaptor_t_readout_ref(h, as_ref(offsets), as_ref(weights), C, gamma, relative)
    return out if add_to is None else add_to + out
