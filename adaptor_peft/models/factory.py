"""One entry point: build a VMamba model from a name, a config or a self-describing file; load weights."""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save as safetensors_save

from ..atomic import atomic_write_bytes
from ..limits import check_model_limits
from ..shipped import ASSET_PREFIX, resolve_asset
from .checkpoint import (
    CheckpointError,
    checkpoint_budget,
    config_from_yacs,
    load_checkpoint,
    load_into_model,
    normalize_state_dict,
    read_checkpoint_file,
    read_safetensors_metadata,
)
from .mamba_adaptor import MAMBA_ADAPTOR_VARIANTS, MambaAdaptorNet, mamba_adaptor_variant_args
from .vmamba import RELEASED_VARIANTS, VSSM, released_variant_args, vmamba_cfg

__all__ = ["convert_checkpoint", "create_model", "infer_variant", "list_models", "model_info"]

_HEAD_KEYS = ("classifier.head.weight", "classifier.head.bias")


def list_models() -> list[str]:
    """Registered names: the nine released VMamba classifiers, test_vmamba and the Mamba-Adaptor backbones."""
    return [*RELEASED_VARIANTS, "test_vmamba", *MAMBA_ADAPTOR_VARIANTS]


class HeadReplacedWarning(UserWarning):
    """create_model left a fresh classifier head: the checkpoint's head was dropped (other size) or absent.

    A caller that loads a trained head right after (eval/predict of a trained file) filters this category.
    """


def _variant_args(name: str) -> dict[str, Any]:
    if name in MAMBA_ADAPTOR_VARIANTS:
        return mamba_adaptor_variant_args(name)
    return released_variant_args(name)


def _build_meta(config: Mapping[str, Any]) -> VSSM:
    with torch.device("meta"):
        return MambaAdaptorNet(**config) if "adaptor" in config else VSSM(**config)


def _valid_kwargs() -> list[str]:
    return [p for p in inspect.signature(VSSM.__init__).parameters if p not in ("self", "kwargs")]


def _check_config(config: Mapping[str, Any], where: str) -> None:
    valid = _valid_kwargs()
    for key in config:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{where}: unknown VSSM config key {key!r}{hint}; valid keys: {', '.join(valid)}"
            )


def _resolve(
    name_or_config: str | os.PathLike | Mapping[str, Any],
) -> tuple[str | None, dict[str, Any], Path | None]:
    """-> (registered name or None, VSSM kwargs, file the config came from or None)."""
    if isinstance(name_or_config, Mapping):
        config = dict(name_or_config)
        _check_config(config, "config")
        check_model_limits(config, "config")
        return None, config, None
    text = str(name_or_config)
    if text.startswith(ASSET_PREFIX):  # a shipped file, as recipes name it (asset:vmamba_fmnist_d32...)
        text = str(resolve_asset(text))
    if text in list_models():
        return text, _variant_args(text), None
    path = Path(text)
    if path.suffix == ".safetensors" or path.is_file():
        if not os.path.lexists(path):  # a directory, FIFO or device: read_safetensors_metadata names it
            raise FileNotFoundError(f"model file not found: {path}")
        meta = read_safetensors_metadata(path) if path.suffix == ".safetensors" else {}
        if "config" not in meta:
            raise ValueError(
                f"{path}: has no 'config' metadata, so the model cannot be built from it; pass a model name "
                f"(one of {list_models()}) and checkpoint={str(path)!r}"
            )
        try:
            config = json.loads(meta["config"])
        except (ValueError, RecursionError) as e:  # RecursionError: nested without end
            raise ValueError(f"{path}: the 'config' metadata is not valid JSON ({type(e).__name__})") from e
        if not isinstance(config, dict):
            kind = type(config).__name__
            raise ValueError(f"{path}: the 'config' metadata must be a JSON object, got {kind}")
        _check_config(config, str(path))
        check_model_limits(config, f"{path} (its 'config' metadata)")
        arch = meta.get("arch")
        return (arch if arch in list_models() else None), config, path
    close = difflib.get_close_matches(text, list_models(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown model {text!r}{hint}; known models: {', '.join(list_models())}, or a config dict"
    )


def create_model(
    name_or_config: str | os.PathLike | Mapping[str, Any],
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    **overrides: Any,
) -> VSSM:
    """Build a VMamba model and (optionally) load a checkpoint strictly.

    name_or_config: a registered name (e.g. "vmamba_tiny_s1l8"), a dict of VSSM kwargs, or a .safetensors
    file whose metadata holds "config" (its weights load too unless `checkpoint` is given); files shipped
    with the package may be named ``asset:NAME`` (see ``adaptor_peft.shipped_base_path()``), as in recipes.
    num_classes: None keeps the checkpoint's head size (or the config's); a different size drops the
    checkpoint head (with a warning) and leaves a fresh one.
    """
    arch, config, config_file = _resolve(name_or_config)
    if checkpoint is not None and os.fspath(checkpoint).startswith(ASSET_PREFIX):
        checkpoint = resolve_asset(checkpoint)
    _check_config(overrides, "overrides")
    check_model_limits({**config, **overrides}, "overrides" if overrides else "config")
    if checkpoint is None and config_file is not None:
        checkpoint = config_file
    state_dict = None
    if checkpoint is not None:
        budget = checkpoint_budget(sum(p.numel() for p in _build_meta({**config, **overrides}).parameters()))
        state_dict = load_checkpoint(checkpoint, trust_pickle=trust_pickle, max_bytes=budget)
    ckpt_classes = None
    if state_dict is not None and "classifier.head.weight" in state_dict:
        ckpt_classes = int(state_dict["classifier.head.weight"].shape[0])
    if num_classes is None:
        num_classes = ckpt_classes if ckpt_classes is not None else config.get("num_classes", 1000)
    kwargs = {**config, **overrides, "num_classes": num_classes}
    if arch is not None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    else:
        model = VSSM(**kwargs)
        model.arch_name = None
        # Same data config as the registered variants, so timm.data.resolve_data_config works on it.
        model.pretrained_cfg = model.default_cfg = vmamba_cfg(architecture="vssm", num_classes=num_classes)
    if state_dict is not None:
        allow: tuple[str, ...] = ()
        if ckpt_classes is not None and ckpt_classes != num_classes:
            warnings.warn(
                f"{checkpoint}: its head has {ckpt_classes} classes and the model {num_classes};"
                " the checkpoint head (classifier.head.*) was dropped and a freshly initialised head is used",
                HeadReplacedWarning,
                stacklevel=2,
            )
            state_dict = {k: v for k, v in state_dict.items() if k not in _HEAD_KEYS}
            allow = ("classifier.head.*",)
        elif ckpt_classes is None and num_classes > 0:
            warnings.warn(
                f"{checkpoint}: holds no classifier head; the head is freshly initialised",
                HeadReplacedWarning,
                stacklevel=2,
            )
            allow = ("classifier.head.*",)
        load_into_model(model, state_dict, strict=True, source=checkpoint, allow_missing=allow)
        model.checkpoint_path = str(checkpoint)
    return model


def _depths_from_keys(keys: Mapping[str, Any]) -> list[int]:
    """Blocks per stage, read from `layers.{i}.blocks.{j}.` key names."""
    depth: dict[int, int] = {}
    for key in keys:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depth[i] = max(depth.get(i, 0), j + 1)
    return [depth.get(i, 0) for i in range(max(depth) + 1)] if depth else []


def infer_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The registered released variant whose keys and shapes (head aside) equal the state dict's, if any."""
    body = {k: tuple(v.shape) for k, v in state_dict.items() if k not in _HEAD_KEYS}
    depths = _depths_from_keys(body)
    for name in RELEASED_VARIANTS:
        if list(RELEASED_VARIANTS[name]["args"]["depths"]) != depths:
            continue  # cheap filter before building
        with torch.device("meta"):
            model = VSSM(**released_variant_args(name))
        ref = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in _HEAD_KEYS}
        if ref == body:
            return name
    return None


def model_info(name_or_config: str | os.PathLike | Mapping[str, Any]) -> str:
    """A short human summary of a model: parameters, layout and config (for `adaptor-peft info MODEL`)."""
    arch, config, config_file = _resolve(name_or_config)
    model = _build_meta(config)
    n_params = sum(p.numel() for p in model.parameters())
    n_head = sum(p.numel() for p in model.classifier.head.parameters())
    title = arch or (str(config_file) if config_file else "VSSM (custom config)")
    lines = [
        f"{title}: VMamba, {n_params:,} parameters ({n_params - n_head:,} without the head), "
        f"{len(model.state_dict())} state_dict entries",
        f"  stages: depths {config.get('depths')}, dims {model.dims}, "
        f"forward_type {config.get('forward_type')!r}, "
        f"norm {config.get('norm_layer')!r} ({'channel-first' if model.channel_first else 'channel-last'})",
        f"  ssm: d_state {config.get('ssm_d_state')}, ratio {config.get('ssm_ratio')}, "
        f"dt_rank {config.get('ssm_dt_rank')}; mlp_ratio {config.get('mlp_ratio')}; "
        f"num_classes {config.get('num_classes')}",
    ]
    if arch in RELEASED_VARIANTS:
        v = RELEASED_VARIANTS[arch]
        lines.append(f"  official checkpoint: {v['file']} (release {v['tag']}, {v['release_name']})")
    lines.append("  config: " + json.dumps(config, sort_keys=True))
    return "\n".join(lines)


def _metadata_config(src: Path, text: str | None) -> dict[str, Any] | None:
    """The 'config' metadata of a safetensors checkpoint as a dict (CheckpointError naming the file)."""
    if text is None:
        return None
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested without end
        raise CheckpointError(
            f"{src}: its 'config' metadata is not valid JSON ({type(e).__name__}); fix or drop that field"
        ) from e
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{src}: its 'config' metadata must be a JSON object, got {type(config).__name__}; fix that field"
        )
    return config


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    trust_pickle: bool = False,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Convert any supported checkpoint to a normalised .safetensors (atomic write; config in metadata).

    The model config is taken from `config`, else from the source (safetensors metadata or the official
    yacs config), else inferred by matching the keys and shapes against the registered released variants.
    """
    src, dst = Path(src), Path(dst)
    if not os.path.lexists(src):  # a directory, FIFO or device: read_checkpoint_file names it
        raise FileNotFoundError(f"checkpoint file not found: {src}")
    raw = read_checkpoint_file(src, trust_pickle)
    state_dict = normalize_state_dict(raw, source=str(src))
    arch = None
    if config is None and src.suffix == ".safetensors":
        meta = read_safetensors_metadata(src)
        config = _metadata_config(src, meta.get("config"))
        arch = meta.get("arch")
    if config is None and isinstance(raw, Mapping) and "config" in raw:
        config = config_from_yacs(raw["config"])
    if config is None:
        arch = infer_variant(state_dict)
        if arch is not None:
            config = released_variant_args(arch)
            head = state_dict.get("classifier.head.weight")
            if head is not None:
                config["num_classes"] = int(head.shape[0])
    metadata = {"format": "pt", "source_file": src.name}
    if config is not None:
        metadata["config"] = json.dumps(dict(config))
    if arch:
        metadata["arch"] = arch
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(dst, safetensors_save(tensors, metadata=metadata))
    return dst
