"""Parameter accounting: what trains, against the base model with and without its head."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .inject import adaptor_module_names
from .selection import NORM_TYPES, head_module, is_under, module_prefixes
from .spatial import AdaptorS
from .temporal import AdaptorT

CATEGORIES = ("adaptor_t", "adaptor_s", "head", "norm", "bias", "other")


@dataclass
class TrainableReport:
    """Parameter counts; percentages are of the base (all non-adaptor parameters), with or without head."""

    total_params: int
    base_params: int
    head_params: int
    adaptor_params: int
    trainable_params: int
    trainable_params_no_head: int
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)  # category -> {"params", "trainable"}

    @property
    def base_params_no_head(self) -> int:
        """Base parameters excluding the classifier head."""
        return self.base_params - self.head_params

    @property
    def trainable_pct(self) -> float:
        """Trainable parameters (head included) as % of the whole base model."""
        return 100.0 * self.trainable_params / max(self.base_params, 1)

    @property
    def trainable_pct_no_head(self) -> float:
        """Trainable parameters without the head as % of the base without its head (the paper's ~0.5%)."""
        return 100.0 * self.trainable_params_no_head / max(self.base_params_no_head, 1)

    def to_dict(self) -> dict[str, object]:
        """Plain dict with the derived figures (for JSON logs)."""
        return {
            "total_params": self.total_params,
            "base_params": self.base_params,
            "base_params_no_head": self.base_params_no_head,
            "head_params": self.head_params,
            "adaptor_params": self.adaptor_params,
            "trainable_params": self.trainable_params,
            "trainable_params_no_head": self.trainable_params_no_head,
            "trainable_pct": self.trainable_pct,
            "trainable_pct_no_head": self.trainable_pct_no_head,
            "by_type": {k: dict(v) for k, v in self.by_type.items()},
        }

    def __str__(self) -> str:
        rows = [("module type", "params", "trainable", "% of base w/o head")]
        denom = max(self.base_params_no_head, 1)
        for cat, counts in self.by_type.items():
            rows.append((cat, f"{counts['params']:,}", f"{counts['trainable']:,}",
                         f"{100.0 * counts['trainable'] / denom:.3f}%"))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        line = "  ".join("-" * w for w in widths)
        table = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows
        ]
        table.insert(1, line)
        summary = [
            f"base model:            {self.base_params:,} params "
            f"({self.base_params_no_head:,} without the head)",
            f"adaptors:              {self.adaptor_params:,} params",
            f"trainable (with head): {self.trainable_params:,} = {self.trainable_pct:.3f}% of the base",
            f"trainable (no head):   {self.trainable_params_no_head:,} = "
            f"{self.trainable_pct_no_head:.3f}% of the base without the head",
        ]
        return "\n".join(table + [line] + summary)


def trainable_report(model: nn.Module) -> TrainableReport:
    """Count parameters per module type (adaptor_t, adaptor_s, head, norm, bias, other) and what trains."""
    adaptor_t = [n for n, m in model.named_modules() if isinstance(m, AdaptorT)]
    adaptor_s = [n for n, m in model.named_modules() if isinstance(m, AdaptorS)]
    adaptors = adaptor_module_names(model)
    head = head_module(model)
    head_prefixes = module_prefixes(model, [head]) if head is not None else []
    norm_prefixes = [n for n, m in model.named_modules() if isinstance(m, NORM_TYPES)]
    by_type = {c: {"params": 0, "trainable": 0} for c in CATEGORIES}
    total = head_params = adaptor_params = trainable = trainable_no_head = 0
    for name, param in model.named_parameters():
        module_name = name.rpartition(".")[0]
        count = param.numel()
        if is_under(module_name, adaptor_t):
            cat = "adaptor_t"
        elif is_under(module_name, adaptor_s):
            cat = "adaptor_s"
        elif is_under(module_name, head_prefixes):
            cat = "head"
        elif is_under(module_name, norm_prefixes):
            cat = "norm"
        elif name.rpartition(".")[2] == "bias":
            cat = "bias"
        else:
            cat = "other"
        total += count
        by_type[cat]["params"] += count
        if is_under(module_name, adaptors):
            adaptor_params += count
        if cat == "head":
            head_params += count
        if param.requires_grad:
            by_type[cat]["trainable"] += count
            trainable += count
            if cat != "head":
                trainable_no_head += count
    by_type = {c: v for c, v in by_type.items() if v["params"]}
    return TrainableReport(
        total_params=total,
        base_params=total - adaptor_params,
        head_params=head_params,
        adaptor_params=adaptor_params,
        trainable_params=trainable,
        trainable_params_no_head=trainable_no_head,
        by_type=by_type,
    )
