"""MambaAdaptorConfig: every Mamba-Adaptor design choice as one validated, JSON-serialisable field.

The defaults are the library's "default transfer config": Adaptor-T with phi shared across the 4
scan directions (S=2 heads x K=4 points) plus a split 3x3 Adaptor-S with dilations (1, 2, 3),
identity init, and the norms' affine parameters train too. On vmamba_tiny_s1l8 that is 170,624
trainable parameters without the head, 0.58% of the base without its head: 135,008 adaptor parameters
(0.46%; docs/paper_digest.md §6.3: "about 0.5%" needs phi shared across directions) + 35,616 norm
parameters (0.12%).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..limits import ADAPTOR_LIMITS, MAX_HEADS_X_POINTS

OFFSET_MODES = ("relative", "absolute")
SELECTIONS = ("dynamic", "static")
AGGREGATIONS = ("split", "sum")
INITS = ("identity", "random_phi", "random")
PHI_INPUTS = ("state", "state_mean")


@dataclass
class MambaAdaptorConfig:
    """Configuration of Mamba-Adaptor (Adaptor-T on the scan's hidden states, Adaptor-S on its 2-D output)."""

    # which adaptors
    temporal: bool = True
    spatial: bool = True
    # Adaptor-T
    num_points: int = 4  # K sampling points per head
    num_heads: int = 2  # S channel groups ("sequences"); must divide d_inner of every adapted block
    offset_mode: str = "relative"  # positions i + phi_p(h_i) (token units) or (L-1)*sigmoid(phi_p(h_i))
    selection: str = "dynamic"  # dynamic: offsets from phi_p per token; static: learned (S, K) offsets
    share_across_directions: bool = True  # one phi_p/phi_c/gamma for the 4 scan directions
    offset_init_spread: float = 1.0  # relative init offsets: head s, point k -> +-(k//2 + 1)*(s + 1)*spread
    phi_input: str = "state"  # phi sees the flattened D*N state, or its mean over N (cheaper for N > 1)
    # Adaptor-S
    dilations: tuple[int, ...] = (1, 2, 3)
    kernel_size: int = 3
    aggregation: str = "split"  # split: channel groups, one dilation each; sum: full-width branches summed
    residual: bool = True  # y + conv(y), or conv(y) alone (the paper's literal "y := Conv(y)")
    # where
    stages: tuple[int, ...] | None = None  # stage indices (negative from the end); None = all
    blocks: tuple[int | str, ...] | None = (
        None  # global block indices or fnmatch patterns "layers.2.blocks.*"
    )
    # of the blocks stages/blocks select, the stages (negative from the end) that carry Adaptor-T /
    # Adaptor-S; None = all of them (e.g. t_stages=[0, 1]: Adaptor-T on the long-sequence stages only)
    t_stages: tuple[int, ...] | None = None
    s_stages: tuple[int, ...] | None = None
    # init
    # identity: gamma = 0, zero phi weights, zero convs; random_phi: gamma = 0 but random phi weights
    # (LoRA-style: only one factor zero, still the exact identity; see AdaptorT.reset_parameters);
    # random: gamma = 1, random phi and convs, for from-scratch use (not an identity)
    init: str = "identity"
    # what trains besides the adaptors (when the base is frozen)
    train_head: bool = True
    # norms on by default: +6.4 test points for T+S on MNIST 1k (benchmarks/results/transfer_v2.md)
    train_norms: bool = True
    train_biases: bool = False
    modules_to_save: tuple[str, ...] = field(default_factory=tuple)  # fnmatch patterns over module names

    def __post_init__(self) -> None:
        """Normalise sequences to tuples and validate every field (ValueError names the field)."""
        self.dilations = tuple(self.dilations)
        self.modules_to_save = tuple(self.modules_to_save)
        if self.stages is not None:
            self.stages = tuple(self.stages)
        if self.blocks is not None:
            self.blocks = tuple(self.blocks)
        for name in ("t_stages", "s_stages"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                setattr(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        for name in (
            "temporal",
            "spatial",
            "share_across_directions",
            "residual",
            "train_head",
            "train_norms",
            "train_biases",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MambaAdaptorConfig.{name} must be a bool, got {getattr(self, name)!r}")
        _check_int(self, "num_points", minimum=1)
        _check_int(self, "num_heads", minimum=1)
        _check_int(self, "kernel_size", minimum=1)
        if self.num_heads * self.num_points > MAX_HEADS_X_POINTS:
            raise ValueError(
                f"MambaAdaptorConfig.num_heads x num_points = {self.num_heads} x {self.num_points} exceeds "
                f"the limit {MAX_HEADS_X_POINTS} (adaptor_peft.limits.MAX_HEADS_X_POINTS; Mamba-Adaptor-b2 "
                "uses 8 x 4): use fewer heads or points"
            )
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"MambaAdaptorConfig.kernel_size must be odd (same padding), got {self.kernel_size}"
            )
        _check_choice(self, "offset_mode", OFFSET_MODES)
        _check_choice(self, "selection", SELECTIONS)
        _check_choice(self, "aggregation", AGGREGATIONS)
        _check_choice(self, "init", INITS)
        _check_choice(self, "phi_input", PHI_INPUTS)
        if isinstance(self.offset_init_spread, bool) or not isinstance(self.offset_init_spread, int | float):
            raise ValueError(
                f"MambaAdaptorConfig.offset_init_spread must be a number, got {self.offset_init_spread!r}"
            )
        if not self.offset_init_spread >= 0 or self.offset_init_spread == float("inf"):
            raise ValueError(
                "MambaAdaptorConfig.offset_init_spread must be finite and >= 0, "
                f"got {self.offset_init_spread!r}"
            )
        if not self.dilations:
            raise ValueError("MambaAdaptorConfig.dilations must hold at least one dilation")
        if len(self.dilations) > ADAPTOR_LIMITS["num_dilations"]:
            raise ValueError(
                f"MambaAdaptorConfig.dilations holds {len(self.dilations)} branches, more than the limit "
                f"{ADAPTOR_LIMITS['num_dilations']} (adaptor_peft.limits.ADAPTOR_LIMITS): use fewer dilations"
            )
        for d in self.dilations:
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise ValueError(
                    f"MambaAdaptorConfig.dilations must be positive ints, got {self.dilations!r}"
                )
            if d > ADAPTOR_LIMITS["dilation"]:
                raise ValueError(
                    f"MambaAdaptorConfig.dilations entry {d} exceeds the limit {ADAPTOR_LIMITS['dilation']} "
                    "(adaptor_peft.limits.ADAPTOR_LIMITS): use smaller dilations"
                )
        if self.stages is not None:
            for s in self.stages:
                if isinstance(s, bool) or not isinstance(s, int):
                    raise ValueError(f"MambaAdaptorConfig.stages must be ints, got {self.stages!r}")
        for name, kind in (("t_stages", "temporal"), ("s_stages", "spatial")):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, tuple) or not value:
                raise ValueError(
                    f"MambaAdaptorConfig.{name} must be a non-empty list of stage indices or None (all "
                    f"selected stages), got {value!r}; to drop the adaptor everywhere set {kind}=False"
                )
            for s in value:
                if isinstance(s, bool) or not isinstance(s, int):
                    raise ValueError(f"MambaAdaptorConfig.{name} must be ints, got {value!r}")
            if not getattr(self, kind):
                raise ValueError(
                    f"MambaAdaptorConfig.{name}={list(value)} but {kind} is False: "
                    f"set {kind}=True or {name}=None"
                )
        if self.blocks is not None:
            for b in self.blocks:
                if isinstance(b, bool) or not isinstance(b, int | str) or (isinstance(b, int) and b < 0):
                    raise ValueError(
                        "MambaAdaptorConfig.blocks must be non-negative ints or name patterns, "
                        f"got {self.blocks!r}"
                    )
        for p in self.modules_to_save:
            if not isinstance(p, str) or not p:
                raise ValueError(
                    f"MambaAdaptorConfig.modules_to_save must be name patterns, got {self.modules_to_save!r}"
                )
        if not (self.temporal or self.spatial):
            raise ValueError("MambaAdaptorConfig.temporal and .spatial are both False: nothing to inject")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (tuples become lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MambaAdaptorConfig:
        """Build from a dict; unknown keys raise ValueError listing the valid ones."""
        if not isinstance(data, dict):
            raise ValueError(f"MambaAdaptorConfig.from_dict needs a dict, got {type(data).__name__}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown MambaAdaptorConfig field(s) {unknown}; valid fields: {sorted(valid)}")
        return cls(**data)

    def to_json(self) -> str:
        """JSON text of to_dict() (sorted keys, stable across runs)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MambaAdaptorConfig:
        """Inverse of to_json."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"MambaAdaptorConfig JSON is malformed: {exc}") from exc
        return cls.from_dict(data)


def _check_int(cfg: MambaAdaptorConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"MambaAdaptorConfig.{name} must be an int >= {minimum}, got {value!r}")
    if value > ADAPTOR_LIMITS[name]:
        raise ValueError(
            f"MambaAdaptorConfig.{name}={value} exceeds the limit {ADAPTOR_LIMITS[name]} "
            "(adaptor_peft.limits.ADAPTOR_LIMITS; no real model comes near it): use a smaller value"
        )


def _check_choice(cfg: MambaAdaptorConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"MambaAdaptorConfig.{name} must be one of {choices}, got {value!r}")
