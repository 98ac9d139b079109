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
    return os.path.isfile(ptxas_path())


def ptxas_path() -> str:
    """Path of the ptxas binary bundled with Triton."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def lower_for_sm90(
    kernel: object,
    constexprs: dict[str, object],
    workdir: str | os.PathLike,
    label: str,
    num_warps: int = 4,
    unit_strides: frozenset[str] = frozenset(),
    dtype: str = "fp32",
) -> tuple[int | None, int | None]:
    """Compile a @triton.jit kernel for sm_90 without a GPU and assemble it with the bundled ptxas.

    Returns (registers, spill-store bytes) as ptxas reports them. Pointer arguments (names ending in
    `_ptr`) get `*dtype`, the rest i32; names in `unit_strides` are specialised to 1 as Triton does
    for unit strides at run time. Needs a process where TRITON_INTERPRET is unset before the kernel's
    module is imported (the interpreter replaces kernels by Python stubs).
    """
    import re
    import subprocess

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    consts = dict(constexprs, **{k: 1 for k in names if k in unit_strides})
    sig = {k: f"*{dtype}" if k.endswith("_ptr") else "i32" for k in names}
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(kernel, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    ptx = os.path.join(os.fspath(workdir), label.replace(" ", "_") + ".ptx")
    with open(ptx, "w") as f:
        f.write(compiled.asm["ptx"])
    cmd = [ptxas_path(), "-v", "--gpu-name", "sm_90a", ptx, "-o", ptx + ".cubin"]
    err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", err)
    spills = re.search(r"(\d+) bytes spill stores", err)
    return (int(regs.group(1)) if regs else None, int(spills.group(1)) if spills else None)


__all__ = ["check_device", "is_interpreted", "lower_for_sm90", "next_pow2", "ptxas_available", "ptxas_path"]
