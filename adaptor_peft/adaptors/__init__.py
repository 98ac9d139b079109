"""Mamba-Adaptor: Adaptor-T (hidden-state memory), Adaptor-S (dilated depthwise convs), injection."""

from .config import MambaAdaptorConfig
from .inject import adaptor_state_dict, inject_adaptors, remove_adaptors
from .report import TrainableReport, trainable_report
from .selection import find_ss2d
from .spatial import AdaptorS
from .temporal import AdaptorT

__all__ = [
    "AdaptorS",
    "AdaptorT",
    "MambaAdaptorConfig",
    "TrainableReport",
    "adaptor_state_dict",
    "find_ss2d",
    "inject_adaptors",
    "remove_adaptors",
    "trainable_report",
]
