"""Saves that fail half-way (disk full, read-only directory, failed rename) leave the previous file or
checkpoint intact and no temp files behind; a resumed run then still matches the uninterrupted one."""

from __future__ import annotations

import errno
import os
import pathlib
import stat

import pytest
import safetensors.torch
import torch
from reliability_helpers import assert_clean_run_dir, assert_same_run, make_recipe
from toy import TINY_VMAMBA

from adaptor_peft import MambaAdaptorConfig, inject_adaptors, load_adaptors, save_adaptors
from adaptor_peft.models import convert_checkpoint, create_model, load_checkpoint
from adaptor_peft.train import trainer as trainer_mod
from adaptor_peft.train.checkpointing import find_resumable, verify_checkpoint
from adaptor_peft.train.trainer import train

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _HalfWrite:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        self._fh.write(bytes(data)[: len(data) // 2])
        self._fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()
        return False


def _disk_full_for(monkeypatch, match) -> None:
    """Every atomic writer (os.fdopen of a mkstemp fd, Path.write_bytes) hits ENOSPC for matching paths."""
    real_fdopen, real_write_bytes = os.fdopen, pathlib.Path.write_bytes

    def fdopen(fd, mode="r", *args, **kwargs):
        fh = real_fdopen(fd, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{fd}")
        return _HalfWrite(fh) if "w" in mode and match(pathlib.Path(path)) else fh

    def write_bytes(self, data):
        if match(self):
            with open(self, "wb") as fh:
                _HalfWrite(fh).write(data)
        return real_write_bytes(self, data)

    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def _read_only(monkeypatch, directory: pathlib.Path) -> None:
    """Make ``directory`` refuse new entries: chmod a-w, plus an emulation of EACCES where we run as root."""
    directory.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    if os.geteuid() != 0:
        return
    inside = str(directory.resolve())

    def guard(real, arg_index=0):
        def wrapped(*args, **kwargs):
            path = os.path.abspath(os.fspath(args[arg_index]))
            if os.path.dirname(path) == inside and not os.path.exists(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(os, "mkdir", guard(os.mkdir))
    monkeypatch.setattr(os, "open", guard(os.open))


@pytest.fixture
def restore_permissions():
    dirs: list[pathlib.Path] = []
    yield dirs
    for d in dirs:
        d.chmod(0o755)


def _temp_files(root: pathlib.Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith(".tmp") or p.name.startswith(".tmp")
    )


# --- adaptor files --------------------------------------------------------------------------------


@pytest.fixture
def injected():
    torch.manual_seed(0)
    model = create_model(TINY_VMAMBA, num_classes=3)
    inject_adaptors(model, MambaAdaptorConfig(num_heads=2, num_points=2, dilations=[1, 2]))
    return model


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)


@pytest.mark.parametrize("failure", ["disk_full_mid_write", "rename_fails", "fsync_fails"])
def test_adaptor_save_failure_keeps_previous_file(injected, tmp_path, monkeypatch, failure):
    path = tmp_path / "task.safetensors"
    save_adaptors(injected, path)
    before = path.read_bytes()
    _perturb(injected)
    if failure == "disk_full_mid_write":
        _disk_full_for(monkeypatch, lambda p: p.parent == tmp_path)
    elif failure == "rename_fails":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    else:
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(OSError) as info:
        save_adaptors(injected, path)
    assert info.value.errno in (errno.ENOSPC, errno.EIO)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["task.safetensors"]
    torch.manual_seed(0)  # the same base weights as the fixture's
    fresh = create_model(TINY_VMAMBA, num_classes=3)
    load_adaptors(fresh, path)  # still a complete, checksummed file


def test_adaptor_save_into_read_only_dir(injected, tmp_path, monkeypatch, restore_permissions):
    ro = tmp_path / "ro"
    ro.mkdir()
    save_adaptors(injected, ro / "task.safetensors")
    before = (ro / "task.safetensors").read_bytes()
    _perturb(injected)
    restore_permissions.append(ro)
    _read_only(monkeypatch, ro)
    with pytest.raises(PermissionError, match=str(ro)):
        save_adaptors(injected, ro / "task.safetensors")
    with pytest.raises(PermissionError, match=str(ro)):
        save_adaptors(injected, ro / "new.safetensors")
    monkeypatch.undo()
    assert sorted(os.listdir(ro)) == ["task.safetensors"]
    assert (ro / "task.safetensors").read_bytes() == before


def test_convert_checkpoint_disk_full_keeps_previous_output(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = tmp_path / "src.safetensors"
    safetensors.torch.save_file(create_model(TINY_VMAMBA, num_classes=3).state_dict(), str(src))
    dst = tmp_path / "out" / "converted.safetensors"
    convert_checkpoint(src, dst)
    before = dst.read_bytes()
    _disk_full_for(monkeypatch, lambda p: p.parent == dst.parent)  # half the bytes land, then ENOSPC
    with pytest.raises(OSError, match="No space left on device"):
        convert_checkpoint(src, dst)
    monkeypatch.undo()
    assert dst.read_bytes() == before and sorted(os.listdir(dst.parent)) == ["converted.safetensors"]
    assert sorted(load_checkpoint(dst)) == sorted(load_checkpoint(src))


# --- resume checkpoints and run outputs -----------------------------------------------------------


def _check_failed_run(out: pathlib.Path, newest_complete: int) -> None:
    """After a failed save: no finished-run marker, the newest complete checkpoint verifies."""
    assert not (out / "result.json").exists()
    folder, warnings = find_resumable(out)
    assert folder.name == f"step_{newest_complete:08d}", (folder, warnings)
    verify_checkpoint(folder)


@pytest.mark.parametrize("failure", ["disk_full", "read_only"])
def test_checkpoint_save_failure_keeps_previous_checkpoint(
    toy_data, reference_run, tmp_path, monkeypatch, restore_permissions, failure
):
    out = tmp_path / "run"
    real_save = trainer_mod.save_checkpoint

    def save(accelerator, run_dir, step, *args, **kwargs):
        if step == 4:  # the disk fills up / the folder turns read-only while step 4 is being saved
            root = pathlib.Path(run_dir) / "checkpoints"
            if failure == "disk_full":
                _disk_full_for(
                    monkeypatch, lambda p: p.parent.name == ".tmp_step_00000004" and p.name == "optimizer.pt"
                )
            else:
                restore_permissions.append(root)
                _read_only(monkeypatch, root)
        return real_save(accelerator, run_dir, step, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save)
    with pytest.raises(OSError) as info:
        train(make_recipe(toy_data, out))
    assert info.value.errno == (errno.ENOSPC if failure == "disk_full" else errno.EACCES)
    monkeypatch.undo()
    for d in restore_permissions:
        d.chmod(0o755)
    _check_failed_run(out, newest_complete=3)
    leftovers = _temp_files(out)
    train(make_recipe(toy_data, out, resume=True))
    assert_same_run(out, reference_run)
    assert_clean_run_dir(out)
    assert not leftovers, f"the failed save left temp files behind: {leftovers}"


@pytest.mark.parametrize("target", ["latest", "adaptor.safetensors", "result.json", "metrics.jsonl"])
def test_run_output_write_failure_is_atomic_and_resumable(
    toy_data, reference_run, tmp_path, monkeypatch, target
):
    """ENOSPC while writing the checkpoint pointer, the final adaptor, the finished marker, a log rewrite."""
    out = tmp_path / "run"
    hit = {"n": 0}

    def match(p):
        if p.name.startswith(f".{target}.") or (target == "latest" and p.name.startswith(".latest.")):
            hit["n"] += 1
            # latest: fail at step 4's pointer; others: the first atomic write of that file
            return hit["n"] == (4 if target == "latest" else 1)
        return False

    _disk_full_for(monkeypatch, match)
    if target == "metrics.jsonl":  # rewritten atomically only on resume: kill a run first, then fill the disk
        monkeypatch.undo()
        real = trainer_mod.save_checkpoint

        def die(accelerator, run_dir, step, *a, **k):
            real(accelerator, run_dir, step, *a, **k)
            if step == 4:
                raise KeyboardInterrupt

        monkeypatch.setattr(trainer_mod, "save_checkpoint", die)
        with pytest.raises(KeyboardInterrupt):
            train(make_recipe(toy_data, out))
        monkeypatch.undo()
        before = (out / "metrics.jsonl").read_bytes()
        _disk_full_for(monkeypatch, match)
        with pytest.raises(OSError, match="No space left"):
            train(make_recipe(toy_data, out, resume=True))
        monkeypatch.undo()
        assert (out / "metrics.jsonl").read_bytes() == before
    else:
        with pytest.raises(OSError, match="No space left"):
            train(make_recipe(toy_data, out))
        monkeypatch.undo()
        _check_failed_run(out, newest_complete=3 if target == "latest" else 6)
        assert not (out / "adaptor.safetensors").exists() or target == "result.json"
    leftovers = _temp_files(out)
    train(make_recipe(toy_data, out, resume=True))
    assert_same_run(out, reference_run)
    assert_clean_run_dir(out)
    assert not leftovers, f"the failed write left temp files behind: {leftovers}"
