"""The `adaptor-peft info` pretty-printer: a readable summary of an adaptor file, a model checkpoint,
a peft adapter directory, a training run or one of its checkpoint directories, read from headers only
where the format allows it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from adaptor_peft.printable import printable
from adaptor_peft.regular_file import read_bounded

from .adaptor_header import META_FORMAT_VERSION, parse_adaptor_header
from .errors import AdaptorMetadataError
from .safetensors_reader import RawSafetensors, read_safetensors

#: state.json, manifest.json and adapter_config.json hold a few hundred bytes; a FIFO or a giant in their
#: place is refused (read_bounded) instead of hanging or filling memory in ``adaptor-peft info``
_MAX_JSON_BYTES = 1 << 20


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{n} B"


def _tensor_table(rows: list[tuple[str, str, tuple[int, ...], int]]) -> list[str]:
    """Lines of a name/dtype/shape/params/bytes table plus a total line."""
    if not rows:
        return ["  (no tensors)"]
    width = max(len(r[0]) for r in rows)
    lines = [f"  {'name':<{width}}  {'dtype':<5}  {'shape':<20}  {'params':>10}  {'bytes':>10}"]
    total_params = total_bytes = 0
    for name, dtype, shape, nbytes in rows:
        numel = math.prod(shape)
        total_params += numel
        total_bytes += nbytes
        lines.append(f"  {name:<{width}}  {dtype:<5}  {str(list(shape)):<20}  {numel:>10,}  {nbytes:>10,}")
    lines.append(
        f"  total: {len(rows)} tensors, {total_params:,} params, {_human_bytes(total_bytes)} of data"
    )
    return lines


def _entry_rows(raw: RawSafetensors) -> list[tuple[str, str, tuple[int, ...], int]]:
    """The table rows (name, dtype, shape, bytes) of a safetensors header, by name."""
    return [(k, e.dtype, e.shape, e.nbytes) for k, e in sorted(raw.entries.items())]


def _describe_safetensors(path: Path) -> list[str]:
    raw = read_safetensors(path, header_only=True)
    rows = _entry_rows(raw)
    lines: list[str] = []
    if META_FORMAT_VERSION in raw.metadata:
        header = parse_adaptor_header(raw)
        lines += [
            f"adaptor file: {path}",
            f"  format version: {header.format_version}   written by adaptor_peft {header.library_version}",
            f"  base architecture: {header.base_architecture}",
            f"  base fingerprint: {header.base_fingerprint.get('values', '')[:16]} "
            f"({header.base_fingerprint.get('num_tensors', '?')} frozen base tensors)",
            f"  includes head: {header.include_head}",
            "  adaptor config:",
        ]
        lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(header.config.items())]
        if header.base_config:
            lines.append("  base config:")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(header.base_config.items())]
        if header.user_metadata:
            lines.append("  user metadata:")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(header.user_metadata.items())]
    else:
        lines.append(f"safetensors file: {path}")
        if raw.metadata:
            lines.append("  metadata:")
            lines += [f"    {k}: {v}" for k, v in sorted(raw.metadata.items())]
    lines.append("  tensors:")
    lines += _tensor_table(rows)
    lines.append(f"  file size: {_human_bytes(raw.file_size)} ({raw.file_size:,} bytes)")
    return lines


def _describe_pickle_checkpoint(path: Path) -> list[str]:
    from adaptor_peft.models import load_checkpoint  # here: reading a header needs no torch/timm

    from .safetensors_reader import DTYPE_TAGS

    state = load_checkpoint(path)  # weights_only loading: never unpickles code
    rows = [
        (k, DTYPE_TAGS.get(t.dtype, str(t.dtype)), tuple(t.shape), t.numel() * t.element_size())
        for k, t in sorted(state.items())
    ]
    return [
        f"checkpoint: {path}",
        "  tensors:",
        *_tensor_table(rows),
        f"  file size: {_human_bytes(path.stat().st_size)}",
    ]


def _describe_peft_dir(path: Path) -> list[str]:
    cfg_path = path / "adapter_config.json"
    try:
        cfg = json.loads(read_bounded(cfg_path, _MAX_JSON_BYTES))
    except (OSError, ValueError) as exc:
        raise AdaptorMetadataError(cfg_path, f"cannot read peft adapter config: {exc}") from exc
    lines = [
        f"peft adapter directory: {path}",
        f"  peft_type: {cfg.get('peft_type')}",
        "  adapter_config.json:",
    ]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(cfg.items()) if k != "peft_type"]
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        raw = read_safetensors(weights, header_only=True)
        rows = _entry_rows(raw)
        lines += ["  adapter_model.safetensors:", *_tensor_table(rows)]
        lines.append(f"  file size: {_human_bytes(raw.file_size)} ({raw.file_size:,} bytes)")
    else:
        lines.append("  adapter_model.safetensors: missing")
    subdirs = sorted(p.name for p in path.iterdir() if (p / "adapter_config.json").is_file())
    if subdirs:
        lines.append(f"  other named adapters (sub-folders): {', '.join(subdirs)}")
    return lines


def _read_json(path: Path) -> object:
    try:
        return json.loads(read_bounded(path, _MAX_JSON_BYTES))
    except (OSError, ValueError) as exc:
        raise AdaptorMetadataError(path, f"cannot be read: {exc}") from exc


def _describe_checkpoint_dir(path: Path) -> list[str]:
    """A training checkpoint (``runs/x/checkpoints/step_N``: the layout of train/checkpointing.py)."""
    state = _read_json(path / "state.json") if (path / "state.json").is_file() else {}
    manifest = _read_json(path / "manifest.json")
    state = state if isinstance(state, dict) else {}
    run_dir = path.parent.parent
    lines = [
        f"training checkpoint: {path}",
        f"  step: {state.get('step', '?')}   epoch: {state.get('epoch', '?')}   "
        f"processes: {state.get('world_size', '?')}",
        f"  run directory: {run_dir}" + ("" if (run_dir / "recipe.yaml").is_file() else " (no recipe.yaml)"),
    ]
    if isinstance(state.get("classes"), list):
        lines.append(f"  classes ({len(state['classes'])}): {', '.join(map(str, state['classes']))}")
    problems = []
    if isinstance(manifest, dict):
        for name, entry in sorted(manifest.items()):
            size = entry.get("size") if isinstance(entry, dict) else None
            file = path / str(name)
            if not file.is_file():
                problems.append(f"{name} missing")
            elif file.stat().st_size != size:
                problems.append(f"{name} has {file.stat().st_size} bytes, the manifest {size}")
        lines.append(f"  files: {', '.join(sorted(map(str, manifest)))}")
    lines.append("  manifest: " + ("; ".join(problems) if problems else "every file present at its size"))
    weights = path / "trainable.safetensors"
    if weights.is_file():
        raw = read_safetensors(weights, header_only=True)
        rows = _entry_rows(raw)
        lines += ["  trainable.safetensors (trained tensors and buffers):", *_tensor_table(rows)]
    lines.append(f"  use: adaptor-peft eval {path} --data DATA   (or predict {path} IMAGES)")
    return lines


def _newest_checkpoint(root: Path) -> Path | None:
    latest = root / "latest"
    name = latest.read_text().strip() if latest.is_file() else ""
    if name and (root / name / "manifest.json").is_file():
        return root / name
    done = sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())
    return done[-1] if done else None


def _describe_run_dir(path: Path) -> list[str]:
    """A training run directory: its result (when finished), trained file and checkpoints."""
    lines = [f"training run: {path}"]
    result = path / "result.json"
    if result.is_file():
        summary = _read_json(result)
        summary = summary if isinstance(summary, dict) else {}
        for key in ("method", "steps", "top1", "num_classes", "classes", "artefact", "wall_time_s"):
            if key in summary:
                lines.append(f"  {key}: {json.dumps(summary[key])}")
    else:
        lines.append("  unfinished (no result.json)")
    root = path / "checkpoints"
    if root.is_dir():
        names = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())
        newest = _newest_checkpoint(root)
        lines.append(
            f"  checkpoints: {', '.join(names) or 'none'}" + (f" (newest {newest.name})" if newest else "")
        )
    return lines


def describe_file(path: str | os.PathLike) -> str:
    """Human-readable summary of an adaptor file, a model checkpoint, a peft adapter directory, a
    training run directory or a training checkpoint directory (``checkpoints/`` means its newest)."""
    path = Path(path)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            lines = _describe_peft_dir(path)
        else:
            if path.name == "checkpoints" and not (path / "manifest.json").is_file():
                newest = _newest_checkpoint(path)
                if newest is None:
                    raise AdaptorMetadataError(path, "holds no complete training checkpoint")
                path = newest
            if (path / "manifest.json").is_file():
                lines = _describe_checkpoint_dir(path)
            elif (path / "recipe.yaml").is_file():
                lines = _describe_run_dir(path)
            else:
                raise AdaptorMetadataError(
                    path,
                    "not a peft adapter directory (adapter_config.json), a training run (recipe.yaml) or a "
                    "training checkpoint (manifest.json)",
                )
    elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        lines = _describe_pickle_checkpoint(path)
    else:
        lines = _describe_safetensors(path)
    # Names and metadata come from the file: escape what a terminal would act on (ESC sequences, ...).
    return "\n".join(printable(line) for line in lines)
