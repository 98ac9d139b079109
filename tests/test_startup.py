"""Start-up: the CLI's cheap paths import neither timm nor peft; lazy exports and the timm hook still work.

``sys.modules`` in a fresh interpreter is the oracle (robust on a busy machine, unlike a timed assertion).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ASSET = Path(__file__).resolve().parents[1] / "adaptor_peft" / "assets" / "vmamba_fmnist_d32.safetensors"
HEAVY = ("torch", "timm", "peft", "transformers", "accelerate")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _loaded_after(cli_args: list[str]) -> tuple[list[str], str]:
    out = _run(
        f"""
        import contextlib, io, sys
        from adaptor_peft.cli import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                rc = main({cli_args!r})
            except SystemExit as exc:  # --help exits
                rc = exc.code
        print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))
        print(buf.getvalue())
        """
    )
    first, _, rest = out.partition("\n")
    rc, _, loaded = first.partition(" ")
    assert rc == "0", out
    return eval(loaded), rest  # noqa: S307  (a list literal this test printed)


def test_help_imports_no_torch_timm_peft():
    loaded, text = _loaded_after(["--help"])
    assert loaded == [] and "quickstart" in text
    loaded, text = _loaded_after(["train", "--help"])
    assert loaded == [] and "KEY=VALUE" in text
    out = _run(
        "import sys, adaptor_peft; print(sorted(m for m in ('torch', 'timm', 'peft') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_info_file_reads_the_header_without_torch_timm_or_peft(tmp_path):
    loaded, text = _loaded_after(["info", str(ASSET)])
    assert loaded == []
    assert "vmamba_fmnist_d32.safetensors" in text and "1,684,106 params" in text  # the file's tensor total
    from toy import TINY_VMAMBA

    import adaptor_peft as ap

    model = ap.inject_adaptors(ap.create_model(TINY_VMAMBA), ap.MambaAdaptorConfig(num_heads=2, num_points=2))
    ap.save_adaptors(model, tmp_path / "a.safetensors")
    loaded, text = _loaded_after(["info", str(tmp_path / "a.safetensors")])
    assert loaded == []
    assert text.startswith(f"adaptor file: {tmp_path / 'a.safetensors'}") and "num_points: 2" in text


@pytest.mark.parametrize("order", ["adaptor_peft first", "timm first"])
def test_vmamba_registers_with_timm_in_either_import_order(order):
    first, second = ("adaptor_peft", "timm") if order == "adaptor_peft first" else ("timm", "adaptor_peft")
    out = _run(
        f"""
        import {first}
        import {second}
        print(timm.is_model("vmamba_tiny_s1l8"), timm.is_model("mamba_adaptor_b1"))
        """
    )
    assert out.split() == ["True", "True"]


def test_timm_alone_does_not_know_vmamba():
    """The oracle for the test above: without adaptor_peft, timm has no such model."""
    assert _run("import timm; print(timm.is_model('vmamba_tiny_s1l8'))").strip() == "False"


def test_lazy_exports_resolve_to_their_modules():
    import adaptor_peft

    assert adaptor_peft.create_model.__module__ == "adaptor_peft.models.factory"
    assert adaptor_peft.AdaptorFileError.__module__ == "adaptor_peft.io.errors"
    assert adaptor_peft.MambaAdaptorConfig.__module__ == "adaptor_peft.adaptors.config"
    assert set(adaptor_peft.__all__) <= set(dir(adaptor_peft))
    assert adaptor_peft.models.__name__ == "adaptor_peft.models"  # a subpackage by attribute
    with pytest.raises(AttributeError, match="no_such_name"):
        adaptor_peft.no_such_name  # noqa: B018


def test_shipped_base_path_and_asset_prefix_in_create_model():
    import torch
    from safetensors.torch import load_file

    import adaptor_peft

    assert adaptor_peft.shipped_base_path() == ASSET
    by_asset = adaptor_peft.create_model("asset:vmamba_fmnist_d32.safetensors")
    by_path = adaptor_peft.create_model(str(ASSET))
    reference = load_file(str(ASSET))  # the file's own tensors, read by safetensors
    state = by_asset.state_dict()
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name
    for name, tensor in by_path.state_dict().items():
        assert torch.equal(state[name], tensor), name
    with_ckpt = adaptor_peft.create_model(
        "asset:vmamba_fmnist_d32.safetensors", checkpoint="asset:vmamba_fmnist_d32.safetensors"
    )
    assert torch.equal(with_ckpt.state_dict()["classifier.head.weight"], reference["classifier.head.weight"])


def test_unknown_asset_names_the_shipped_files():
    import adaptor_peft

    with pytest.raises(FileNotFoundError, match=r"asset:nope\.safetensors.*vmamba_fmnist_d32\.safetensors"):
        adaptor_peft.create_model("asset:nope.safetensors")
    with pytest.raises(FileNotFoundError, match="no such shipped file"):
        adaptor_peft.create_model("asset:../recipes/quickstart.yaml")


def test_a_failing_model_registration_warns_instead_of_breaking_timm():
    out = _run(
        """
        import warnings, adaptor_peft.peft_hook as h
        h.TIMM_MODELS_MODULE = "adaptor_peft.no_such_module"
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import timm
        print(timm.is_model("resnet18"), [str(x.message) for x in w if x.category is RuntimeWarning])
        """
    )
    assert out.startswith("True [") and "could not register its VMamba models with timm" in out
    assert "no_such_module" in out
