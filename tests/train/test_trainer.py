"""The Accelerate trainer on a tiny VMamba: the reference run == a hand-written PyTorch loop, and then
DDP == 1 process, resume == uninterrupted, accumulation == large batch; bf16, logs, plot, safety checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from toy import TINY_VMAMBA

from adaptor_peft.train import trainer as trainer_mod
from adaptor_peft.train.recipes import load_recipe
from adaptor_peft.train.trainer import NonFiniteLossError, RunDirError, final_tensors, train

TIME_KEYS = {"samples_per_s", "time_s"}


def recipe(toy_data, out, **over):
    base = dict(
        model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2, "dilations": [1, 2],
                                                      "train_norms": False},  # pinned: adaptors + head
        train_data=str(toy_data[0]), eval_data=str(toy_data[1]), img_size=16, batch_size=8, max_steps=6,
        lr=0.01, warmup_steps=2, weight_decay=0.01, log_every=2, progress=False, plot=False, seed=0,
        output_dir=str(out),
    )  # fmt: skip
    base.update(over)
    return load_recipe(base)


def assert_same_tensors(a, b, atol=1e-6):
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_time(rs):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rs]


@pytest.fixture(scope="module")
def reference_run(toy_data, tmp_path_factory, oracle):
    """batch 8, 6 steps, single process: the reference the other runs must reproduce (checked against a
    plain PyTorch loop by test_reference_run_equals_plain_pytorch_loop); with the model it trained."""
    out = tmp_path_factory.mktemp("ref") / "run"
    with oracle.capture() as captured:
        result = train(recipe(toy_data, out, eval_every=3, save_every=2, plot=True))
    return out, result, captured


def test_reference_run_outputs(reference_run):
    out, result, _ = reference_run
    assert result.steps == 6
    # one JSONL row per logging step (2, 4, 6), eval rows at 3 and the end
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [2, 4, 6]
    assert [r["step"] for r in rows(out / "eval.jsonl")] == [3, 6]
    for r in rows(out / "metrics.jsonl"):
        assert math.isfinite(r["loss"]) and r["samples"] == 16
    # the logged lr is the next step's: lr 0.01, 2 warm-up steps, then cosine over the 4 others towards 0:
    # after step 2 the peak (step 3 = first cosine step), after 4 half-way (0.005), after 6 the floor 0
    assert [r["lr"] for r in rows(out / "metrics.jsonl")] == pytest.approx([0.01, 0.005, 0.0], abs=1e-15)
    with Image.open(out / "curves.png") as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 100
    saved = load_recipe(out / "recipe.yaml")
    assert saved.max_steps == 6 and saved.model == TINY_VMAMBA
    summary = json.loads((out / "result.json").read_text())
    assert (
        summary["steps"] == 6 and summary["num_classes"] == 4 and summary["artefact"] == "adaptor.safetensors"
    )
    fe = json.loads((out / "final_eval.json").read_text())
    assert fe["count"] == 24 and sum(map(sum, fe["confusion"])) == 24
    assert (out / "adaptor.safetensors").is_file()
    # only trainable tensors in resume checkpoints, the 2 newest kept, latest written
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_00000004", "step_00000006"]
    tensors = final_tensors(out)
    assert tensors and all(".adaptor_" in k or k.startswith("classifier.head.") for k in tensors)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".tmp_*"))


def test_reference_run_equals_plain_pytorch_loop(reference_run, oracle):
    """The run that resume, accumulation and DDP must reproduce is itself right: a hand-written AdamW loop
    from the same initial weights ends at its tensors and sees its logged losses and gradient norms."""
    out, _, captured = reference_run
    rec = load_recipe(out / "recipe.yaml")
    ref = oracle.plain_adamw_run(rec, captured.initial, oracle.expected_trainable("adaptor", captured.model))
    got = final_tensors(out)
    assert sorted(got) == sorted(ref["tensors"])
    for k in got:
        torch.testing.assert_close(got[k], ref["tensors"][k], atol=2e-6, rtol=1e-5, msg=k)
    logged = rows(out / "metrics.jsonl")  # a row every 2 steps: the mean loss of both, the last norm
    assert [r["loss"] for r in logged] == pytest.approx(
        [(ref["loss"][i] + ref["loss"][i + 1]) / 2 for i in (0, 2, 4)], rel=1e-5
    )
    norms = [ref["grad_norm"][i] for i in (1, 3, 5)]
    assert [r["grad_norm"] for r in logged] == pytest.approx(norms, rel=1e-5)


def test_resume_after_kill_equals_uninterrupted(toy_data, reference_run, tmp_path, monkeypatch):
    ref_out = reference_run[0]
    out = tmp_path / "run"
    real_save = trainer_mod.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(accelerator, run_dir, step, *args, **kwargs):
        path = real_save(accelerator, run_dir, step, *args, **kwargs)
        if step == 4:
            raise Killed
        return path

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(recipe(toy_data, out, eval_every=3, save_every=2))
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    with pytest.raises(RunDirError, match="unfinished run; pass resume=true"):
        train(recipe(toy_data, out, eval_every=3, save_every=2))
    result = train(recipe(toy_data, out, eval_every=3, save_every=2, resume=True))
    assert result.steps == 6
    assert_same_tensors(final_tensors(out), final_tensors(ref_out), atol=0)
    assert strip_time(rows(out / "metrics.jsonl")) == strip_time(rows(ref_out / "metrics.jsonl"))
    assert rows(out / "eval.jsonl") == rows(ref_out / "eval.jsonl")


def test_grad_accumulation_equals_large_batch(toy_data, reference_run, tmp_path):
    ref_out = reference_run[0]
    out = tmp_path / "accum"
    train(recipe(toy_data, out, batch_size=4, grad_accum=2))
    assert_same_tensors(final_tensors(out), final_tensors(ref_out), atol=2e-6)


# Launched from a fresh interpreter: debug_launcher forks, and forking this pytest process after it has
# used an OpenMP thread pool can deadlock the children (stuck in gomp_team_barrier_wait_end).
# No port is chosen (so none can be taken by someone else before it is bound): debug_launcher's processes
# meet through a FileStore on a fresh temporary file, and gloo binds its connections to port 0 (the kernel
# picks a free one, atomically) and exchanges them through that store. The worker checks the FileStore,
# so a launcher that switched to a TCP rendezvous on a fixed port would fail here, not flake.
_DDP_LAUNCH = """
import sys, torch
from accelerate import debug_launcher

def worker(recipe_file):
    from torch.distributed.distributed_c10d import _get_default_store
    store = _get_default_store()
    assert isinstance(getattr(store, "underlying_store", store), torch.distributed.FileStore), store
    torch.set_num_threads(1)
    from adaptor_peft.train.trainer import train
    assert train(recipe_file).steps == 6

debug_launcher(worker, args=(sys.argv[1],), num_processes=2)
"""


@pytest.mark.slow  # ~20 s: two fresh interpreters import torch and accelerate
def test_two_process_ddp_equals_single_process(toy_data, reference_run, tmp_path):
    import os
    import subprocess
    import sys

    ref_out = reference_run[0]
    out = tmp_path / "ddp"
    recipe_file = tmp_path / "ddp.yaml"
    recipe(toy_data, out, batch_size=4).save(recipe_file)
    import adaptor_peft

    # the workers import the same adaptor_peft tree as this test (not whatever the venv has installed)
    tree = str(Path(adaptor_peft.__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=pythonpath)
    proc = subprocess.run(
        [sys.executable, "-c", _DDP_LAUNCH, str(recipe_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert json.loads((out / "result.json").read_text())["num_processes"] == 2
    assert_same_tensors(final_tensors(out), final_tensors(ref_out), atol=2e-6)
    # the loss logged is the mean over both processes' batches, as in the 1-process run
    for a, b in zip(rows(out / "metrics.jsonl"), rows(ref_out / "metrics.jsonl")):
        assert a["step"] == b["step"] and a["samples"] == b["samples"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_bf16_mixed_precision_on_cpu(toy_data, tmp_path):
    result = train(recipe(toy_data, tmp_path / "bf16", mixed_precision="bf16", max_steps=4))
    losses = [r["loss"] for r in rows(tmp_path / "bf16" / "metrics.jsonl")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(result.final_eval["loss"])


def test_non_finite_loss_stops_with_step_number(toy_data, tmp_path, monkeypatch):
    import torch.nn.functional as F

    calls = {"n": 0}

    class FakeF:
        def __getattr__(self, name):
            return getattr(F, name)

        @staticmethod
        def cross_entropy(logits, labels, **kw):
            calls["n"] += 1
            loss = F.cross_entropy(logits, labels, **kw)
            return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer_mod, "F", FakeF())
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="non-finite training loss \\(nan\\) at optimizer step 3"):
        train(recipe(toy_data, out, eval_data=None, save_every=1))
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert ckpts == ["step_00000001", "step_00000002"]
    assert not (out / "result.json").exists()


def test_finished_run_is_not_overwritten(toy_data, tmp_path):
    out = tmp_path / "done"
    train(recipe(toy_data, out, max_steps=2, eval_data=None))
    before = (out / "adaptor.safetensors").read_bytes()
    with pytest.raises(RunDirError, match=f"{out} already holds a finished run; pass overwrite=true"):
        train(recipe(toy_data, out, max_steps=2, eval_data=None))
    assert (out / "adaptor.safetensors").read_bytes() == before
    result = train(recipe(toy_data, out, max_steps=2, eval_data=None, overwrite=True, lr=0.02))
    assert result.steps == 2 and (out / "adaptor.safetensors").read_bytes() != before


@pytest.mark.parametrize("method", ["linear_probe", "full"])
def test_methods_train_what_they_claim(toy_data, tmp_path, method):
    result = train(recipe(toy_data, tmp_path / method, method=method, max_steps=2, eval_data=None))
    names = set(final_tensors(tmp_path / method))
    if method == "linear_probe":
        assert names == {"classifier.head.weight", "classifier.head.bias"}
        assert result.trainable_params == 64 * 4 + 4
    else:
        assert result.trainable_params == result.total_params and len(names) > 20


def test_label_outside_head_is_reported(toy_data, tmp_path):
    from adaptor_peft.train.data import DataError

    with pytest.raises(
        DataError, match=rf"{toy_data[0]}: label 3 at index \d+ is outside the model head \(num_classes=3\)"
    ):
        train(recipe(toy_data, tmp_path / "x", num_classes=3))


def test_booster_layer_decay_groups(toy_data, tmp_path):
    """base_lr + layer_decay: base rates fall with depth from the top (timm group_matcher), adaptors and
    the head keep their own; without base_lr (frozen base) or outside (0, 1] the recipe is refused."""
    from adaptor_peft.models import create_model
    from adaptor_peft.train.methods import get_method
    from adaptor_peft.train.recipes import RecipeError

    rec = recipe(toy_data, tmp_path / "b", base_lr=1e-3, layer_decay=0.5, head_lr=0.05)
    model = get_method(rec.method).prepare(create_model(rec.model, num_classes=4), rec)
    groups = trainer_mod.param_groups(model, rec)
    base = sorted({g["lr"] for g in groups if g["group_name"].startswith("base")})
    depth = len(base) - 1
    assert depth >= 3 and base == pytest.approx([1e-3 * 0.5**i for i in range(depth, -1, -1)])
    assert {g["lr"] for g in groups if g["group_name"].startswith("adaptor")} == {0.01}
    assert {g["lr"] for g in groups if g["group_name"].startswith("head")} == {0.05}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(trainable)
    result = train(rec)  # and the trainer runs with them
    assert result.steps == 6
    with pytest.raises(RecipeError, match="layer_decay.*needs base_lr"):
        recipe(toy_data, tmp_path / "c", layer_decay=0.5)
    with pytest.raises(RecipeError, match=r"layer_decay.*\(0, 1\]"):
        recipe(toy_data, tmp_path / "d", base_lr=1e-3, layer_decay=1.5)
