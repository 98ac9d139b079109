"""Small helpers shared by the Triton kernels: interpreter detection, device checks, block sizes."""

from __future__ import annotations

import os

import torch
import triton


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def is_interpreted(kernel: object) -> bool:
    """True when `kernel` was decorated while TRITON_INTERPRET=1 (it then runs on CPU via numpy)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel: object, name: str, *tensors: torch.Tensor | None) -> torch.device:
    """Raise a clear error unless all tensors share a device the kernel can run on; return it."""
    present = [t for t in tensors if t is not None]
    device = present[0].device
    for t in present:
        if t.device != device:
            raise ValueError(f"{name}: all tensors must be on one device, got {device} and {t.device}")
    if device.type == "cuda":
        return device
    if device.type == "cpu" and is_interpreted(kernel):
        return device
    raise RuntimeError(
        f"{name}: the Triton backend needs CUDA tensors (got {device.type}); on CPU it runs only "
        "under the Triton interpreter (TRITON_INTERPRET=1 set before adaptor_peft.kernels is imported)"
    )


def ptxas_available() -> bool:
    """True when Triton's bundled ptxas exists (kernels can then be compiled for sm_90 without a GPU)."""
    return os.path.isfile(
        os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    )


__all__ = ["check_device", "is_interpreted", "next_pow2", "ptxas_available"]
