"""Fixtures of the reliability suite: toy data and an uninterrupted reference run."""

from __future__ import annotations

import pytest
import torch

pytest.register_assert_rewrite("reliability_helpers")  # detailed diffs from the shared assertions

from reliability_helpers import assert_clean_run_dir, make_recipe  # noqa: E402
from toy import write_toy_npz  # noqa: E402


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """(train.npz, eval.npz): 48 / 24 synthetic 12x12 images in 4 classes."""
    root = tmp_path_factory.mktemp("toy")
    train = write_toy_npz(root / "train.npz", 48, num_classes=4, size=12, seed=0)
    evals = write_toy_npz(root / "eval.npz", 24, num_classes=4, size=12, seed=1)
    return train, evals


@pytest.fixture(scope="session")
def reference_run(toy_data, tmp_path_factory):
    """An uninterrupted run of the tiny recipe (6 steps): what every interrupted run must reproduce."""
    from adaptor_peft.train.trainer import train

    out = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every run in the suite uses one thread: bit-exact comparisons
    try:
        train(make_recipe(toy_data, out))
    finally:
        torch.set_num_threads(threads)
    assert_clean_run_dir(out)
    return out
