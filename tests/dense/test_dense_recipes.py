"""Large-scale recipes: strict loading, the schedule each one encodes, and a dry run of every recipe."""

from __future__ import annotations

import math

import pytest
from timm.data import Mixup
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing

import adaptor_peft  # noqa: F401
from adaptor_peft.dense.builders import (
    build_classification_transform,
    build_mixup,
    schedule_lr,
    updates_per_epoch,
)
from adaptor_peft.dense.recipe import LargeRecipeError, load_large_recipe
from adaptor_peft.dense.run import dry_run
from adaptor_peft.train.recipes import RECIPES_DIR

pytest.importorskip("segmentation_models_pytorch")

RUNS = [
    ("imagenet_b1", None), ("imagenet_b2", None), ("imagenet_384_finetune", None),
    ("ade20k_upernet", None), ("ade20k_upernet", "b1"), ("ade20k_upernet_peft", None),
    ("coco_maskrcnn", None), ("coco_maskrcnn", "3x"), ("coco_maskrcnn_peft", None),
]  # fmt: skip


@pytest.mark.parametrize("name, variant", RUNS, ids=[f"{n}-{v or 'base'}" for n, v in RUNS])
def test_recipe_dry_run(name, variant):
    recipe = load_large_recipe(RECIPES_DIR / f"{name}.yaml", variant)
    result = dry_run(RECIPES_DIR / f"{name}.yaml", steps=2, variant=variant)
    assert len(result.losses) == 2 and all(math.isfinite(v) and v > 0 for v in result.losses)
    # the optimizer ran on the recipe's own schedule: update 0 and 1 of the full-size run
    assert result.lrs == pytest.approx([schedule_lr(recipe, 0), schedule_lr(recipe, 1)], rel=1e-9)
    if recipe.get("peft"):
        assert 0 < result.trainable < result.total
    else:
        assert result.trainable == result.total
    assert result.ema_moved is (True if recipe.get("ema") else None)
    expected_model = (
        "test_mamba_adaptor" if recipe["model"]["name"].startswith("mamba_adaptor") else "test_vmamba"
    )
    assert result.model == expected_model


def test_imagenet_schedule_is_swin_cosine_with_20_warmup_epochs():
    r = load_large_recipe("imagenet_b2")
    upe = updates_per_epoch(r)
    assert upe == math.ceil(1281167 / 1024) == 1252
    assert schedule_lr(r, 0) == pytest.approx(1e-6)
    assert schedule_lr(r, 20 * upe) == pytest.approx(1e-3, rel=1e-6)
    assert schedule_lr(r, 160 * upe) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2, rel=1e-3)  # cosine midpoint
    assert schedule_lr(r, 300 * upe) == pytest.approx(1e-5, rel=1e-6)
    assert load_large_recipe("imagenet_b1")["model"] == {
        "name": "mamba_adaptor_b1",
        "kwargs": {"drop_path_rate": 0.1},
    }
    ft = load_large_recipe("imagenet_384_finetune")
    assert [schedule_lr(ft, t) for t in (0, 10_000, 30 * 1252)] == pytest.approx([1e-5] * 3)
    assert ft["data"]["img_size"] == 384 and ft["optimizer"]["weight_decay"] == 1e-8


def test_imagenet_augmentations_come_from_timm():
    r = load_large_recipe("imagenet_b2")
    tf = build_classification_transform(r)
    ops = list(tf.transforms)
    randaug = [t for t in ops if isinstance(t, RandAugment)]
    assert len(randaug) == 1 and randaug[0].num_layers == 2  # rand-m9-mstd0.5-inc1: 2 ops, magnitude 9
    erasing = [t for t in ops if isinstance(t, RandomErasing)]
    assert len(erasing) == 1 and erasing[0].probability == 0.25 and erasing[0].mode == "pixel"
    mixup = build_mixup(r)
    assert isinstance(mixup, Mixup)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing, mixup.num_classes) == (
        0.8,
        1.0,
        0.1,
        1000,
    )


def test_ade20k_schedule_is_poly_with_1500_warmup_iterations():
    r = load_large_recipe("ade20k_upernet")
    assert updates_per_epoch(r) == 1
    assert schedule_lr(r, 0) == pytest.approx(6e-5 * 1e-6)
    assert schedule_lr(r, 1500) == pytest.approx(6e-5 * (1 - 1500 / 160000), rel=1e-6)
    assert schedule_lr(r, 80000) == pytest.approx(3e-5, rel=1e-6)
    assert load_large_recipe("ade20k_upernet", "b1")["model"]["name"] == "mamba_adaptor_b1"


@pytest.mark.parametrize("variant, steps", [(None, (8, 11)), ("3x", (27, 33))])
def test_coco_schedule_steps_the_lr_at_the_milestones(variant, steps):
    r = load_large_recipe("coco_maskrcnn", variant)
    upe = updates_per_epoch(r)
    assert upe == math.ceil(117266 / 16)
    assert schedule_lr(r, 0) == pytest.approx(1e-7)
    assert schedule_lr(r, 500) == pytest.approx(1e-4)
    assert schedule_lr(r, steps[0] * upe - 2) == pytest.approx(1e-4)  # timm decays at t + 1 >= milestone
    assert schedule_lr(r, steps[0] * upe) == pytest.approx(1e-5)
    assert schedule_lr(r, steps[1] * upe) == pytest.approx(1e-6)
    assert r["optimizer"]["lr"] == 1e-4 and r["data"]["batch_size"] == 16
    if variant == "3x":
        assert r["data"]["min_size"][0] == 480 and r["data"]["min_size"][-1] == 800


def test_every_recipe_names_its_multi_gpu_launch_line():
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        text = path.read_text()
        if "\ntask:" not in text:
            continue  # the trainer's own recipes
        r = load_large_recipe(path)
        assert r["launch"].startswith("accelerate launch --config_file recipes/accelerate/multi_gpu_ddp.yaml")
        assert "# Dry run" in text and r["launch"] in text


def test_recipe_errors_name_the_key():
    base = load_large_recipe("imagenet_b1")
    bad = dict(base, optimizer=dict(base["optimizer"], lr_rate=1.0))
    with pytest.raises(LargeRecipeError, match=r"recipe dict: unknown key 'optimizer.lr_rate'; did you mean"):
        load_large_recipe(bad)
    with pytest.raises(LargeRecipeError, match=r"unknown section 'schedul'; did you mean 'schedule'\?"):
        load_large_recipe(dict(base, schedul={}))
    with pytest.raises(
        LargeRecipeError, match=r"unknown variant '5x'; the recipe has \['3x', 'b1', 'b1_3x'\]"
    ):
        load_large_recipe("coco_maskrcnn", "5x")
    no_size = dict(base, data={k: v for k, v in base["data"].items() if k != "train_size"})
    with pytest.raises(LargeRecipeError, match=r"an epoch schedule needs 'data.train_size'"):
        load_large_recipe(no_size)
    with pytest.raises(FileNotFoundError, match="recipe file not found: nope.yaml"):
        load_large_recipe("nope.yaml")


def test_dense_updates_run_on_the_trainers_loop(monkeypatch):
    # the trainer's non-finite guard (its error type, the update it names) stops a dense run too
    import torch

    import adaptor_peft.dense.run as dense_run
    from adaptor_peft.train.trainer import NonFiniteLossError

    losses = iter([torch.tensor(1.0, requires_grad=True), torch.tensor(float("nan"), requires_grad=True)])
    monkeypatch.setattr(dense_run, "compute_loss", lambda *args, **kwargs: next(losses))
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at optimizer step 2 \("):
        dry_run(RECIPES_DIR / "ade20k_upernet.yaml", steps=3)
