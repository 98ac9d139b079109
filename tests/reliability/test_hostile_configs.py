"""Hostile configs and recipes are refused by the limits (adaptor_peft.limits) before anything is allocated.

Each case runs in a child process with an address-space cap and a timeout: a regression shows up as a
MemoryError/crash or a hang in the child, not as a stuck or swapping test run. The child reports the
exception it got (name, bases, message), its peak RSS and, where a caller's model is involved, whether
that model came out untouched.
"""

from __future__ import annotations

import json
import random
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from reliability_helpers import child_result

from adaptor_peft.limits import ADAPTOR_LIMITS, MAX_RECIPE_BYTES
from adaptor_peft.train.recipes import RecipeError, load_recipe, load_yaml_bounded

TESTS = Path(__file__).resolve().parents[1]
CAP_BYTES = 4 << 30  # importing torch + peft takes ~1 GB resident; a hostile config wants many more
TIMEOUT_S = 120

PRELUDE = f"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({CAP_BYTES}, {CAP_BYTES}))
sys.path.insert(0, {str(TESTS)!r})
extra = {{}}
def report(exc):
    print("RESULT " + json.dumps(dict(
        exc=type(exc).__name__ if exc else None,
        bases=[c.__name__ for c in type(exc).__mro__] if exc else [],
        msg=str(exc) if exc else "",
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        seconds=time.perf_counter() - START,
        **extra,
    )))
"""


def run_child(body: str, tmp_path: Path) -> dict:
    """Run ``body`` (it defines setup() and attack()) capped; return what it reported about attack()."""
    code = (
        PRELUDE
        + textwrap.dedent(body)
        + textwrap.dedent("""
        setup()
        START = time.perf_counter()
        try:
            attack()
            report(None)
        except Exception as exc:
            report(exc)
        """)
    )
    return child_result([sys.executable, "-c", code], tmp_path, TIMEOUT_S)


def assert_refused(result: dict, exc: str, *words: str, seconds: float = 10.0) -> None:
    """The named exception (a ValueError), a message naming the words, fast, one line."""
    assert result["exc"] == exc, result
    assert "ValueError" in result["bases"], result
    for w in words:
        assert w in result["msg"], (w, result)
    assert "\n" not in result["msg"], result
    assert result["seconds"] < seconds, result


# ---------------------------------------------------------------------------------------------- configs
def test_adaptor_config_json_with_huge_num_points(tmp_path):
    r = run_child(
        """
        from adaptor_peft.adaptors import MambaAdaptorConfig
        def setup(): pass
        def attack():
            MambaAdaptorConfig.from_json('{"num_points": 4000000}')
        """,
        tmp_path,
    )
    assert_refused(r, "ValueError", "MambaAdaptorConfig.num_points", str(ADAPTOR_LIMITS["num_points"]))


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("num_heads", 100_000, ["num_heads", "limit"]),
        ("kernel_size", 100_001, ["kernel_size", "limit"]),
        ("dilations", [1, 2, 100_000], ["dilations", "limit"]),
        ("dilations", [1] * 1000, ["dilations", "branches"]),
    ],
)
def test_adaptor_config_fields_bounded(field, value, words):
    from adaptor_peft.adaptors import MambaAdaptorConfig

    with pytest.raises(ValueError) as info:
        MambaAdaptorConfig.from_dict({field: value})
    assert all(w in str(info.value) for w in words), str(info.value)


def test_heads_times_points_bounded():
    from adaptor_peft.adaptors import MambaAdaptorConfig

    with pytest.raises(ValueError, match="num_heads x num_points"):
        MambaAdaptorConfig(num_heads=256, num_points=64)


def test_real_adaptor_configs_pass():
    from adaptor_peft.adaptors import MambaAdaptorConfig
    from adaptor_peft.models import list_models
    from adaptor_peft.models.factory import model_info

    MambaAdaptorConfig(num_heads=8, num_points=4, dilations=(1, 2, 3), kernel_size=3)  # b2
    MambaAdaptorConfig(num_heads=16, num_points=16, dilations=(1, 3, 5, 7), kernel_size=7)
    for name in list_models():  # the released variants and b1/b2 build (on meta) within the limits
        assert "parameters" in model_info(name)


def test_adaptor_file_with_huge_config_leaves_the_model_untouched(tmp_path):
    r = run_child(
        """
        import json, torch
        from safetensors import safe_open
        from safetensors.torch import save_file
        from adaptor_peft.adaptors import MambaAdaptorConfig, inject_adaptors
        from adaptor_peft.io import load_adaptors, save_adaptors
        from adaptor_peft.models import create_model
        def setup():
            global model, before
            torch.manual_seed(0)
            donor = create_model("test_vmamba")
            inject_adaptors(donor, MambaAdaptorConfig())
            save_adaptors(donor, "good.safetensors")
            with safe_open("good.safetensors", "pt") as f:
                meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
            key = next(k for k in meta if k.endswith("config") and "base" not in k)
            cfg = json.loads(meta[key]); cfg["num_points"] = 4_000_000; meta[key] = json.dumps(cfg)
            save_file(tensors, "evil.safetensors", metadata=meta)
            torch.manual_seed(0)
            model = create_model("test_vmamba")
            before = {k: v.clone() for k, v in model.state_dict().items()}
        def attack():
            try:
                load_adaptors(model, "evil.safetensors")
            finally:
                after = model.state_dict()
                extra["untouched"] = after.keys() == before.keys() and all(
                    torch.equal(after[k], before[k]) for k in before)
                extra["modules"] = len(list(model.modules()))
        """,
        tmp_path,
    )
    assert_refused(r, "AdaptorMetadataError", "evil.safetensors", "num_points", "limit")
    assert r["untouched"], r


def test_peft_from_pretrained_with_huge_config_leaves_the_base_untouched(tmp_path):
    r = run_child(
        """
        import json, torch
        from peft import PeftModel, get_peft_model
        import adaptor_peft.peft_tuner as pt
        from adaptor_peft.models import create_model
        def setup():
            global base, before, n_modules
            torch.manual_seed(0)
            pm = get_peft_model(create_model("test_vmamba"), pt.MambaAdaptorPeftConfig(num_points=3))
            pm.save_pretrained("adapter")
            cfg = json.loads(open("adapter/adapter_config.json").read())
            cfg["num_points"] = 4_000_000
            open("adapter/adapter_config.json", "w").write(json.dumps(cfg))
            torch.manual_seed(0)
            base = create_model("test_vmamba").eval()
            before = {k: v.clone() for k, v in base.state_dict().items()}
            n_modules = len(list(base.modules()))
        def attack():
            try:
                PeftModel.from_pretrained(base, "adapter")
            finally:
                after = base.state_dict()
                extra["untouched"] = (after.keys() == before.keys() and n_modules == len(list(base.modules()))
                    and all(torch.equal(after[k], before[k]) for k in before))
        """,
        tmp_path,
    )
    assert_refused(r, "ValueError", "MambaAdaptorConfig.num_points", "limit")
    assert r["untouched"], r


@pytest.mark.parametrize(
    "config, words",
    [
        ({"dims": 4_000_000}, ["dims", "limit"]),
        ({"depths": [2, 2, 1_000_000, 2]}, ["depths", "limit"]),
        ({"depths": [1] * 1000}, ["stages"]),
        ({"dims": [8192] * 4, "depths": [64] * 4}, ["depth*dim^2"]),
        ({"num_classes": 10**9}, ["num_classes"]),
        ({"ssm_d_state": 10**6}, ["ssm_d_state"]),
        ({"imgsize": 10**6, "posembed": True}, ["imgsize"]),
    ],
)
def test_model_file_with_huge_config(tmp_path, config, words):
    text = json.dumps(json.dumps({**_tiny(), **config}))
    r = run_child(
        f"""
        import json
        from safetensors.torch import save_file
        import torch
        from adaptor_peft.models import create_model
        def setup():
            save_file({{"x": torch.zeros(1)}}, "evil.safetensors", metadata={{"config": {text}}})
        def attack():
            create_model("evil.safetensors")
        """,
        tmp_path,
    )
    assert_refused(r, "ValueError", "evil.safetensors", *words)


def test_model_config_dict_and_overrides_bounded():
    from adaptor_peft.models import create_model

    with pytest.raises(ValueError, match="dims"):
        create_model({**_tiny(), "dims": 10**7})
    with pytest.raises(ValueError, match="overrides.*depths"):
        create_model("test_vmamba", depths=[1, 1, 10**6, 1])


def _tiny() -> dict:
    from toy import TINY_VMAMBA

    return dict(TINY_VMAMBA)


# ---------------------------------------------------------------------------------------------- recipes
def _laughs(depth: int) -> str:
    lines = [
        "model: test_vmamba",
        "method_options:",
        "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    ]
    for i in range(1, depth + 1):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"  l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


RECIPE_CASES = {
    "billion_laughs": (_laughs(9), ["alias", "*l0"]),
    "laughs_depth_6": (_laughs(6), ["alias"]),
    "merge_key": ("base: &b {lr: 1}\nmethod_options:\n  <<: *b\n", ["alias"]),
    "deep_nesting": ("method_options: " + "[" * 50_000 + "]" * 50_000 + "\n", ["nested deeper"]),
    "deep_block_nesting": (
        "method_options:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)),
        ["nested deeper"],
    ),
    "huge_scalar": ("name: " + "x" * (MAX_RECIPE_BYTES + 10) + "\n", ["bytes", "limit"]),
    "many_nodes": ("method_options: [" + ",".join(["1"] * 150_000) + "]\n", ["nodes"]),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_hostile_recipe_refused_and_save_not_reached(tmp_path, case):
    text, words = RECIPE_CASES[case]
    (tmp_path / "evil.yaml").write_text(text)
    r = run_child(
        """
        from adaptor_peft.train.recipes import load_recipe
        def setup(): pass
        def attack():
            load_recipe("evil.yaml").save("out/recipe.yaml")
        """,
        tmp_path,
    )
    assert_refused(r, "RecipeError", "evil.yaml", *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, words",
    [
        ("adaptor: {num_points: 4000000}\n", ["'adaptor'", "num_points", "limit"]),
        ("adaptor: {dilations: [1, 100000]}\n", ["'adaptor'", "dilations"]),
        ("model: {dims: 4000000, depths: [1, 1, 1, 1]}\n", ["'model'", "dims"]),
        ("model: test_vmamba\nmodel_kwargs: {depths: [1, 1, 1000000, 1]}\n", ["model_kwargs", "depths"]),
    ],
)
def test_recipe_with_huge_model_or_adaptor_refused_at_load(tmp_path, text, words):
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_sectioned_recipe_with_alias_refused(tmp_path):
    from adaptor_peft.train.recipes import SectionSchema, load_sectioned_recipe

    path = tmp_path / "dense.yaml"
    path.write_text("name: x\nmodel: &m {name: a}\ndata: *m\n")
    schema = SectionSchema(sections={"name": None, "model": None, "data": None})
    with pytest.raises(RecipeError, match=r"dense\.yaml.*alias '\*m'"):
        load_sectioned_recipe(path, schema)


def test_override_with_alias_refused():
    with pytest.raises(RecipeError, match="alias"):
        load_recipe(None, ["method_options=[&a [1, 2], *a, *a]"])
    assert load_recipe(None, ["method_options.x=[1, 2"]).method_options == {"x": "[1, 2"}  # text, as before


def test_bundled_recipes_read_as_before():
    root = TESTS.parent
    files = sorted((root / "recipes").rglob("*.yaml")) + sorted(
        (root / "adaptor_peft" / "assets").glob("*.yaml")
    )
    assert files
    for f in files:
        text = f.read_text()
        assert load_yaml_bounded(text, str(f)) == yaml.safe_load(text), f


# ---------------------------------------------------------------------------------------------- fuzz
def _random_yaml(rng: random.Random) -> str:
    """A random YAML-ish document: mappings, flow lists, anchors/aliases, deep nesting, big scalars, junk."""
    pieces = []
    anchors: list[str] = []
    for i in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.2:
            name = f"a{i}"
            anchors.append(name)
            pieces.append(
                f"k{i}: &{name} [{', '.join(str(rng.randint(0, 9)) for _ in range(rng.randint(1, 9)))}]"
            )
        elif kind < 0.35 and anchors:
            pieces.append(f"k{i}: [{', '.join('*' + rng.choice(anchors) for _ in range(rng.randint(1, 9)))}]")
        elif kind < 0.45:
            d = rng.choice([5, 40, 3000])
            pieces.append(f"k{i}: " + "[" * d + "]" * d)
        elif kind < 0.55:
            d = rng.choice([3, 40])
            pieces.append(f"k{i}:\n" + "".join("  " * (j + 1) + f"n{j}:\n" for j in range(d)))
        elif kind < 0.62:
            pieces.append(f"k{i}: " + "x" * rng.choice([10, 1000, 100_000]))
        elif kind < 0.72:
            pieces.append(f"k{i}: !!python/object:os.system {{}}")
        elif kind < 0.8:
            pieces.append(
                rng.choice(["{", "]", ": :", "- - -", "\t", "%YAML 9.9", "--- !x", "k: \x00", "<<: 1"])
            )
        else:
            pieces.append(f"{rng.choice(['lr', 'model', 'method_options', 'seed', 'k'])}{i}: {rng.random()}")
    text = "\n".join(pieces) + "\n"
    if rng.random() < 0.3:  # mutate bytes
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = rng.choice("[]{}&*!:-,'\"\n #|>")
        text = "".join(chars)
    return text


def test_fuzz_recipe_reader(tmp_path):
    """Random documents through read_recipe_file / load_recipe: only RecipeError/ValueError, quickly."""
    r = run_child(
        f"""
        import random, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_hostile_configs import _random_yaml
        from adaptor_peft.train.recipes import load_recipe, read_recipe_file
        def setup(): pass
        def attack():
            rng = random.Random(20261205)
            counts = {{}}
            for i in range(150):
                text = _random_yaml(rng)
                open("fuzz.yaml", "w").write(text)
                for reader in (read_recipe_file, load_recipe):
                    try:
                        reader("fuzz.yaml")
                        name = "ok"
                    except ValueError as exc:  # RecipeError is a ValueError
                        name = type(exc).__name__
                    counts[name] = counts.get(name, 0) + 1
            extra["counts"] = counts
        """,
        tmp_path,
    )
    assert r["exc"] is None, r
    assert r["seconds"] < 60, r
    assert r["counts"].get("RecipeError", 0) > 100, r  # most documents are refused, none escapes
