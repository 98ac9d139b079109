"""The README's Python API example runs as written (with a tiny model and a temp file substituted)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import adaptor_peft as ap

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(after_heading: str) -> str:
    text = README.read_text()
    section = text[text.index(after_heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_example_runs(tmp_path, capsys):
    code = _python_block("## Python API")
    code = code.replace('"vmamba_tiny_s1l8", checkpoint="vssm1_tiny.safetensors"', '"test_vmamba"')
    code = code.replace('"pets.safetensors"', repr(str(tmp_path / "pets.safetensors")))
    assert "vssm1_tiny" not in code and "pets.safetensors'" in code

    def create_model(*args, **kwargs):  # the same (seeded) base both times, as a checkpoint would give
        torch.manual_seed(0)
        return ap.create_model(*args, **kwargs)

    namespace = {"__name__": "readme", "ap": _Shim(create_model)}
    exec(compile(code.replace("import adaptor_peft as ap", ""), str(README), "exec"), namespace)
    model = namespace["model"]
    assert model.adaptor_config.num_heads == 4 and (tmp_path / "pets.safetensors").is_file()
    assert "trainable" in capsys.readouterr().out.lower()


class _Shim:
    """adaptor_peft with create_model seeded."""

    def __init__(self, create_model) -> None:
        self.create_model = create_model

    def __getattr__(self, name):
        return getattr(ap, name)
