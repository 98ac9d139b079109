"""Training safety: non-finite losses stop cleanly, finished runs are never clobbered, damaged checkpoints
are skipped on resume, and every interrupted run still ends exactly like the uninterrupted one."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
import yaml
from reliability_helpers import (
    Killed,
    assert_clean_run_dir,
    assert_same_run,
    die_after_checkpoint,
    make_recipe,
    recipe_dict,
)
from safetensors.torch import load_file

from adaptor_peft.cli import main as cli_main
from adaptor_peft.train.checkpointing import find_resumable
from adaptor_peft.train.trainer import NonFiniteLossError, RunDirError, train


def _poison_training_loss(monkeypatch, at_call: int, how: str) -> None:
    """Make the ``at_call``-th training loss NaN ("loss") or keep it finite with NaN gradients ("grad")."""
    real = F.cross_entropy
    calls = {"n": 0}

    def cross_entropy(logits, labels, **kw):
        loss = real(logits, labels, **kw)
        if kw.get("reduction", "mean") != "mean":  # evaluation (reduction="none"): untouched
            return loss
        calls["n"] += 1
        if calls["n"] != at_call:
            return loss
        if how == "loss":
            return loss * float("nan")
        # value unchanged (sqrt(0) * 0 == 0), gradient 0 * inf = NaN into every trainable tensor
        return loss + 0.0 * torch.sqrt(logits.sum() * 0.0)

    monkeypatch.setattr(F, "cross_entropy", cross_entropy)


def test_non_finite_loss_stops_with_step_number_and_keeps_resumable_state(
    toy_data, reference_run, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    _poison_training_loss(monkeypatch, at_call=4, how="loss")
    kept = re.escape(str(out / "checkpoints"))
    message = (
        rf"non-finite training loss \(nan\) at optimizer step 4; the last complete checkpoint in {kept} is"
    )
    with pytest.raises(NonFiniteLossError, match=message):
        train(make_recipe(toy_data, out))
    assert not (out / "result.json").exists() and not (out / "adaptor.safetensors").exists()
    assert_clean_run_dir(out)
    folder, warnings = find_resumable(out)
    assert folder.name == "step_00000003" and not warnings
    assert all(torch.isfinite(t).all() for t in load_file(str(folder / "trainable.safetensors")).values())
    monkeypatch.undo()
    train(
        make_recipe(toy_data, out, resume=True)
    )  # nothing corrupt was saved: resume reproduces the reference
    assert_same_run(out, reference_run)
    assert_clean_run_dir(out)


def test_non_finite_gradients_never_reach_a_checkpoint(toy_data, tmp_path, monkeypatch):
    """A finite loss with NaN/Inf gradients must stop the run before the optimizer step poisons weights."""
    out = tmp_path / "run"
    _poison_training_loss(monkeypatch, at_call=4, how="grad")
    with pytest.raises(FloatingPointError, match=r"step 4\b"):
        train(make_recipe(toy_data, out))
    assert_clean_run_dir(out)
    folder, _ = find_resumable(out)
    assert folder is not None
    tensors = load_file(str(folder / "trainable.safetensors"))
    bad = sorted(k for k, t in tensors.items() if not torch.isfinite(t).all())
    assert not bad, f"{folder} (the checkpoint a resume would load) holds NaN/Inf tensors: {bad[:3]}"


def _snapshot(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_finished_run_is_never_overwritten(toy_data, tmp_path, capsys):
    out = tmp_path / "done"
    train(make_recipe(toy_data, out, max_steps=2, eval_data=None))
    before = _snapshot(out)
    message = f"{out} already holds a finished run; pass overwrite=true to replace it"
    for over in ({}, {"resume": True}, {"lr": 0.5}):
        with pytest.raises(RunDirError, match=re.escape(message)):
            train(make_recipe(toy_data, out, max_steps=2, eval_data=None, **over))
        assert _snapshot(out) == before
    # the CLI: exit status 1, one line naming the directory, no traceback, nothing touched
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe_dict(toy_data, out, max_steps=2, eval_data=None)))
    capsys.readouterr()
    assert cli_main(["train", str(recipe_file)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert _snapshot(out) == before
    # --overwrite replaces it
    assert cli_main(["train", str(recipe_file), "lr=0.05", "--overwrite"]) == 0
    assert _snapshot(out)["adaptor.safetensors"] != before["adaptor.safetensors"]
    assert_clean_run_dir(out)


def test_unfinished_run_needs_resume_or_overwrite(toy_data, tmp_path, monkeypatch):
    out = tmp_path / "half"
    die_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out))
    monkeypatch.undo()
    before = _snapshot(out)
    with pytest.raises(RunDirError, match=re.escape(f"{out} holds an unfinished run; pass resume=true")):
        train(make_recipe(toy_data, out))
    assert _snapshot(out) == before


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    # what is damaged in the newest checkpoint -> a fragment of the warning printed on resume
    "flipped_byte_in_tensors": (lambda d: _flip_byte(d / "trainable.safetensors"),
                                "trainable.safetensors: size or sha256 differs from the manifest"),
    "truncated_optimizer": (lambda d: _truncate(d / "optimizer.pt"),
                            "optimizer.pt: size or sha256 differs from the manifest"),
    "missing_scheduler": (lambda d: (d / "scheduler.pt").unlink(), "scheduler.pt: missing"),
    "garbage_manifest": (lambda d: (d / "manifest.json").write_text("{not json"),
                         "manifest.json: unreadable manifest"),
    "emptied_state": (lambda d: (d / "state.json").write_text(""), "state.json: size or sha256 differs"),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_latest_checkpoint_is_detected_and_previous_used(
    toy_data, reference_run, tmp_path, monkeypatch, capsys, kind
):
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=4)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out))
    monkeypatch.undo()
    damage, warning = CORRUPTIONS[kind]
    latest = out / "checkpoints" / "step_00000004"
    assert (out / "checkpoints" / "latest").read_text().strip() == latest.name
    damage(latest)
    capsys.readouterr()
    train(make_recipe(toy_data, out, resume=True))
    printed = capsys.readouterr().out
    assert f"warning: skipping damaged checkpoint: {latest / warning.split(':')[0]}" in printed
    assert warning.split(": ", 1)[1] in printed
    assert f"resumed from {out / 'checkpoints' / 'step_00000003'} at step 3/6" in printed
    assert_same_run(out, reference_run)
    assert_clean_run_dir(out)


def test_dangling_latest_pointer_falls_back_to_newest_complete(
    toy_data, reference_run, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=4)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out))
    monkeypatch.undo()
    (out / "checkpoints" / "latest").write_text("step_00000099\n")
    capsys.readouterr()
    train(make_recipe(toy_data, out, resume=True))
    assert f"resumed from {out / 'checkpoints' / 'step_00000004'} at step 4/6" in capsys.readouterr().out
    assert_same_run(out, reference_run)
    assert_clean_run_dir(out)


def test_every_checkpoint_damaged_restarts_from_scratch_with_warnings(
    toy_data, reference_run, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    die_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(Killed):
        train(make_recipe(toy_data, out))
    monkeypatch.undo()
    for step in (1, 2):
        _flip_byte(out / "checkpoints" / f"step_{step:08d}" / "trainable.safetensors")
    capsys.readouterr()
    train(make_recipe(toy_data, out, resume=True))
    printed = capsys.readouterr().out
    assert printed.count("warning: skipping damaged checkpoint") == 2 and "resumed from" not in printed
    assert_same_run(out, reference_run)
    assert json.loads((out / "result.json").read_text())["steps"] == 6
    assert_clean_run_dir(out)
