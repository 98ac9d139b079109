"""Selective-scan kernels: references (`*_ref`) beside the fast paths, and one dispatch.

`selective_scan`, `cross_scan` and `cross_merge` pick a backend ("torch", "triton", "ref") from
their `backend` argument, the ADAPTOR_PEFT_SCAN environment variable, or the tensor's device.
"""

from .adaptor_t import adaptor_t_readout
from .adaptor_t_ref import adaptor_t_readout_ref
from .cross_scan_ref import cross_merge_ref, cross_scan_ref
from .cross_scan_torch import cross_merge_torch, cross_scan_torch
from .dispatch import available_backends, cross_merge, cross_scan, resolve_backend, selective_scan
from .scan_ref import selective_scan_ref
from .scan_torch import selective_scan_torch

__all__ = [
    "adaptor_t_readout",
    "adaptor_t_readout_ref",
    "available_backends",
    "cross_merge",
    "cross_merge_ref",
    "cross_merge_torch",
    "cross_scan",
    "cross_scan_ref",
    "cross_scan_torch",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
]
