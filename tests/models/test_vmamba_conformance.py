"""Official-VMamba conformance: strict load, logits and every intermediate feature, square and rectangular."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from adaptor_peft.kernels.dispatch import available_backends
from adaptor_peft.models import SS2D, VSSM, load_into_model

CONFORMANCE_MODELS = ("small_v05noz_ln2d", "small_v0_ln")

ATOL, RTOL = 1e-5, 1e-4
CPU_BACKENDS = [b for b in ("ref", "torch") if b in available_backends("cpu")]


def _build(conformance_dir, name: str, backend: str | None) -> tuple[VSSM, dict]:
    path = conformance_dir / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = VSSM(**config).eval()
    state_dict = load_file(str(path))
    report = load_into_model(model, state_dict, strict=True, source=path)
    assert report == ([], [], [])
    for m in model.modules():
        if isinstance(m, SS2D):
            m.scan_backend = backend
    return model, state_dict


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
def test_logits_and_features_match_official(conformance_dir, manifest, name, backend):
    model, _ = _build(conformance_dir, name, backend)
    io = load_file(str(conformance_dir / f"{name}_io.safetensors"))
    feats: dict[str, torch.Tensor] = {}
    modules = sorted({k.split(".feat.", 1)[1] for k in io if ".feat." in k})
    for mod in modules:
        model.get_submodule(mod).register_forward_hook(
            lambda _m, _i, out, mod=mod: feats.__setitem__(mod, out)
        )
    for case in ("sq", "rect"):
        feats.clear()
        with torch.no_grad():
            logits = model(io[f"{case}.input"])
        torch.testing.assert_close(logits, io[f"{case}.logits"], atol=ATOL, rtol=RTOL)
        listed = [k for k in io if k.startswith(f"{case}.feat.")]
        assert len(listed) == len(manifest["models"][name]["io_tensors"]) // 2 - 2
        for key in listed:
            got = feats[key.split(".feat.", 1)[1]]
            torch.testing.assert_close(
                got, io[key], atol=ATOL, rtol=RTOL, msg=lambda m, key=key: f"{key}: {m}"
            )


@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
def test_key_order_and_param_count_match_manifest(conformance_dir, manifest, name):
    model, _ = _build(conformance_dir, name, None)
    entry = manifest["models"][name]
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert got == entry["keys"]
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]


def test_rect_detects_hw_swap(conformance_dir, v05_io):
    """Sanity of the data itself: the rect case differs from its transpose (so H/W mix-ups are caught)."""
    model, _ = _build(conformance_dir, "small_v05noz_ln2d", None)
    x = v05_io["rect.input"]
    with torch.no_grad():
        swapped = model(x.transpose(2, 3))
    assert (swapped - v05_io["rect.logits"]).abs().max() > 1e-2
