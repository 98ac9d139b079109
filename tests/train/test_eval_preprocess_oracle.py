"""evaluate_dataset preprocesses deterministically even when the recipe trains with timm augmentation:
its loss, accuracy and confusion equal a linear model applied by hand to the padded, normalised pixels."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from adaptor_peft.train import evaluate_dataset, load_recipe
from adaptor_peft.train.inference import TrainedModel

SIZE, HEIGHT, WIDTH, N, K = 16, 10, 12, 6, 3
MEAN = [0.5, 0.4, 0.3]
STD = [0.5, 0.25, 0.2]


def _images() -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8, asymmetric (a flip or crop changes them), and labels 0..K-1."""
    x = np.zeros((N, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for n in range(N):
        for h in range(HEIGHT):
            for w in range(WIDTH):
                for c in range(3):
                    x[n, h, w, c] = (n * 41 + c * 67 + h * 17 + w * w * 5 + 9) % 256
    return x, np.arange(N) % K


def _by_hand(img: np.ndarray) -> list[float]:
    """Flattened (3, SIZE, SIZE) input: image centred on black (floor of half the slack), /255, normalised."""
    top, left = (SIZE - HEIGHT) // 2, (SIZE - WIDTH) // 2
    out = []
    for c in range(3):
        for i in range(SIZE):
            for j in range(SIZE):
                inside = top <= i < top + HEIGHT and left <= j < left + WIDTH
                v = img[i - top, j - left, c] / 255.0 if inside else 0.0
                out.append((v - MEAN[c]) / STD[c])
    return out


def test_evaluate_dataset_ignores_the_training_augmentation(tmp_path):
    x, y = _images()
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    recipe = load_recipe(
        dict(
            img_size=SIZE,
            resize="pad",
            mean=MEAN,
            std=STD,
            augment="timm",
            hflip=0.5,
            crop_scale=[0.08, 1.0],
            re_prob=0.25,
            eval_data=str(tmp_path / "eval.npz"),
        )  # fmt: skip
    )
    torch.manual_seed(0)
    linear = nn.Linear(3 * SIZE * SIZE, K)
    model = nn.Sequential(nn.Flatten(), linear).eval()
    trained = TrainedModel(model, recipe, ["a", "b", "c"], tmp_path)

    got = evaluate_dataset(trained, batch_size=4)

    weight, bias = linear.weight.detach().double().tolist(), linear.bias.detach().double().tolist()
    loss, confusion = 0.0, [[0] * K for _ in range(K)]
    for n in range(N):
        pixels = _by_hand(x[n])
        logits = [sum(wk * p for wk, p in zip(weight[k], pixels)) + bias[k] for k in range(K)]
        log_z = math.log(sum(math.exp(v) for v in logits))
        loss += log_z - logits[int(y[n])]
        confusion[int(y[n])][max(range(K), key=lambda k: logits[k])] += 1
    assert got["count"] == N
    assert got["confusion"] == confusion
    assert got["top1"] == 100.0 * sum(confusion[k][k] for k in range(K)) / N
    assert abs(got["loss"] - loss / N) <= 1e-5 * abs(loss / N), (got["loss"], loss / N)
    # and evaluating again gives the very same numbers (no random stream involved)
    again = evaluate_dataset(trained, batch_size=4)
    assert again["loss"] == got["loss"] and again["confusion"] == got["confusion"]
