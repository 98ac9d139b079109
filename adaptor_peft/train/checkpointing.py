"""Resume checkpoints: trainable tensors + optimizer/scheduler/RNG state, written atomically.

Layout (one folder per checkpoint; ``latest`` is written last and names the newest complete one)::

    run_dir/checkpoints/step_00000100/trainable.safetensors   trainable parameters (+ buffers)
                                      optimizer.pt, scheduler.pt  (loaded with weights_only=True)
                                      rng_rank<r>.pt             per-process RNG states
                                      state.json                 step, epoch, logging window
                                      manifest.json              size + sha256 of every file above
    run_dir/checkpoints/latest

A checkpoint folder is assembled under a temporary name and renamed into place, so a killed run never
leaves a half-written checkpoint under a final name; ``find_resumable`` verifies the manifest and falls
back to the previous checkpoint when the newest is damaged.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..atomic import atomic_write_text
from ..regular_file import read_bounded

if TYPE_CHECKING:  # accelerate is imported when a run starts
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LRScheduler

CKPT_DIR = "checkpoints"
LATEST = "latest"
_PREFIX = "step_"
_MAX_JSON_BYTES = 1 << 20  # state.json, manifest.json and latest hold a few hundred bytes


class CheckpointError(RuntimeError):
    """A resume checkpoint is missing, damaged, or does not fit the run."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def rng_state() -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable data."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state returned."""
    version, keys, pos, has_gauss, cached = state["numpy"]
    random.setstate(_tuplify(state["python"]))
    np.random.set_state((version, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at ``step``."""
    return f"{_PREFIX}{step:08d}"


def save_checkpoint(
    accelerator: Accelerator,
    run_dir: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    state: dict[str, Any],
    keep: int,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write one complete checkpoint (collective: every process must call it).

    ``optimizer_state``: what to save instead of ``optimizer.state_dict()`` (the gathered state under FSDP).
    """
    root = Path(run_dir) / CKPT_DIR
    final = root / checkpoint_name(step)
    tmp = root / f".tmp_{checkpoint_name(step)}"
    main = accelerator.is_main_process
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        if optimizer_state is None:
            optimizer_state = optimizer.state_dict()
        _write_checkpoint(
            accelerator, root, tmp, final, step, trainable, optimizer_state, scheduler, state, keep
        )
    except BaseException:
        if main:  # a failed write (disk full, read-only dir) leaves no partial folder behind
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_checkpoint(
    accelerator: Accelerator,
    root: Path,
    tmp: Path,
    final: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler: LRScheduler,
    state: dict[str, Any],
    keep: int,
) -> None:
    main = accelerator.is_main_process
    rank = accelerator.process_index
    (tmp / f"rng_rank{rank}.pt").write_bytes(_torch_bytes(rng_state()))
    accelerator.wait_for_everyone()
    if main:
        (tmp / "trainable.safetensors").write_bytes(st_save(trainable))
        (tmp / "optimizer.pt").write_bytes(_torch_bytes(optimizer_state))
        (tmp / "scheduler.pt").write_bytes(_torch_bytes(scheduler.state_dict()))
        (tmp / "state.json").write_text(
            json.dumps({**state, "step": step, "world_size": accelerator.num_processes})
        )
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if final.exists():  # the same step saved again (a resumed run ending where it resumed)
            shutil.rmtree(final)
        tmp.rename(final)
        atomic_write_text(root / LATEST, final.name + "\n")
        _prune(root, keep)
    accelerator.wait_for_everyone()


def sweep_temp_files(run_dir: Path) -> list[Path]:
    """Remove what a killed or failed save left: ``.tmp_step_*`` folders and ``.*.tmp`` atomic-write files.

    Call on the main process only, before training starts (no save is in flight then).
    """
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CKPT_DIR):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name.startswith(f".tmp_{_PREFIX}"):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            elif entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


class WorldSizeMismatchError(CheckpointError):
    """A complete checkpoint was saved by a different number of processes than the resuming run has."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_bounded(path, _MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise CheckpointError(f"{path}: unreadable {what} ({type(exc).__name__})") from None


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def verify_checkpoint(folder: Path, world_size: int | None = None) -> None:
    """Raise CheckpointError unless every file in the manifest is present with its size and hash."""
    manifest_path = folder / "manifest.json"
    manifest = _read_json(manifest_path, "manifest")
    if not isinstance(manifest, dict):
        raise CheckpointError(
            f"{manifest_path}: damaged manifest (a {type(manifest).__name__}, not a mapping)"
        )
    for name, entry in manifest.items():
        if not _plain_name(name) or len(name) > 255:
            raise CheckpointError(f"{manifest_path}: damaged manifest (entry name {name[:40]!r})")
        if (
            not isinstance(entry, dict)
            or type(entry.get("size")) is not int
            or not isinstance(entry.get("sha256"), str)
        ):
            raise CheckpointError(
                f"{manifest_path}: damaged manifest (entry {name!r} is not {{size, sha256}})"
            )
        path = folder / name
        try:
            if not path.is_file():
                raise CheckpointError(f"{path}: missing")
            if path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
                raise CheckpointError(f"{path}: size or sha256 differs from the manifest (damaged file)")
        except OSError as exc:
            raise CheckpointError(f"{path}: unreadable ({exc.strerror})") from None
    for name in ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json"):
        if name not in manifest:
            raise CheckpointError(f"{folder}: manifest lacks {name}")
    state = _read_json(folder / "state.json", "state")
    if not isinstance(state, dict) or type(state.get("step")) is not int:
        raise CheckpointError(f"{folder / 'state.json'}: damaged state (no integer step)")
    if world_size is not None:
        saved = state.get("world_size")
        if saved != world_size:
            raise WorldSizeMismatchError(
                f"{folder}: saved by {saved} process(es), resumed with {world_size}; "
                "resume with the same count"
            )


def find_resumable(run_dir: Path, world_size: int | None = None) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies (``latest`` first), and warnings for damaged ones skipped."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return None, []
    candidates = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)), reverse=True
    )
    warnings = []
    latest = root / LATEST
    if latest.is_file():
        try:
            name = read_bounded(latest, _MAX_JSON_BYTES)[:64].decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            name = None
        if name is None or not (name.startswith(_PREFIX) and name[len(_PREFIX) :].isdigit()):
            warnings.append(
                f"{latest}: damaged (not a checkpoint name); using the newest complete checkpoint"
            )
        else:
            named = root / name
            if named in candidates:
                candidates.remove(named)
                candidates.insert(0, named)
    for folder in candidates:
        try:
            verify_checkpoint(folder, world_size)
            return folder, warnings
        except WorldSizeMismatchError:
            raise
        except CheckpointError as exc:
            warnings.append(f"skipping damaged checkpoint: {exc}")
    return None, warnings


def copy_checkpoint_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy a checkpoint's trainable tensors (and buffers) into the method-prepared model, in place.

    Every tensor must name a parameter or buffer of the model with the same shape, and every trainable
    parameter must be there: a checkpoint of another run's model is a CheckpointError naming the folder.
    """
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    unknown = sorted(set(tensors) - set(own))
    missing = sorted({n for n, p in model.named_parameters() if p.requires_grad} - set(tensors))
    if unknown or missing:
        raise CheckpointError(
            f"{folder}: does not fit the run's model (tensors not in the model: {unknown[:5]}, "
            f"trainable tensors missing: {missing[:5]})"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].shape != value.shape:
                raise CheckpointError(
                    f"{folder}: '{name}' has shape {list(value.shape)}, the model {list(own[name].shape)}"
                )
            own[name].copy_(value)


def load_checkpoint_state(
    accelerator: Accelerator,
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
) -> dict[str, Any]:
    """Restore trainable tensors, optimizer, scheduler and this process's RNG; return state.json."""
    copy_checkpoint_tensors(model, st_load((folder / "trainable.safetensors").read_bytes()), folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True))
    rng_file = folder / f"rng_rank{accelerator.process_index}.pt"
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    return json.loads(read_bounded(folder / "state.json", _MAX_JSON_BYTES))
