"""Recipes: YAML loading, key=value overrides, validation errors (valid keys + closest match)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptor_peft.train.recipes import (
    Recipe,
    RecipeError,
    SectionSchema,
    load_recipe,
    load_sectioned_recipe,
    valid_keys,
)

REPO = Path(__file__).resolve().parents[2]


def test_unknown_key_lists_valid_keys_and_closest_match(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("lr: 0.01\nbatch_sise: 8\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "unknown recipe key 'batch_sise'" in msg
    assert "did you mean 'batch_size'?" in msg
    assert str(path) in msg
    for key in ("lr", "batch_size", "train_data", "method"):
        assert key in msg.split("valid keys:")[1]


def test_unknown_override_key_names_command_line():
    with pytest.raises(
        RecipeError, match=r"unknown recipe key 'warmup_step' \(command line\); did you mean 'warmup_steps'"
    ):
        load_recipe(None, ["warmup_step=3"])


def test_override_types_are_coerced():
    r = load_recipe(
        None,
        [
            "lr=1e-3",
            "batch_size=16",
            "clip_grad=null",
            "mean=[0.1,0.2,0.3]",
            "resume=yes",
            "adaptor.num_points=8",
            "adaptor.dilations=[1,2]",
            "model_kwargs.drop_path_rate=0.1",
        ],
    )
    assert r.lr == pytest.approx(1e-3) and isinstance(r.lr, float)
    assert r.batch_size == 16 and r.clip_grad is None and r.resume is True
    assert r.mean == [0.1, 0.2, 0.3]
    assert r.adaptor == {"num_points": 8, "dilations": [1, 2]}
    assert r.model_kwargs == {"drop_path_rate": 0.1}


def test_recipes_accept_exactly_the_registered_methods():
    from adaptor_peft.train.methods import METHODS
    from adaptor_peft.train.recipes import METHOD_NAMES

    assert sorted(METHOD_NAMES) == sorted(METHODS)


def test_bad_values_name_the_key():
    with pytest.raises(RecipeError, match=r"recipe key 'batch_size' .* must be int, got 'abc'"):
        load_recipe(None, ["batch_size=abc"])
    with pytest.raises(RecipeError, match=r"'method' = 'lora2'.*must be one of"):
        load_recipe(None, ["method=lora2"])
    with pytest.raises(RecipeError, match=r"'grad_accum' = 0: must be >= 1"):
        load_recipe(None, ["grad_accum=0"])
    with pytest.raises(RecipeError, match="not of the form key=value"):
        load_recipe(None, ["lr"])


def test_unknown_adaptor_key_lists_fields():
    from adaptor_peft.train.methods import adaptor_config

    with pytest.raises(
        RecipeError, match=r"unknown adaptor key 'adaptor.num_point'; did you mean 'adaptor.num_points'"
    ):
        adaptor_config(load_recipe(None, ["adaptor.num_point=3"]))


def test_save_and_reload_round_trip(tmp_path):
    r = load_recipe(None, ["lr=0.02", "adaptor.num_heads=4", "model={dims: 8, depths: [1,1,1,1]}"])
    r.save(tmp_path / "x.yaml")
    assert load_recipe(tmp_path / "x.yaml") == r


@pytest.mark.parametrize("name", ["quickstart", "pretrain_fashion_mnist", "transfer", "booster"])
def test_shipped_recipes_load(name):
    r = load_recipe(REPO / "recipes" / f"{name}.yaml")
    assert isinstance(r, Recipe)
    assert set(r.to_dict()) == set(valid_keys())


def test_quickstart_recipe_is_the_package_asset():
    assert (REPO / "recipes/quickstart.yaml").resolve() == (REPO / "adaptor_peft/assets/quickstart.yaml")


def test_sectioned_recipes_check_keys_merge_variants_and_revalidate_overrides(tmp_path):
    def positive_batch(recipe, where):
        if recipe["data"]["batch"] < 1:
            raise RecipeError(f"{where}: data.batch must be >= 1")

    schema = SectionSchema(
        {
            "name": None,
            "variants": None,
            "data": frozenset({"batch", "root"}),
            "model": frozenset({"kwargs"}),
        },
        required=("name", "data"),
        check=positive_batch,
    )
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\ndata: {batch: 8, root: /d}\nmodel: {kwargs: {a: 1, b: 2}}\n"
        "variants:\n  big: {data: {batch: 64}, model: {kwargs: {a: 3}}}\n"
    )
    big = load_sectioned_recipe(path, schema, "big")
    # a variant merges section by section, but a model's kwargs are replaced whole
    assert big == {"name": "r_big", "data": {"batch": 64, "root": "/d"}, "model": {"kwargs": {"a": 3}}}
    assert load_sectioned_recipe(path, schema, overrides=["data.root=/e"])["data"] == {
        "batch": 8,
        "root": "/e",
    }
    with pytest.raises(RecipeError, match=r"unknown key 'data.bach'; did you mean 'batch'\?"):
        load_sectioned_recipe(path, schema, overrides=["data.bach=2"])
    with pytest.raises(RecipeError, match=r"unknown recipe key 'dta' \(command line\); did you mean 'data'"):
        load_sectioned_recipe(path, schema, overrides=["dta.batch=2"])
    with pytest.raises(RecipeError, match=r"recipe dict: data.batch must be >= 1"):
        load_sectioned_recipe(path, schema, overrides=["data.batch=0"])
    with pytest.raises(RecipeError, match=r"unknown variant 'huge'; the recipe has \['big'\]"):
        load_sectioned_recipe(path, schema, "huge")
    with pytest.raises(RecipeError, match=r"missing section 'name'"):
        load_sectioned_recipe({"data": {"batch": 1}}, schema)
