"""Shared by the kernel tests: lower Triton kernels for sm_90 in a fresh interpreter (no GPU needed).

The test process runs Triton under TRITON_INTERPRET=1, where kernels are Python stubs, so the real
compilation happens in a subprocess started without that flag.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRELUDE = r"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)  # compile real GPU kernels, not interpreter stubs
import triton.language as tl
from adaptor_peft.kernels.triton_utils import lower_for_sm90

def build(label, fn, consts, warps=4, dtype="fp32"):
    regs, spills = lower_for_sm90(fn, consts, sys.argv[1], label, warps, frozenset(UNIT), dtype)
    print("OK", label, "regs", regs, "spill_stores", spills)
"""


def lower_in_subprocess(body: str, workdir: os.PathLike) -> list[tuple[str, int | None, int | None]]:
    """Run PRELUDE + body (which defines UNIT and calls build); (label, registers, spill bytes) per kernel."""
    import triton

    from adaptor_peft.kernels.triton_utils import ptxas_available

    if not ptxas_available():
        pytest.skip(f"no bundled ptxas in triton {triton.__version__}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, str(workdir)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("OK "):
            label, rest = line[3:].split(" regs ")
            regs, spills = (None if v == "None" else int(v) for v in rest.split(" spill_stores "))
            rows.append((label, regs, spills))
    return rows
