"""Hostile files, second half of issue 19: a trained file's recipe, the peft route, raw errors, warnings.

- a trained file's checksum is verified before its embedded recipe is used, and that recipe can neither
  build a foreign model nor download weights;
- peft's from_pretrained / load_adapter on a Mamba-Adaptor adapter refuse NaN/Inf and misfitting tensors
  like load_adaptors, and leave the caller's model exactly as it was when they fail;
- malformed checkpoints give a CheckpointError naming the file (never a raw KeyError, IndexError,
  RecursionError), a seeded fuzz loop over the checkpoint reader included;
- `info` escapes control characters; huge finite values and NaN base weights are named in a warning;
- a crafted head_keys cannot make the base check skip base tensors;
- run-folder files read by resume are bounded; dense runs take the run-dir lock.

Cases where memory or a hang matters run in a child process under an address-space cap and a timeout
(reliability_helpers.run_capped_cases), and assert the exception, the time and the peak-RSS growth.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import types
import warnings
from pathlib import Path

import pytest
import torch
from reliability_helpers import assert_named_refusal, run_capped_cases
from safetensors import safe_open
from safetensors.torch import save_file

from adaptor_peft import MambaAdaptorConfig, inject_adaptors, save_adaptors
from adaptor_peft.io import (
    META_BASE_FINGERPRINT,
    META_CONTENT_SHA256,
    META_HEAD_KEYS,
    META_TENSORS,
    META_USER,
    AdaptorMetadataError,
    BaseModelMismatchError,
    NonFiniteTensorError,
    TensorShapeMismatchError,
    content_digest,
    describe_file,
    load_adaptors,
)
from adaptor_peft.io.fingerprint import fingerprint_tensors
from adaptor_peft.models import convert_checkpoint, create_model, load_checkpoint
from adaptor_peft.models.checkpoint import CheckpointError, UntrustedCheckpointError

GiB = 1024**3


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def rewrite(path: Path, tensors: dict, meta: dict, reseal: bool) -> Path:
    """Write tensors + metadata; ``reseal`` recomputes the content checksum (what a forger would do)."""
    if reseal:
        meta = {**meta, META_CONTENT_SHA256: content_digest(meta, tensors)}
    save_file(tensors, str(path), metadata=meta)
    return path


def model_state(model: torch.nn.Module) -> tuple:
    """Everything a load may change: values, module tree (names, types, identities), requires_grad and
    each module's attribute names."""
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [(n, type(m).__name__, id(m)) for n, m in model.named_modules()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        [sorted(m.__dict__) for m in model.modules()],
    )


def assert_same_state(before: tuple, after: tuple) -> None:
    """Bit-identical values and the identical structure."""
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    assert before[1:] == after[1:]


# ------------------------------------------------------------------------- 2: a trained file's recipe
def _edit_recipe(src: Path, dst: Path, reseal: bool, **changes) -> Path:
    tensors, meta = read_file(src)
    user = json.loads(meta[META_USER])
    user["recipe"] = {**user["recipe"], **changes}
    meta[META_USER] = json.dumps(user, sort_keys=True)
    return rewrite(dst, tensors, meta, reseal)


@pytest.mark.slow  # ~10 s: a capped child imports torch
def test_edited_recipe_is_refused_by_the_checksum_before_anything_is_built(reference_run, tmp_path):
    trained = reference_run / "adaptor.safetensors"
    _edit_recipe(trained, tmp_path / "dims.safetensors", False, model={"dims": 16384, "depths": [1, 1, 1, 1]})
    _edit_recipe(
        trained, tmp_path / "timm.safetensors", False, model="resnet18", model_kwargs={"pretrained": True}
    )
    r = run_capped_cases(
        """
import adaptor_peft.train.inference as inf
def never(*a, **k):
    raise RuntimeError("a model was built")
inf.build_model = never
CASES = {n: (lambda n=n: inf.load_trained(n + ".safetensors")) for n in ("dims", "timm")}
""",
        tmp_path,
    )
    for name in ("dims", "timm"):
        assert_named_refusal(r[name], "AdaptorChecksumError", f"{name}.safetensors", "checksum")


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"model": "resnet18", "model_kwargs": {"pretrained": True}}, "recipe.model", ["'resnet18'"]),
        ({"model": "test_vmamba", "model_kwargs": {"pretrained": True}}, "recipe.model_kwargs", ["download"]),
    ],
)
def test_resealed_recipe_cannot_build_a_foreign_model_or_download(
    reference_run, tmp_path, monkeypatch, changes, key, words
):
    import adaptor_peft.train.inference as inf

    forged = _edit_recipe(
        reference_run / "adaptor.safetensors", tmp_path / "forged.safetensors", True, **changes
    )
    monkeypatch.setattr(inf, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(AdaptorMetadataError) as info:
        inf.load_trained(forged)
    assert info.value.key == key and str(forged) in str(info.value)
    assert all(w in str(info.value) for w in words), str(info.value)


# --------------------------------------------------------------------------------------- 3: peft route
@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory) -> Path:
    """A saved Mamba-Adaptor peft adapter (with the head) of test_vmamba, seed 0."""
    import adaptor_peft.peft_tuner as pt

    torch.manual_seed(0)
    pm = pt.get_peft_model(
        create_model("test_vmamba"), pt.MambaAdaptorPeftConfig(num_points=3, train_head=True)
    )
    out = tmp_path_factory.mktemp("peft") / "adapter"
    pm.save_pretrained(str(out))
    return out


def _damaged_adapter(src: Path, dst: Path, damage: str) -> Path:
    dst.mkdir(parents=True)
    shutil.copy(src / "adapter_config.json", dst / "adapter_config.json")
    tensors, meta = read_file(src / "adapter_model.safetensors")
    key = sorted(k for k in tensors if "mamba_adaptor_modules" in k)[0]
    t = tensors[key].clone()
    if damage == "nan":
        t.view(-1)[1] = float("nan")
    elif damage == "inf":
        t.view(-1)[0] = float("-inf")
    elif damage == "huge":
        t.view(-1)[0] = 3e38
    elif damage == "shape":
        t = torch.zeros(*t.shape[:-1], t.shape[-1] + 1)
    tensors[key] = t
    if damage != "missing":
        save_file(tensors, str(dst / "adapter_model.safetensors"), metadata=meta)
    return dst


def _base() -> torch.nn.Module:
    torch.manual_seed(1)
    return create_model("test_vmamba").eval()


@pytest.mark.parametrize(
    ("damage", "exc", "words"),
    [
        ("nan", NonFiniteTensorError, ["NaN or Inf", "mamba_adaptor_modules"]),
        ("inf", NonFiniteTensorError, ["NaN or Inf"]),
        ("shape", TensorShapeMismatchError, ["file has shape"]),
        ("missing", Exception, []),
    ],
)
def test_peft_from_pretrained_refuses_and_leaves_the_model_untouched(
    peft_adapter, tmp_path, damage, exc, words
):
    from peft import PeftModel

    bad = _damaged_adapter(peft_adapter, tmp_path / damage, damage)
    base = _base()
    before = model_state(base)
    with pytest.raises(exc) as info:
        PeftModel.from_pretrained(base, str(bad))
    for w in words:
        assert w in str(info.value), str(info.value)
    if words:
        assert str(bad / "adapter_model.safetensors") in str(info.value)
    assert_same_state(before, model_state(base))
    assert not hasattr(base, "peft_config")


def test_peft_load_adapter_failure_leaves_the_peft_model_untouched(peft_adapter, tmp_path):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(_base(), str(peft_adapter))
    before, configs = model_state(pm), sorted(pm.peft_config)
    with pytest.raises(NonFiniteTensorError):
        pm.load_adapter(str(_damaged_adapter(peft_adapter, tmp_path / "nan", "nan")), adapter_name="second")
    assert_same_state(before, model_state(pm))
    assert sorted(pm.peft_config) == configs == ["default"]


def test_peft_huge_values_load_with_a_warning_naming_the_tensor(peft_adapter, tmp_path):
    from peft import PeftModel

    with pytest.warns(UserWarning, match=r"mamba_adaptor_modules.*3e\+38"):
        pm = PeftModel.from_pretrained(
            _base(), str(_damaged_adapter(peft_adapter, tmp_path / "huge", "huge"))
        )
    assert any(float(p.abs().max()) == pytest.approx(3e38) for p in pm.parameters())


def test_peft_intact_adapter_loads_the_saved_values(peft_adapter):
    """The guard changes nothing for a good file: every saved tensor ends up in the model."""
    from peft import PeftModel

    pm = PeftModel.from_pretrained(_base(), str(peft_adapter))
    saved, _ = read_file(peft_adapter / "adapter_model.safetensors")
    state = pm.state_dict()
    for key, value in saved.items():
        target = key.replace("mamba_adaptor_modules.", "mamba_adaptor_modules.default.")
        if target == key:  # head and (default train_norms=True) norms: peft's ModulesToSaveWrapper copy
            module, _, leaf = key.rpartition(".")
            target = f"{module}.modules_to_save.default.{leaf}"
        assert torch.equal(state[target], value), key
    assert any(".norm." in k or k.endswith(("norm.weight", "norm.bias")) for k in saved)  # norms saved too


# --------------------------------------------------------------------------- 8: raw errors, named
@pytest.fixture(scope="module")
def hostile_checkpoints(tmp_path_factory) -> Path:
    """Malformed checkpoints that used to raise raw errors, and their valid sources."""
    import io

    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    sd = create_model("test_vmamba").state_dict()
    torch.save({"model": sd}, root / "valid.pth")
    buf = io.BytesIO()
    torch.save({"model": sd}, buf, _use_new_zipfile_serialization=False)
    (root / "legacy.pth").write_bytes(buf.getvalue())
    (root / "legacy_cut.pth").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.pth").write_bytes(b"")
    (root / "garbage.pth").write_bytes(b"hello world" * 10)  # KeyError '101' in torch's legacy reader
    nested: dict = {"w": torch.zeros(1)}
    for _ in range(200):
        nested = {"model": nested}
    torch.save(nested, root / "envelopes.pth")
    save_file(
        {"a": torch.zeros(2)}, str(root / "deep_config.safetensors"), metadata={"config": "[" * 100_000}
    )
    save_file({"a": torch.zeros(2)}, str(root / "list_config.safetensors"), metadata={"config": "[1, 2]"})
    return root


@pytest.mark.parametrize("name", ["empty", "garbage", "legacy_cut", "envelopes"])
@pytest.mark.parametrize("call", ["load_checkpoint", "create_model", "convert_checkpoint"])
def test_malformed_checkpoint_is_a_checkpoint_error_naming_the_file(
    hostile_checkpoints, tmp_path, name, call
):
    path = hostile_checkpoints / f"{name}.pth"
    calls = {
        "load_checkpoint": lambda: load_checkpoint(path),
        "create_model": lambda: create_model("test_vmamba", checkpoint=path),
        "convert_checkpoint": lambda: convert_checkpoint(path, tmp_path / "out.safetensors"),
    }
    with pytest.raises(CheckpointError) as info:
        calls[call]()
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("name", ["deep_config", "list_config"])
def test_convert_names_the_file_for_a_bad_config_field(hostile_checkpoints, tmp_path, name):
    path = hostile_checkpoints / f"{name}.safetensors"
    with pytest.raises(CheckpointError, match="'config' metadata") as info:
        convert_checkpoint(path, tmp_path / "out.safetensors")
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="config") as info:
        create_model(path)
    assert str(path) in str(info.value)


def test_untrusted_pickle_message_gives_a_convert_command_that_works(tmp_path, capsys):
    from adaptor_peft.cli import main

    torch.manual_seed(0)
    src = tmp_path / "official.pth"
    torch.save({"model": create_model("test_vmamba").state_dict(), "config": types.SimpleNamespace(a=1)}, src)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint(src)
    command = str(info.value).split("`")[1]
    assert "--trust-pickle" in command
    argv = [tmp_path / "out.safetensors" if a == "OUT.safetensors" else a for a in shlex.split(command)]
    assert argv[0] == "adaptor-peft"
    assert main([str(a) for a in argv[1:]]) == 0
    assert (
        load_checkpoint(tmp_path / "out.safetensors").keys() == load_checkpoint(src, trust_pickle=True).keys()
    )


@pytest.mark.slow  # ~30 s: 240 mutated checkpoints in a capped child
def test_fuzz_checkpoint_reader(hostile_checkpoints, tmp_path):
    """Seeded mutations of a zip .pth, a legacy .pth and a .safetensors checkpoint: every failure is a
    CheckpointError naming the file (never a raw error), quickly, under the cap."""
    sources = [hostile_checkpoints / "valid.pth", hostile_checkpoints / "legacy.pth"]
    torch.manual_seed(0)
    save_file(create_model("test_vmamba").state_dict(), str(tmp_path / "valid.safetensors"))
    sources.append(tmp_path / "valid.safetensors")
    r = run_capped_cases(
        f"""
import random
from adaptor_peft.models import load_checkpoint
from adaptor_peft.models.checkpoint import CheckpointError

def fuzz():
    rng = random.Random(20261205)
    counts, escaped = {{}}, []
    for i in range(240):
        src = {[str(s) for s in sources]!r}[i % 3]
        data = bytearray(open(src, "rb").read())
        kind = rng.choice(["flip", "cut", "splice", "zero", "grow"])
        if kind == "flip":
            for _ in range(rng.randint(1, 40)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "cut":
            data = data[: rng.randrange(len(data))]
        elif kind == "splice":
            a = rng.randrange(len(data)); b = rng.randrange(len(data))
            data[a:a] = data[b : b + rng.randint(1, 4096)]
        elif kind == "zero":
            a = rng.randrange(len(data)); data[a : a + rng.randint(1, 4096)] = bytes(rng.randint(1, 4096))
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        path = "fuzz" + src[src.rindex("."):]
        open(path, "wb").write(bytes(data))
        try:
            load_checkpoint(path, max_bytes=64 << 20)
            name = "ok"
        except CheckpointError as exc:
            name = "CheckpointError"
            if path not in str(exc) or "\\n" in str(exc):
                escaped.append(("unnamed", kind, str(exc)[:200]))
        except Exception as exc:
            name = type(exc).__name__
            escaped.append((name, kind, str(exc)[:200]))
        counts[name] = counts.get(name, 0) + 1
    return dict(counts=counts, escaped=escaped)

CASES = {{"fuzz": fuzz}}
""",
        tmp_path,
    )["fuzz"]
    assert r["exc"] is None, r
    assert r["value"]["escaped"] == [], r["value"]["escaped"]
    assert r["value"]["counts"].get("CheckpointError", 0) > 100, r["value"]
    assert r["seconds"] < 90 and r["growth_mb"] < 500, r


@pytest.mark.slow  # ~10-20 s: a capped child imports torch + peft
def test_over_cap_header_is_refused_for_its_size(tmp_path):
    """A 106 MB header that is all there: refused as over the header limit (not as truncation), unread."""
    path = tmp_path / "big_header.safetensors"
    n = 106 * 1024**2
    with open(path, "wb") as f:
        f.write(n.to_bytes(8, "little") + b"{")
        f.truncate(8 + n + 64)  # sparse: costs no disk
    r = run_capped_cases(
        """
import adaptor_peft.io as aio
import torch
CASES = {
    "read": lambda: aio.read_adaptor_file("big_header.safetensors"),
    "load": lambda: aio.load_adaptors(torch.nn.Linear(2, 2), "big_header.safetensors"),
    "info": lambda: aio.describe_file("big_header.safetensors"),
}
""",
        tmp_path,
    )
    for case in r.values():
        assert_named_refusal(
            case, "AdaptorHeaderError", "big_header.safetensors", "header limit", growth_mb=50
        )


def test_info_escapes_control_characters(tmp_path, capsys):
    from adaptor_peft.cli import main

    esc = "\x1b[2J\x1b]0;owned\x07\u202e"
    torch.manual_seed(0)
    model = inject_adaptors(create_model("test_vmamba"), MambaAdaptorConfig())
    adaptor = save_adaptors(model, tmp_path / "a.safetensors", metadata={"note" + esc: "x" + esc})
    plain = tmp_path / "p.safetensors"
    save_file({"t" + esc: torch.zeros(1)}, str(plain), metadata={"k" + esc: "v" + esc})
    for path in (adaptor, plain):
        text = describe_file(path)
        assert text.isprintable() or all(line.isprintable() for line in text.splitlines()), repr(text)
        assert "\\x1b[2J" in text and "\\x07" in text and "\\u202e" in text
        assert main(["info", str(path)]) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out


# ------------------------------------------------------------------------- 8: suspicious values warn
def _checkpoint_with(tmp_path: Path, key: str, value: float) -> Path:
    torch.manual_seed(0)
    sd = create_model("test_vmamba").state_dict()
    sd[key] = sd[key].clone()
    sd[key].view(-1)[3] = value
    path = tmp_path / "weights.pth"
    torch.save({"model": sd}, path)
    return path


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("layers.0.blocks.0.op.in_proj.weight", 3e38, ["3e+38", "1e+30"]),
        ("layers.1.blocks.0.norm.weight", float("nan"), ["1 of", "NaN or Inf"]),
        ("classifier.head.weight", float("-inf"), ["NaN or Inf"]),
    ],
)
def test_suspicious_base_weights_get_a_warning_naming_the_tensor(tmp_path, key, value, words):
    path = _checkpoint_with(tmp_path, key, value)
    with pytest.warns(UserWarning) as caught:
        model = create_model("test_vmamba", checkpoint=path)
    text = " ".join(str(w.message) for w in caught)
    assert f"[{key}]" in text and str(path) in text and all(w in text for w in words), text
    got = model.state_dict()[key].view(-1)[3]
    assert torch.equal(got, torch.tensor(value)) or (got.isnan() and value != value)


def test_ordinary_weights_load_without_a_value_warning(tmp_path):
    path = _checkpoint_with(tmp_path, "classifier.head.weight", 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_model("test_vmamba", checkpoint=path)


def test_huge_adaptor_values_get_a_warning_naming_the_tensor(tmp_path):
    torch.manual_seed(0)
    donor = inject_adaptors(create_model("test_vmamba"), MambaAdaptorConfig())
    good = save_adaptors(donor, tmp_path / "good.safetensors")
    tensors, meta = read_file(good)
    key = sorted(k for k in tensors if ".adaptor_t." in k)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = -3e38
    huge = rewrite(tmp_path / "huge.safetensors", tensors, meta, reseal=True)
    torch.manual_seed(0)
    target = create_model("test_vmamba")
    with pytest.warns(UserWarning, match=rf"\[{key}\].*3e\+38"):
        load_adaptors(target, huge)
    assert float(target.state_dict()[key].view(-1)[0]) == pytest.approx(-3e38)


# ------------------------------------------------------------------------------ 8: the head_keys trick
@pytest.fixture()
def donor_file(tmp_path) -> tuple[Path, torch.nn.Module]:
    """An adaptor file saved on test_vmamba seed 0, and a victim model with other base weights (seed 1)."""
    torch.manual_seed(0)
    donor = inject_adaptors(create_model("test_vmamba"), MambaAdaptorConfig())
    path = save_adaptors(donor, tmp_path / "donor.safetensors")
    torch.manual_seed(1)
    return path, create_model("test_vmamba")


def test_head_keys_listing_base_tensors_are_refused(donor_file, tmp_path):
    path, victim = donor_file
    tensors, meta = read_file(path)
    meta[META_HEAD_KEYS] = json.dumps(sorted(k for k in victim.state_dict() if k not in tensors))
    meta[META_BASE_FINGERPRINT] = json.dumps(fingerprint_tensors({}), sort_keys=True)  # the empty set
    forged = rewrite(tmp_path / "forged.safetensors", tensors, meta, reseal=True)
    before = model_state(victim)
    with pytest.raises(AdaptorMetadataError, match="not a tensor of the classifier head") as info:
        load_adaptors(victim, forged)
    assert info.value.key == META_HEAD_KEYS
    assert_same_state(before, model_state(victim))


def test_file_tensors_named_like_base_tensors_do_not_hide_them_from_the_base_check(donor_file, tmp_path):
    """The other half of the trick: base tensors smuggled in as file tensors (ignored with strict=False)
    no longer drop out of the fingerprint, so the different base is still found."""
    path, victim = donor_file
    tensors, meta = read_file(path)
    base = {k: v.clone() for k, v in victim.state_dict().items() if k not in tensors}
    tensors.update(base)
    table = json.loads(meta[META_TENSORS])
    table.update({k: {"dtype": "F32", "shape": list(v.shape)} for k, v in base.items()})
    meta[META_TENSORS] = json.dumps(table, sort_keys=True)
    meta[META_BASE_FINGERPRINT] = json.dumps(fingerprint_tensors({}), sort_keys=True)
    forged = rewrite(tmp_path / "forged.safetensors", tensors, meta, reseal=True)
    before = model_state(victim)
    with pytest.raises(BaseModelMismatchError):
        load_adaptors(victim, forged, strict=False)
    assert_same_state(before, model_state(victim))


# ------------------------------------------------------------------- run-folder files, dense run lock
@pytest.mark.slow  # ~10 s: a capped child imports torch
def test_resume_files_are_bounded(reference_run, tmp_path):
    """state/manifest/latest/recipe.yaml swapped for /dev/zero, a FIFO or a sparse 3 GB file: resume falls
    back or refuses quickly, without reading them."""
    runs = {}
    for case in (
        "manifest_zero",
        "manifest_sparse",
        "latest_sparse",
        "state_fifo",
        "recipe_zero",
        "recipe_fifo",
    ):
        run = tmp_path / case
        shutil.copytree(reference_run, run)
        ckpts = sorted((run / "checkpoints").glob("step_*"))
        newest = ckpts[-1]
        target = {
            "manifest": newest / "manifest.json",
            "latest": run / "checkpoints" / "latest",
            "state": newest / "state.json",
            "recipe": run / "recipe.yaml",
        }[case.split("_")[0]]
        target.unlink()
        kind = case.split("_")[1]
        if kind == "zero":
            target.symlink_to("/dev/zero")
        elif kind == "fifo":
            os.mkfifo(target)
        else:
            with open(target, "wb") as f:
                f.truncate(3 * GiB)
        runs[case] = (run, ckpts[-2].name if case.split("_")[0] in ("manifest", "state") else newest.name)
    r = run_capped_cases(
        f"""
from pathlib import Path
from adaptor_peft.train.checkpointing import find_resumable
from adaptor_peft.train.trainer import check_resume_recipe
from adaptor_peft.train.recipes import load_recipe
RUNS = {json.dumps({k: str(v[0]) for k, v in runs.items()})}
def resumable(run):
    found, notes = find_resumable(Path(run))
    return [found.name if found else None, notes]
CASES = {{k: (lambda r=r: resumable(r)) for k, r in RUNS.items() if not k.startswith("recipe")}}
for k in ("recipe_zero", "recipe_fifo"):
    CASES[k] = lambda r=RUNS[k]: check_resume_recipe(Path(r) / "recipe.yaml", load_recipe({{}}))
""",
        tmp_path,
    )
    for case, (_, expected) in runs.items():
        result = r[case]
        assert result["seconds"] < 10 and result["growth_mb"] < 200, (case, result)
        if case.startswith("recipe"):
            assert result["exc"] == "ResumeMismatchError" and "recipe.yaml" in result["msg"], (case, result)
        else:
            assert result["exc"] is None, (case, result)
            found, notes = result["value"]
            assert found == expected and notes, (case, result)


def test_dense_run_takes_the_run_dir_lock(tmp_path, monkeypatch):
    import adaptor_peft.dense.run as dense_run
    from adaptor_peft.train.recipes import RECIPES_DIR
    from adaptor_peft.train.run_lock import RunDirLock, RunDirLockedError

    out = tmp_path / "run"
    monkeypatch.setattr(dense_run, "build_model", lambda *a, **k: pytest.fail("built while locked"))
    with RunDirLock(out):
        with pytest.raises(RunDirLockedError, match=str(out / "run.lock")):
            dense_run.run(
                RECIPES_DIR / "imagenet_b1.yaml",
                overrides=[f"output_dir={out}", "model.name=test_mamba_adaptor", "mixed_precision=no"],
                max_steps=1,
            )
    assert not (out / "recipe.yaml").exists()
