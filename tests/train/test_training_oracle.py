"""Training checked against oracles that share no code with the trainer: a separable toy task it must
learn, the frozen/trainable split a method promises, the closed-form learning-rate schedule, and a
hand-written plain PyTorch AdamW loop (conftest.plain_adamw_run) that its weights, losses and gradient
norms must reproduce."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook
from toy import TINY_VMAMBA

from adaptor_peft.train.recipes import load_recipe
from adaptor_peft.train.trainer import final_tensors, train


def recipe(toy_data, out, **over):
    base = dict(
        model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2, "dilations": [1, 2],
                                                      "train_norms": False},  # pinned: adaptors + head
        train_data=str(toy_data[0]), eval_data=None, img_size=16, batch_size=8, max_steps=6, lr=0.01,
        warmup_steps=2, weight_decay=0.05, log_every=1, progress=False, plot=False, seed=0,
        output_dir=str(out),
    )  # fmt: skip
    base.update(over)
    return load_recipe(base)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@torch.no_grad()
def loss_and_accuracy(model, images, labels):
    """Mean cross-entropy and accuracy (%) of ``model`` in eval mode, computed here, not by the trainer."""
    was = model.training
    model.eval()
    logits = model(images)
    model.train(was)
    return float(F.cross_entropy(logits, labels)), 100.0 * float((logits.argmax(1) == labels).float().mean())


def test_toy_task_is_learned_to_100_percent(toy_data, tmp_path, oracle):
    """Each class is a bright bar at its own place (linearly separable in pixel space): 36 steps must
    take the training loss down by 10x and the training accuracy to exactly 100%."""
    out = tmp_path / "learn"
    rec = recipe(toy_data, out, max_steps=36, lr=0.03, log_every=6, eval_data=str(toy_data[0]))
    with oracle.capture() as cap:
        result = train(rec)
    images, labels = oracle.toy_tensors(toy_data[0], 16)
    before = copy.deepcopy(cap.model)
    before.load_state_dict(cap.initial)
    loss0, acc0 = loss_and_accuracy(before, images, labels)
    loss1, acc1 = loss_and_accuracy(cap.model, images, labels)
    assert acc0 < 50.0 and acc1 == 100.0, (acc0, acc1)
    assert loss1 < loss0 / 10, (loss0, loss1)
    logged = [r["loss"] for r in rows(out / "metrics.jsonl")]
    assert len(logged) == 6 and logged[-1] < logged[0] / 10, logged
    # the trainer's own evaluation (on the same images) agrees with ours
    assert result.final_eval["top1"] == 100.0
    assert result.final_eval["loss"] == pytest.approx(loss1, rel=1e-4)


@pytest.mark.parametrize("method", ["adaptor", "linear_probe", "full"])
def test_trainable_tensors_change_and_frozen_ones_stay_bit_identical(toy_data, tmp_path, oracle, method):
    """The trainable names are the method's promise (adaptor: what injection added + the head), every one
    of them moves and every other tensor keeps its initial bits. 64 x 64 inputs: the last stages then
    still see 2 x 2 tokens (at 16 x 16 they see one, where the scan's A and Adaptor-T get no gradient)."""
    out = tmp_path / method
    with oracle.capture() as cap:
        train(recipe(toy_data, out, method=method, max_steps=4, img_size=64))
    want = oracle.expected_trainable(method, cap.model)
    assert cap.trainable == want, (sorted(cap.trainable ^ want))[:10]
    final = dict(cap.model.state_dict())
    assert sorted(final) == sorted(cap.initial)
    unchanged = sorted(n for n in want if torch.equal(final[n], cap.initial[n]))
    assert not unchanged, f"trainable tensors that did not change: {unchanged}"
    moved = sorted(n for n in final if n not in want and not torch.equal(final[n], cap.initial[n]))
    assert not moved, f"frozen tensors that changed: {moved}"
    # the run's checkpoint holds exactly the trainable tensors (the model has no buffers), as trained
    saved = final_tensors(out)
    assert set(saved) == want
    for n in want:
        assert torch.equal(saved[n], final[n]), n


def test_learning_rate_of_every_step_is_warmup_cosine(toy_data, tmp_path, oracle):
    """The lr each optimizer step applies (seen by a global AdamW pre-step hook), per parameter group,
    under gradient accumulation: lr x k/(W+1) for k <= W, then the cosine towards min_lr_ratio x lr."""
    lr, head_lr, warmup, total, floor = 0.02, 0.05, 3, 10, 0.1
    out = tmp_path / "lr"
    applied: list[dict[str, float]] = []

    def hook(optimizer, args, kwargs):
        applied.append({g["name"]: g["lr"] for g in optimizer.param_groups})

    handle = register_optimizer_step_pre_hook(hook)
    try:
        train(
            recipe(toy_data, out, lr=lr, head_lr=head_lr, warmup_steps=warmup, max_steps=total,
                   min_lr_ratio=floor, batch_size=4, grad_accum=2)
        )  # fmt: skip
    finally:
        handle.remove()
    assert len(applied) == total  # one optimizer step per 2 micro-batches
    for k, groups in enumerate(applied, start=1):
        assert set(groups) == {"adaptor", "head"}
        for name, peak in (("adaptor", lr), ("head", head_lr)):
            want = oracle.lr_of_step(peak, k, warmup, total, floor)
            assert groups[name] == pytest.approx(want, rel=1e-12), (k, name)
    # hand-worked (lr 0.02, W 3, T 10, floor 0.1): 0.005, 0.01, 0.015 in warm-up, the peak at step 4, then
    # 0.002 + 0.018 x (1 + cos(pi (k - 4) / 7)) / 2: step 10 is 6/7 of the way down the cosine
    adaptor = [g["adaptor"] for g in applied]
    assert adaptor[:4] == pytest.approx([0.005, 0.01, 0.015, 0.02], rel=1e-12)
    assert adaptor[-1] == pytest.approx(0.002 + 0.009 * (1 + math.cos(math.pi * 6 / 7)), rel=1e-12)
    # the logged lr is the one the next step will use, so the last row shows the floor
    logged = [r["lr"] for r in rows(out / "metrics.jsonl")]
    next_lr = [oracle.lr_of_step(lr, k + 1, warmup, total, floor) for k in range(1, total + 1)]
    assert logged == pytest.approx(next_lr, rel=1e-12)
    assert logged[-1] == pytest.approx(lr * floor, rel=1e-12)


@pytest.mark.parametrize(
    "over",
    [
        pytest.param(dict(batch_size=8, grad_accum=1), id="batch8"),
        pytest.param(
            dict(batch_size=4, grad_accum=2, clip_grad=2.0, head_lr=0.03), id="batch4x2-clip-headlr"
        ),
    ],
)
def test_trainer_equals_plain_pytorch_adamw_loop(toy_data, tmp_path, oracle, over):
    """8 steps (crossing the epoch boundary at 6) reproduce the hand-written loop: final tensors, every
    step's loss and pre-clipping gradient norm (which AdamW's scale invariance would otherwise hide)."""
    out = tmp_path / "run"
    rec = recipe(toy_data, out, max_steps=8, min_lr_ratio=0.1, **over)
    with oracle.capture() as cap:
        train(rec)
    ref = oracle.plain_adamw_run(rec, cap.initial, oracle.expected_trainable("adaptor", cap.model))
    got = final_tensors(out)
    assert sorted(got) == sorted(ref["tensors"])
    for n in got:
        torch.testing.assert_close(got[n], ref["tensors"][n], atol=2e-6, rtol=1e-5, msg=n)
    logged = rows(out / "metrics.jsonl")
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert [r["loss"] for r in logged] == pytest.approx(ref["loss"], rel=1e-5)
    assert [r["grad_norm"] for r in logged] == pytest.approx(ref["grad_norm"], rel=1e-5)
    if rec.clip_grad is not None:  # clipping acted on some steps, not on all
        assert min(ref["grad_norm"]) < rec.clip_grad < max(ref["grad_norm"]), ref["grad_norm"]
