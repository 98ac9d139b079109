"""peft-side config: MambaAdaptorConfig's fields plus PeftConfig's, and the own peft type enum."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

from peft.config import PeftConfig

from adaptor_peft.adaptors import MambaAdaptorConfig


class AdaptorPeftType(str, enum.Enum):  # noqa: UP042 - same shape as peft.PeftType
    """Our peft type. name == value, so the member hashes and compares like the JSON string
    "MAMBA_ADAPTOR" that adapter_config.json stores (peft looks its mapping tables up by that string)."""

    MAMBA_ADAPTOR = "MAMBA_ADAPTOR"


@dataclass
class MambaAdaptorPeftConfig(PeftConfig, MambaAdaptorConfig):
    """A peft config for Mamba-Adaptor: every MambaAdaptorConfig field (inherited, not copied) plus
    PeftConfig's (task_type, inference_mode, ...) and the usual peft targeting fields.

    ``target_modules`` defaults to the SS2D modules that ``stages``/``blocks`` select; the trained
    extras (``train_head``, ``train_norms``, ``modules_to_save`` patterns) are wrapped with peft's
    ModulesToSaveWrapper, and ``train_biases`` maps to peft's ``bias="all"``.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "SS2D module names (or a regex); None = the blocks chosen by stages/blocks"},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "SS2D module names (or a regex) to leave without adaptors"}
    )

    def __post_init__(self) -> None:
        """Run both parents' checks (peft's task type, our field validation) and set the peft type."""
        PeftConfig.__post_init__(self)
        MambaAdaptorConfig.__post_init__(self)
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = sorted(self.target_modules)
        self.peft_type = AdaptorPeftType.MAMBA_ADAPTOR

    @property
    def bias(self) -> str:
        """peft's bias mode, derived from train_biases (peft trains and saves every bias for "all")."""
        return "all" if self.train_biases else "none"

    def to_adaptor_config(self) -> MambaAdaptorConfig:
        """The plain MambaAdaptorConfig with the same adaptor fields (what adaptor files store)."""
        values = {f.name: getattr(self, f.name) for f in fields(MambaAdaptorConfig)}
        values["modules_to_save"] = values["modules_to_save"] or ()  # peft may hold None while injecting
        return MambaAdaptorConfig(**values)

    @classmethod
    def from_adaptor_config(cls, config: MambaAdaptorConfig, **peft_fields: Any) -> MambaAdaptorPeftConfig:
        """Build from a MambaAdaptorConfig plus peft-only fields (target_modules, task_type, ...)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(MambaAdaptorConfig)}, **peft_fields)
