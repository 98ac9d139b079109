"""peft is imported lazily: the tuner registers whenever peft gets imported, in either order."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


REGISTERED = """
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
keys = [k for k in PEFT_TYPE_TO_CONFIG_MAPPING if str(k).endswith("MAMBA_ADAPTOR")]
assert len(keys) == 1 and keys[0] in PEFT_TYPE_TO_TUNER_MAPPING, keys
"""


def test_adaptor_peft_first_then_peft():
    _run(
        textwrap.dedent("""
        import sys
        import adaptor_peft
        assert "peft" not in sys.modules and "adaptor_peft.peft_tuner" not in sys.modules
        import peft
        assert "adaptor_peft.peft_tuner" in sys.modules
        assert type(peft.__spec__.loader).__name__ == "SourceFileLoader"  # peft sees its own loader
        assert not any(type(f).__name__ == "_RegisterAfterPeft" for f in sys.meta_path)  # one shot
        """)
        + REGISTERED
    )


def test_peft_first_then_adaptor_peft():
    _run("import peft\nimport adaptor_peft\n" + REGISTERED)


def test_peft_names_import_peft_on_first_use():
    _run(
        textwrap.dedent("""
        import sys
        from adaptor_peft import MambaAdaptorPeftConfig, get_peft_model
        assert "peft" in sys.modules and MambaAdaptorPeftConfig.__name__ == "MambaAdaptorPeftConfig"
        """)
        + REGISTERED
    )


def test_peft_from_pretrained_after_plain_import(tmp_path):
    """A directory saved with save_pretrained loads through peft alone after `import adaptor_peft`."""
    _run(
        f"""
        import torch, adaptor_peft as ap
        torch.manual_seed(0)
        base = ap.create_model("test_vmamba", num_classes=3)
        model = ap.get_peft_model(base, ap.MambaAdaptorConfig(init="random"))
        model.save_pretrained({str(tmp_path)!r})
        x = torch.randn(1, 3, 32, 32)
        torch.save((x, model(x)), {str(tmp_path / "io.pt")!r})
        """
    )
    _run(
        f"""
        import torch, adaptor_peft as ap
        from peft import PeftModel
        torch.manual_seed(0)
        loaded = PeftModel.from_pretrained(ap.create_model("test_vmamba", num_classes=3), {str(tmp_path)!r})
        x, y = torch.load({str(tmp_path / "io.pt")!r})
        assert torch.equal(loaded(x), y)
        """
    )


def test_an_unusable_tuner_warns_instead_of_breaking_peft():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import warnings, adaptor_peft.peft_hook as h\n"
            "h.TUNER_MODULE = 'adaptor_peft.no_such_module'\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import peft\n"
            "assert peft.PeftModel is not None\n"
            "print([str(x.message) for x in w if x.category is RuntimeWarning])",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "could not register its Mamba-Adaptor tuner" in proc.stdout and "no_such_module" in proc.stdout


def test_training_path_imports_peft_only_for_lora():
    """The trainer and its method registry leave peft alone until a LoRA layer is built."""
    _run(
        textwrap.dedent("""
        import sys
        import adaptor_peft.train.trainer
        from adaptor_peft.train.methods import METHODS
        assert "lora" in METHODS and "peft" not in sys.modules
        from adaptor_peft.train.methods.baselines import lora_linear2d_class
        lora_linear2d_class()
        assert "peft" in sys.modules
        """)
        + REGISTERED
    )
