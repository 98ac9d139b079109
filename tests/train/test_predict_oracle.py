"""`predict` against a head designed by hand: each image's class and probabilities are known in advance.

A tiny linear-probe run (class names ant..eel) gives the frozen base. Its head is then replaced by one
whose logits are chosen per image: the pooled features f_i of five images (preprocessed by hand in
this file) are captured at the head's input, and the head (W, b) is solved so that W f_i + b equals a
logits row written below. A second head has zero weights and a hand-set bias: every image, whatever its
size or mode, then gets the same known logits. The oracle is the designed logits: the class order is
read off them and the probabilities are a numpy softmax of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from toy import TINY_VMAMBA

from adaptor_peft.cli import main
from adaptor_peft.train.inference import load_trained, predict_files

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
SIZE = 16
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
LEVELS = [3.0, 1.5, 0.5, -0.5, -2.0]  # logits by rank: well separated, so the order is unambiguous
RANKS = [  # per image: class indices from the most to the least likely
    [2, 4, 0, 3, 1],
    [0, 1, 2, 3, 4],
    [4, 3, 2, 1, 0],
    [1, 3, 0, 4, 2],
    [3, 0, 4, 2, 1],
]
BIAS = [0.2, -1.0, 2.5, 0.9, -0.3]  # zero-weight head: cat > dog > ant > eel > bee for every image
BIAS_RANK = [2, 3, 0, 4, 1]


def _designed_logits() -> np.ndarray:
    logits = np.zeros((len(RANKS), len(CLASSES)))
    for i, order in enumerate(RANKS):
        logits[i, order] = LEVELS
    return logits


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _expected_top(logits: np.ndarray, order: list[int], k: int) -> list[tuple[str, float]]:
    probs = _softmax(np.asarray(logits, dtype=np.float64))
    return [(CLASSES[c], float(probs[c])) for c in order[:k]]


def _assert_top(got, expected):
    assert [c for c, _ in got] == [c for c, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-5)
    assert all(a >= b for (_, a), (_, b) in zip(got, got[1:]))  # descending


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(run dir, designed head file, bias-only head file, image files, folder of those images)."""
    root = tmp_path_factory.mktemp("predict_oracle")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8)
    np.savez(root / "train.npz", x=x, y=np.arange(10) % 5, classes=np.array(CLASSES))
    recipe = dict(model=TINY_VMAMBA, method="linear_probe", train_data=str(root / "train.npz"),
                  img_size=SIZE, mean=MEAN, std=STD, batch_size=5, max_steps=1, progress=False,
                  plot=False, output_dir=str(root / "run"))  # fmt: skip
    (root / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(root / "r.yaml")]) == 0
    run = root / "run"

    images = np.random.default_rng(1).integers(0, 256, (len(RANKS), SIZE, SIZE, 3), dtype=np.uint8)
    folder = root / "images"
    folder.mkdir()
    files = []
    for i, img in enumerate(images):
        files.append(folder / f"img{i}.png")
        Image.fromarray(img).save(files[-1])

    # Pooled features at the head's input, for inputs normalised by hand: (v/255 - mean) / std, CHW.
    x = (images.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2)).float()
    base = load_trained(run)
    seen = []
    hook = base.model.get_classifier().register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        base.model(x)
    hook.remove()
    feats = seen[0].double().numpy()
    solved, *_ = np.linalg.lstsq(np.hstack([feats, np.ones((len(feats), 1))]), _designed_logits(), rcond=None)
    (bias_key, weight_key) = sorted(load_file(str(run / "head.safetensors")))  # the run's head tensors
    assert bias_key.endswith(".bias") and weight_key.endswith(".weight")
    designed = root / "designed.safetensors"
    save_file(
        {
            weight_key: torch.tensor(solved[:-1].T, dtype=torch.float32).contiguous(),
            bias_key: torch.tensor(solved[-1], dtype=torch.float32),
        },
        str(designed),
    )
    bias_only = root / "bias_only.safetensors"
    save_file(
        {weight_key: torch.zeros(len(CLASSES), feats.shape[1]), bias_key: torch.tensor(BIAS)}, str(bias_only)
    )
    return run, designed, bias_only, files, folder


def test_predict_files_names_the_designed_class(setup):
    run, designed, _, files, _ = setup
    trained = load_trained(run, designed)
    assert trained.classes == CLASSES
    rows = predict_files(trained, files, topk=5)
    assert [r["file"] for r in rows] == [str(f) for f in files]
    for row, logits, order in zip(rows, _designed_logits(), RANKS):
        _assert_top(row["top"], _expected_top(logits, order, 5))
        assert sum(p for _, p in row["top"]) == pytest.approx(1.0, abs=1e-5)


def test_cli_predict_json_and_table(setup, capsys):
    run, designed, _, files, folder = setup
    assert main(["predict", str(run), str(folder), "--weights", str(designed), "--topk", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["file"]).name for r in rows] == [f.name for f in files]
    for row, logits, order in zip(rows, _designed_logits(), RANKS):
        _assert_top([tuple(t) for t in row["top"]], _expected_top(logits, order, 3))

    assert main(["predict", str(run), str(files[3]), str(files[0]), "--weights", str(designed)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line, i in zip(lines, (3, 0), strict=True):  # default --topk 3, files in the given order
        name, _, rest = line.partition(": ")
        assert name == str(files[i])
        words = rest.split()
        got = list(zip(words[0::2], map(float, words[1::2])))
        expected = _expected_top(_designed_logits()[i], RANKS[i], 3)
        assert [c for c, _ in got] == [c for c, _ in expected]
        assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=6e-4)  # printed .3f


def test_bias_only_head_gives_the_same_known_answer_for_any_image(setup, tmp_path, capsys):
    run, _, bias_only, files, _ = setup
    gray = tmp_path / "gray.png"  # smaller than img_size, one channel: padded and repeated to RGB
    Image.fromarray(np.full((10, 7), 200, dtype=np.uint8)).save(gray)
    big = tmp_path / "big.jpg"  # larger than img_size: resized
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(big)
    inputs = [str(gray), str(big), str(files[0])]
    assert main(["predict", str(run), *inputs, "--weights", str(bias_only), "--topk", "9", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == inputs
    expected = _expected_top(np.array(BIAS), BIAS_RANK, 5)  # topk 9 > 5 classes: all 5, in order
    for row in rows:
        _assert_top([tuple(t) for t in row["top"]], expected)
