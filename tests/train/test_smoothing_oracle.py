"""label_smoothing in the training loss: the trainer's logged loss of step 1 equals the smoothed
cross-entropy written out by hand, and a short run equals the plain AdamW reference loop."""

from __future__ import annotations

import json

import torch
from toy import TINY_VMAMBA

from adaptor_peft.train import load_recipe, train
from adaptor_peft.train.trainer import final_tensors

EPS = 0.5


def _recipe(toy_data, out, **over):
    base = dict(
        model=TINY_VMAMBA, method="adaptor", adaptor={"num_heads": 2, "num_points": 2, "dilations": [1, 2],
                                                      "train_norms": False},  # as the reference loop
        train_data=str(toy_data[0]), eval_data=None, img_size=16, batch_size=8, max_steps=6, lr=0.03,
        warmup_steps=1, weight_decay=0.05, log_every=1, progress=False, plot=False, seed=0,
        label_smoothing=EPS, output_dir=str(out),
    )  # fmt: skip
    base.update(over)
    return load_recipe(base)


def _smoothed_ce_by_hand(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    """Mean over the batch of -sum_k q_k log p_k with q = (1 - eps) one_hot(y) + eps / K."""
    logits = logits.double()
    k = logits.shape[1]
    log_p = logits - logits.exp().sum(1, keepdim=True).log()
    total = 0.0
    for i in range(len(labels)):
        for c in range(k):
            q = (1.0 - eps) * (c == int(labels[i])) + eps / k
            total -= q * float(log_p[i, c])
    return total / len(labels)


def test_label_smoothing_is_in_the_training_loss(toy_data, tmp_path, oracle):
    out = tmp_path / "run"
    rec = _recipe(toy_data, out)
    with oracle.capture() as cap:
        train(rec)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]

    # step 1 by hand: the initial model (train mode) on the first 8 samples of epoch 0's permutation
    images, labels = oracle.toy_tensors(toy_data[0], 16)
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(rec.seed * 100_003))[:8]
    model = cap.model
    model.load_state_dict(cap.initial)
    model.train()
    with torch.no_grad():
        logits = model(images[idx])
    smoothed = _smoothed_ce_by_hand(logits, labels[idx], EPS)
    plain = _smoothed_ce_by_hand(logits, labels[idx], 0.0)
    assert abs(smoothed - plain) > 100 * 1e-5 * smoothed, (smoothed, plain)  # the case tells them apart
    assert abs(logged[0]["loss"] - smoothed) <= 1e-5 * abs(smoothed), (logged[0]["loss"], smoothed, plain)

    # the whole run equals the reference loop (which applies recipe.label_smoothing)
    ref = oracle.plain_adamw_run(rec, cap.initial, oracle.expected_trainable("adaptor", cap.model))
    for row, want in zip(logged, ref["loss"], strict=True):
        assert abs(row["loss"] - want) <= 1e-5 * abs(want), (row, want)
    got = final_tensors(out)
    assert sorted(got) == sorted(ref["tensors"])
    for n in got:
        torch.testing.assert_close(got[n], ref["tensors"][n], atol=2e-6, rtol=1e-5, msg=n)
