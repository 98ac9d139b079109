"""FSDP in the trainer: is it active, and full (unsharded) tensors for the files a run writes.

Under FSDP2 (``recipes/accelerate/fsdp.yaml``) every parameter is a ``DTensor`` holding this process's
shard; checkpoints and the method's artefact need the whole tensors, gathered by collectives that every
process must join. accelerate 1.15 turns FSDP on only for accelerator devices: on CPUs
(``distributed_type`` MULTI_CPU, gloo) it ignores ``ACCELERATE_USE_FSDP`` and the FSDP plugin and wraps
the model in DDP (accelerate/state.py, ``AcceleratorState.__init__``: the FSDP switch sits in the
``elif self.distributed_type in [MULTI_GPU, MULTI_NPU, ...]`` branch, which lacks MULTI_CPU), so a run
that asked for FSDP and did not get it stops with :class:`FSDPUnavailableError`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator


class FSDPUnavailableError(RuntimeError):
    """FSDP was asked for (ACCELERATE_USE_FSDP) but accelerate did not turn it on for this launch."""


def fsdp_requested() -> bool:
    """True when the launch asks for FSDP (``accelerate launch`` with an FSDP config sets the variable)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() in ("1", "true", "yes", "on")


def is_fsdp(accelerator: Accelerator) -> bool:
    """True when accelerate shards the model (distributed type FSDP)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_fsdp_active(accelerator: Accelerator) -> None:
    """Raise FSDPUnavailableError when FSDP was asked for but accelerate chose another distributed type."""
    if not fsdp_requested() or is_fsdp(accelerator):
        return
    kind = getattr(accelerator.distributed_type, "value", accelerator.distributed_type)
    raise FSDPUnavailableError(
        f"ACCELERATE_USE_FSDP is set but accelerate runs this launch as {kind} on "
        f"{accelerator.device.type} with {accelerator.num_processes} process(es): accelerate runs FSDP only "
        "on 2 or more GPUs (or other accelerators), never on CPUs. On CPUs use data-parallel training "
        "(ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m adaptor_peft.cli train RECIPE) and unset "
        "ACCELERATE_USE_FSDP; on one device drop the FSDP config (recipes/accelerate/single_gpu.yaml)"
    )


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (maybe sharded) parameter or buffer, detached, on the CPU (collective)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().to("cpu", copy=True).contiguous()


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with whole tensors, in ``optimizer.state_dict()``'s layout (collective: every
    process calls; the main process gets it, the others an empty dict).

    torch keys the gathered state by parameter name; it is renumbered as ``state_dict()`` numbers
    parameters (0, 1, ... through the groups in order), so the checkpoint loads into an unsharded
    optimizer (a DDP resume) like any other.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not named:
        return named
    index: dict[str, int] = {}
    groups = []
    for group in named["param_groups"]:
        ids = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append({**group, "params": ids})
    return {"state": {index[name]: value for name, value in named["state"].items()}, "param_groups": groups}


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU, on the main process only (collective: every process calls).

    Whole tensors whatever ``fsdp_state_dict_type`` the launch chose (a sharded state dict would not load
    into an unsharded model).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
