"""Reading, normalising, validating and converting VMamba checkpoints.

Official `.pth` files are torch pickles with the weights under `ckpt["model"]` (already the EMA weights for
the EMA-trained releases, docs/vmamba.md §3); some may also hold a yacs `CfgNode`, which `weights_only=True`
refuses. We never unpickle arbitrary objects unless the caller says the file is trusted
(`trust_pickle=True`), and offer a one-off conversion to safetensors (`adaptor-peft convert`).
"""

from __future__ import annotations

import fnmatch
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from ..limits import MAX_FINITE_MAGNITUDE
from ..regular_file import NotARegularFileError, regular_file_size

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadReport",
    "UntrustedCheckpointError",
    "checkpoint_budget",
    "load_checkpoint",
    "load_into_model",
    "config_from_yacs",
    "normalize_state_dict",
    "read_checkpoint_file",
    "read_safetensors_metadata",
    "suspicious_values",
    "warn_suspicious_values",
]

# Envelopes tried in order. "model" first: the official releases keep their published (EMA) weights there.
_ENVELOPE_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema", "module")
_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 10  # keys listed per category in a mismatch error
_MAX_ENVELOPES = 8  # real files nest at most two ({"model": {...}}, mmdet's {"state_dict": ...})

# What a checkpoint file may hold (its size, or what its zip members inflate to) when no model says how
# big it should be: generous for any VMamba checkpoint with optimizer state; the one place this is set.
DEFAULT_CHECKPOINT_BUDGET = 16 * 1024**3
# Per expected parameter: fp64 weights plus two Adam moments and an EMA copy; plus slack for a larger head.
_BUDGET_BYTES_PER_PARAM = 32
_BUDGET_SLACK = 256 * 1024**2
# torch.save stores zip members uncompressed; a re-zipped checkpoint of float weights barely compresses.
_MAX_INFLATION = 32

# January-2024 names -> current names (docs/vmamba.md §3; official VSSM._load_from_state_dict does the same).
_LEGACY_RENAMES = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]
# 1x1 layers stored as 2-D Linear weights; official files may hold them conv-style (out, in, 1, 1).
_LINEAR_1X1 = re.compile(r"(\.in_proj|\.out_proj|\.fc1|\.fc2|\.downsample\.reduction)\.weight$")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or used."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not fit the model."""


class UntrustedCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A pickle checkpoint needs objects that `weights_only=True` refuses to load."""


class LoadReport(NamedTuple):
    """What a non-strict load skipped."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


def checkpoint_budget(num_params: int) -> int:
    """The most bytes a checkpoint for a model of ``num_params`` parameters may hold (file or unzipped)."""
    return _BUDGET_BYTES_PER_PARAM * num_params + _BUDGET_SLACK


def _regular_size(path: Path) -> int:
    """Size of a regular checkpoint file; a missing path, directory, FIFO or device is a CheckpointError."""
    try:
        return regular_file_size(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: checkpoint file not found; pass the path of an existing file") from e
    except IsADirectoryError as e:
        raise CheckpointError(f"{path}: is a directory; pass the path of a checkpoint file") from e
    except NotARegularFileError as e:
        raise CheckpointError(f"{path}: {e.strerror}; pass the path of a regular checkpoint file") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e})") from e


def _check_budget(path: Path, size: int, budget: int) -> None:
    """Refuse a file bigger than the budget, or a zip whose members declare more than it may inflate to.

    Reads only the zip's central directory: the declared sizes are what torch.load allocates per member.
    """
    hint = "pass a checkpoint of this model (or a larger max_bytes if the file is trusted)"
    if size > budget:
        raise CheckpointError(f"{path}: file has {size:,} bytes, over the {budget:,}-byte budget; {hint}")
    if path.suffix == ".safetensors" or not zipfile.is_zipfile(path):
        return  # safetensors checks its header against the file size; a legacy pickle is at most size
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a readable zip after all: torch.load words the refusal
    limit = min(budget, _MAX_INFLATION * size + 1024**2)
    if declared > limit:
        raise CheckpointError(
            f"{path}: its zip members declare {declared:,} bytes unpacked from a {size:,}-byte file, "
            f"over the {limit:,}-byte limit (a zip bomb, or not a checkpoint of this model); "
            f"refused before unpacking; {hint}"
        )


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a .safetensors header ({} when it has none)."""
    from safetensors import safe_open

    _regular_size(Path(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def read_checkpoint_file(path: Path, trust_pickle: bool, max_bytes: int | None = None) -> Any:
    """The raw object in a checkpoint file (safetensors dict, or an unpickled .pth only if trusted).

    Only a regular file is read, and only if it (and, for a zip, what its members declare unpacked) fits
    ``max_bytes`` (default DEFAULT_CHECKPOINT_BUDGET; see checkpoint_budget for one from the model).
    Every refusal is a CheckpointError naming the file, whatever the reader raised underneath.
    """
    _check_budget(path, _regular_size(path), DEFAULT_CHECKPOINT_BUDGET if max_bytes is None else max_bytes)
    corrupt = "not a torch checkpoint or corrupt ({}); pass an intact checkpoint file"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(e)})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(f"{path}: {corrupt.format(_reason(e))}") from e
        if not trust_pickle:
            raise UntrustedCheckpointError(
                f"{path}: this pickle holds objects other than tensors and plain containers (e.g. the yacs "
                "config the official training script saves), so it was not loaded with weights_only=True. "
                "If you trust the file, pass trust_pickle=True, or convert it once with "
                f"`adaptor-peft convert --trust-pickle {path} OUT.safetensors` and use the safetensors file."
            ) from e
    except MemoryError:
        raise
    except Exception as e:  # a damaged pickle or zip: KeyError, IndexError, EOFError, RecursionError, ...
        raise CheckpointError(f"{path}: {corrupt.format(_reason(e))}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except MemoryError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: could not be unpickled even as trusted ({_reason(e)})") from e


def _unwrap(obj: Any, source: str) -> Mapping[str, Any]:
    """The state dict inside the envelopes (iterative: a crafted file may nest them without end)."""
    root = source
    for _ in range(_MAX_ENVELOPES + 1):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: expected a state dict (a mapping), got {type(obj).__name__}")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((k for k in _ENVELOPE_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{source}: no state dict found; top-level keys {sorted(map(str, obj))[:12]} hold no tensors "
                f"and none of {list(_ENVELOPE_KEYS)} is a state dict"
            )
        obj, source = obj[inner], f"{source}[{inner!r}]"
    raise CheckpointError(
        f"{root}: the state dict is nested in more than {_MAX_ENVELOPES} envelopes "
        f"({list(_ENVELOPE_KEYS)}); not a checkpoint"
    )


def normalize_state_dict(
    state_dict: Mapping[str, Any], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Unwrap, strip wrapper prefixes, rename legacy keys, and reshape 4-D 1x1 linear weights to 2-D."""
    sd = _unwrap(state_dict, source)
    # mmdet/mmseg checkpoints: keep only the backbone.
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        for pattern, repl in _LEGACY_RENAMES:
            key = pattern.sub(repl, key)
        if value.dim() == 4 and value.shape[2:] == (1, 1) and _LINEAR_1X1.search(key):
            value = value.flatten(1)
        if key in out:
            raise CheckpointError(f"{source}: two entries map to the key {key!r} after renaming")
        out[key] = value
    return out


def suspicious_values(tensor: torch.Tensor) -> str | None:
    """Why a floating tensor's values are suspect (NaN/Inf, or finite beyond MAX_FINITE_MAGNITUDE), or None.

    One pass (aminmax) and no copy of the tensor unless it does hold a NaN or Inf.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    lo, hi = (float(v) for v in torch.aminmax(tensor.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates into aminmax, Inf shows as is
        bad = int((~torch.isfinite(tensor)).sum())
        return f"{bad} of {tensor.numel()} values are NaN or Inf"
    peak = max(abs(lo), abs(hi))
    if peak > MAX_FINITE_MAGNITUDE:
        return (
            f"holds finite values up to {peak:.3g} in magnitude (over {MAX_FINITE_MAGNITUDE:.0e}: "
            "corrupted or crafted?)"
        )
    return None


def warn_suspicious_values(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """One warning naming the first tensor with NaN/Inf or huge values (and how many others have them)."""
    found = [(k, why) for k in sorted(tensors) if (why := suspicious_values(tensors[k])) is not None]
    if found:
        name, why = found[0]
        more = f" (and {len(found) - 1} more tensors)" if len(found) > 1 else ""
        warnings.warn(
            f"{source} [{name}]: {why}{more}; loaded anyway: outputs will be NaN or wrong unless this is "
            "replaced (check the file)",
            stacklevel=3,
        )


def load_checkpoint(
    path: str | os.PathLike, trust_pickle: bool = False, max_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    """Read a checkpoint (.safetensors, or .pth/.pt/.bin loaded weights_only) as a normalised state dict.

    ``max_bytes`` bounds the file and what a zip checkpoint unpacks to (see read_checkpoint_file).
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    state_dict = normalize_state_dict(read_checkpoint_file(path, trust_pickle, max_bytes), source=str(path))
    warn_suspicious_values(state_dict, path)
    return state_dict


def _model_name(model: nn.Module) -> str:
    arch = getattr(model, "arch_name", None)
    cfg = getattr(model, "pretrained_cfg", None)
    if arch is None and isinstance(cfg, Mapping):
        arch = cfg.get("architecture")
    return f"{type(model).__name__} ({arch})" if arch else type(model).__name__


def load_into_model(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    source: str | os.PathLike | None = None,
    allow_missing: Sequence[str] = (),
) -> LoadReport:
    """Load a normalised state dict; on any mismatch (strict) raise CheckpointMismatchError listing keys.

    allow_missing: fnmatch patterns of model keys that may be absent (e.g. a dropped head).
    Non-strict loads skip shape-mismatched entries too and report everything skipped.
    """
    source = str(source) if source is not None else "state dict"
    expected = model.state_dict()
    missing = [
        k for k in expected if k not in state_dict and not any(fnmatch.fnmatch(k, p) for p in allow_missing)
    ]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatchError(_mismatch_message(model, source, missing, unexpected, mismatched))
    bad = {k for k, _, _ in mismatched}
    model.load_state_dict(
        {k: v for k, v in state_dict.items() if k in expected and k not in bad}, strict=False
    )
    return LoadReport(missing, unexpected, mismatched)


def _mismatch_message(
    model: nn.Module,
    source: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    lines = [
        f"checkpoint {source} does not fit {_model_name(model)}: {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(mismatched)} shape-mismatched keys"
    ]
    if missing:
        lines.append(f"  missing (first {min(_SHOWN, len(missing))}): " + ", ".join(missing[:_SHOWN]))
    if unexpected:
        lines.append(
            f"  unexpected (first {min(_SHOWN, len(unexpected))}): " + ", ".join(unexpected[:_SHOWN])
        )
    if mismatched:
        shown = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched[:_SHOWN]]
        lines.append(f"  shape mismatch (first {len(shown)}): " + "; ".join(shown))
    if mismatched and all(k.startswith("classifier.head.") for k, _, _ in mismatched) and not missing:
        lines.append("  hint: only the head differs; pass num_classes to drop the checkpoint head")
    else:
        lines.append("  hint: the checkpoint was probably made for another variant/config of the model")
    return "\n".join(lines)


def config_from_yacs(cfg: Any) -> dict[str, Any] | None:
    """VSSM kwargs from the official yacs config saved in training checkpoints (best effort)."""
    try:
        m, v = cfg.MODEL, cfg.MODEL.VSSM
        return dict(
            patch_size=v.PATCH_SIZE, in_chans=v.IN_CHANS, num_classes=m.NUM_CLASSES, depths=list(v.DEPTHS),
            dims=v.EMBED_DIM, ssm_d_state=v.SSM_D_STATE, ssm_ratio=v.SSM_RATIO, ssm_dt_rank=v.SSM_DT_RANK,
            ssm_act_layer=v.SSM_ACT_LAYER, ssm_conv=v.SSM_CONV, ssm_conv_bias=v.SSM_CONV_BIAS,
            ssm_drop_rate=v.SSM_DROP_RATE, ssm_init=v.SSM_INIT, forward_type=v.SSM_FORWARDTYPE,
            mlp_ratio=v.MLP_RATIO, mlp_act_layer=v.MLP_ACT_LAYER, mlp_drop_rate=v.MLP_DROP_RATE, gmlp=v.GMLP,
            drop_path_rate=m.DROP_PATH_RATE, patch_norm=v.PATCH_NORM, norm_layer=v.NORM_LAYER,
            downsample_version=v.DOWNSAMPLE, patchembed_version=v.PATCHEMBED, posembed=v.POSEMBED,
            imgsize=cfg.DATA.IMG_SIZE,
        )  # fmt: skip
    except Exception:
        return None
