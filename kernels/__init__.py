"""Selective-scan kernels: references (`*_ref`) beside the fast paths, and one dispatch."""

from .cross_scan_ref import cross_merge_ref, cross_scan_ref
from .scan_ref import selective_scan_ref


def selective_scan(*args, backend: str | None = None, **kwargs):  # noqa: ANN201, ANN002, ANN003
    """Dispatch the selective scan (placeholder: reference only until the fast paths land)."""
    return selective_scan_ref(*args, **kwargs)


def cross_scan(x, channel_first: bool = True):  # noqa: ANN201, ANN001
    """Dispatch the cross-scan (placeholder: reference only)."""
    return cross_scan_ref(x, channel_first=channel_first)


def cross_merge(ys):  # noqa: ANN201, ANN001
    """Dispatch the cross-merge (placeholder: reference only)."""
    return cross_merge_ref(ys)


__all__ = [
    "cross_merge",
    "cross_merge_ref",
    "cross_scan",
    "cross_scan_ref",
    "selective_scan",
    "selective_scan_ref",
]
