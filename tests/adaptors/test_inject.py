"""inject_adaptors / remove_adaptors / adaptor_state_dict / trainable_report on real VMamba models."""

from __future__ import annotations

import pytest
import torch

from adaptor_peft.adaptors import (
    AdaptorS,
    AdaptorT,
    MambaAdaptorConfig,
    adaptor_state_dict,
    find_ss2d,
    inject_adaptors,
    remove_adaptors,
    trainable_report,
)
from adaptor_peft.models import create_model
from adaptor_peft.models.vmamba import RELEASED_VARIANTS

CONFORMANCE_MODELS = ("small_v05noz_ln2d", "small_v0_ln")

IDENTITY_CONFIGS = {
    "default": {},
    "per_direction_absolute": {"share_across_directions": False, "offset_mode": "absolute"},
    "static_sum_replace": {"selection": "static", "aggregation": "sum", "residual": False},
    "many_points_mean_phi": {"num_points": 7, "num_heads": 4, "phi_input": "state_mean", "kernel_size": 5},
}


@pytest.fixture(scope="module")
def base_logits(conformance_dir, conformance_io):
    """name -> {case: logits of the plain model} (computed once)."""
    out = {}
    with torch.no_grad():
        for name in CONFORMANCE_MODELS:
            model = create_model(conformance_dir / f"{name}.safetensors").eval()
            out[name] = {c: model(conformance_io[name][f"{c}.input"]) for c in ("sq", "rect")}
    return out


@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
@pytest.mark.parametrize("cfg", list(IDENTITY_CONFIGS))
def test_identity_at_init(build_conformance_model, conformance_io, base_logits, name, cfg):
    model = build_conformance_model(name)
    inject_adaptors(model, MambaAdaptorConfig(**IDENTITY_CONFIGS[cfg]))
    assert all(op.adaptor_t is not None and op.adaptor_s is not None for _, op, _ in find_ss2d(model))
    cases = ("sq", "rect") if cfg == "default" else ("rect",)
    with torch.no_grad():
        for case in cases:
            adapted = model(conformance_io[name][f"{case}.input"])
            assert (adapted - base_logits[name][case]).abs().max().item() <= 1e-6, case
        if cfg == "default":  # the adaptor path really runs: a non-zero gamma changes the logits
            for _, op, _ in find_ss2d(model):
                op.adaptor_t.gamma.fill_(0.5)
            changed = model(conformance_io[name]["rect.input"])
            assert (changed - base_logits[name]["rect"]).abs().max().item() > 1e-4


def _train_step(model, x, y, opt):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
def test_one_step_changes_only_adaptors_and_head(build_conformance_model, name):
    model = build_conformance_model(name)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    inject_adaptors(model, MambaAdaptorConfig(train_norms=False))  # frozen norms: only adaptors + head
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 48, 80, generator=g), torch.randint(0, 10, (2,), generator=g)
    _train_step(model, x, y, opt)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    adaptor_keys = {k for k in after if ".adaptor_t." in k or ".adaptor_s." in k}
    head_keys = {"classifier.head.weight", "classifier.head.bias"}
    for key, value in base_state.items():  # every base tensor bit-identical
        if key not in head_keys:
            assert torch.equal(after[key], value), key
    assert changed <= adaptor_keys | head_keys
    assert head_keys <= changed
    assert all(k in changed for k in adaptor_keys if k.endswith("adaptor_t.gamma"))
    # second step: with gamma != 0 the gradient reaches phi_p (through the interpolation) and phi_c
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for _, op, _ in find_ss2d(model):
        t = op.adaptor_t
        assert t.phi_p.weight.grad.abs().max() > 0 and t.phi_p.bias.grad.abs().max() > 0
        assert t.phi_c.weight.grad.abs().max() > 0
        assert all(c.weight.grad.abs().max() > 0 for c in op.adaptor_s.convs)


@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
def test_remove_adaptors_restores_base(build_conformance_model, conformance_io, name):
    model = build_conformance_model(name)
    keys = list(model.state_dict())
    x = conformance_io[name]["rect.input"]
    with torch.no_grad():
        base = model(x)
        inject_adaptors(model, MambaAdaptorConfig(init="random"))
        assert (model(x) - base).abs().max() > 1e-4
        remove_adaptors(model)
        assert torch.equal(model(x), base)
    assert list(model.state_dict()) == keys
    assert all(p.requires_grad for p in model.parameters())
    assert all(op.adaptor_t is None and op.adaptor_s is None for _, op, _ in find_ss2d(model))
    assert getattr(model, "adaptor_config", None) is None
    inject_adaptors(model, MambaAdaptorConfig())  # can be injected again


def test_channel_last_v05_identity(build_conformance_model):
    # v05_noz with channel-last LayerNorm (no released conformance file): identity still holds
    model = create_model("test_vmamba", norm_layer="ln").eval()
    assert not find_ss2d(model)[0][1].channel_first
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        base = model(x)
        inject_adaptors(model, MambaAdaptorConfig())
        assert (model(x) - base).abs().max().item() <= 1e-6


def test_state_dict_report_and_config(build_conformance_model):
    model = build_conformance_model("small_v05noz_ln2d")
    base_keys = set(model.state_dict())
    cfg = MambaAdaptorConfig()
    assert inject_adaptors(model, cfg) is model and model.adaptor_config is cfg
    state = model.state_dict()
    assert base_keys <= set(state)  # no base key renamed
    adaptor_keys = set(state) - base_keys
    assert all(".op.adaptor_t." in k or ".op.adaptor_s." in k for k in adaptor_keys)
    # default train_norms=True: the LayerNorms (stem 2, per block norm/op.out_norm/norm2, downsample
    # LN of stages 0-2, classifier norm) train and are saved with the adaptors and the head
    blocks = [f"layers.{i}.blocks.{j}" for i, depth in enumerate((1, 1, 2, 1)) for j in range(depth)]
    norms = ["patch_embed.2", "patch_embed.7", "classifier.norm"]
    norms += [f"{b}.{n}" for b in blocks for n in ("norm", "op.out_norm", "norm2")]
    norms += [f"layers.{i}.downsample.3" for i in range(3)]
    norm_keys = {f"{n}.{w}" for n in norms for w in ("weight", "bias")}
    assert norm_keys <= base_keys
    sd = adaptor_state_dict(model)
    assert set(sd) == adaptor_keys | norm_keys | {"classifier.head.weight", "classifier.head.bias"}
    assert all(torch.equal(sd[k], state[k]) for k in sd)
    assert set(adaptor_state_dict(model, include_head=False)) == adaptor_keys | norm_keys
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(sd)

    rep = trainable_report(model)
    # from the shapes (dims 16-32-64-128, depths 1-1-2-1, d_state 1, 10 classes): per block of d_inner D,
    # Adaptor-T phi_p + phi_c (8 x D weights + 8 biases each) + gamma (D) and Adaptor-S 9*D
    n_adapt = sum(2 * (8 * d + 8) + d + 9 * d for d in (16, 32, 64, 64, 128))
    # LayerNorm weight + bias: stem LN(8), LN(16); 3 per block of width c (d_inner = c); downsample
    # LN(32), LN(64), LN(128); classifier LN(128)
    n_norm = 2 * (8 + 16) + sum(3 * 2 * c for c in (16, 32, 64, 64, 128)) + 2 * (32 + 64 + 128) + 2 * 128
    n_head = 128 * 10 + 10
    assert n_adapt == sum(state[k].numel() for k in adaptor_keys)
    assert n_norm == sum(state[k].numel() for k in norm_keys)
    assert rep.adaptor_params == n_adapt and rep.head_params == n_head
    assert rep.base_params == 384_074 and rep.base_params_no_head == 384_074 - n_head
    assert rep.trainable_params == n_adapt + n_norm + n_head
    assert rep.trainable_params_no_head == n_adapt + n_norm
    assert rep.trainable_pct_no_head == pytest.approx(100 * (n_adapt + n_norm) / (384_074 - n_head))
    assert rep.by_type["norm"]["trainable"] == n_norm
    assert rep.by_type["adaptor_t"]["trainable"] + rep.by_type["adaptor_s"]["trainable"] == n_adapt
    text = str(rep)
    assert f"{rep.trainable_pct_no_head:.3f}% of the base without the head" in text
    assert f"{rep.trainable_pct:.3f}% of the base" in text and "adaptor_t" in text


def test_default_transfer_budget_vmamba_tiny():
    with torch.device("meta"):
        model = create_model("vmamba_tiny_s1l8", num_classes=100)
    inject_adaptors(model, MambaAdaptorConfig())
    rep = trainable_report(model)
    assert rep.base_params_no_head == 29_480_064 and rep.head_params == 76_900
    assert rep.adaptor_params == 135_008  # 88,352 Adaptor-T + 46,656 Adaptor-S
    assert 100 * rep.adaptor_params / rep.base_params_no_head <= 0.5  # the paper's "about 0.5%"
    # + the LayerNorms (default train_norms=True), weight + bias: stem LN(48), LN(96); per block norm,
    # op.out_norm, norm2 of width c (d_inner = c); downsample LN(192), LN(384), LN(768); classifier LN(768)
    n_norm = 2 * (48 + 96) + sum(3 * 2 * c * depth for c, depth in ((96, 2), (192, 2), (384, 8), (768, 2)))
    n_norm += 2 * (192 + 384 + 768) + 2 * 768
    assert n_norm == 35_616 and rep.by_type["norm"]["trainable"] == n_norm
    assert rep.trainable_params_no_head == 135_008 + n_norm == 170_624
    assert rep.trainable_pct_no_head == pytest.approx(100 * 170_624 / 29_480_064)  # 0.58%


@pytest.mark.parametrize("name", list(RELEASED_VARIANTS))
def test_every_released_variant_gets_adaptors(name):
    with torch.device("meta"):
        model = create_model(name)
    inject_adaptors(model, MambaAdaptorConfig())
    found = find_ss2d(model)
    assert len(found) == sum(1 for n, _ in model.named_modules() if n.endswith(".op"))
    for block, op, _ in found:
        assert isinstance(op.adaptor_t, AdaptorT) and isinstance(op.adaptor_s, AdaptorS), block
        assert op.adaptor_t.d_inner == op.d_inner and op.adaptor_t.d_state == op.d_state
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adaptor_state_dict(model))


def _blocks_with_adaptors(model):
    return [
        block for block, op, _ in find_ss2d(model) if op.adaptor_t is not None or op.adaptor_s is not None
    ]


def test_stage_and_block_selection(build_conformance_model):
    # small_v05noz_ln2d depths (1, 1, 2, 1)
    def select(**kw):
        model = build_conformance_model("small_v05noz_ln2d")
        return _blocks_with_adaptors(inject_adaptors(model, MambaAdaptorConfig(**kw)))

    assert select(stages=(2,)) == ["layers.2.blocks.0", "layers.2.blocks.1"]
    assert select(stages=(-1, 0)) == ["layers.0.blocks.0", "layers.3.blocks.0"]
    assert select(blocks=("layers.2.blocks.*",)) == ["layers.2.blocks.0", "layers.2.blocks.1"]
    assert select(blocks=(0, 4)) == ["layers.0.blocks.0", "layers.3.blocks.0"]
    assert select(stages=(2,), blocks=("*.blocks.1",)) == ["layers.2.blocks.1"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stages": (4,)}, r"stages: stage index 4 is out of range for a model with 4 stages"),
        ({"stages": (-5,)}, r"stages: stage index -5"),
        ({"blocks": (5,)}, r"blocks: block index 5 is out of range"),
        ({"blocks": ("layers.9.*",)}, r"blocks: pattern 'layers.9.\*' matches no block"),
        ({"num_heads": 3}, r"num_heads=3 does not divide d_inner=16 \(block layers.0.blocks.0\)"),
        ({"dilations": tuple(range(1, 18))}, r"dilations: 17 split branches do not fit 16 channels"),
        ({"modules_to_save": ("nope.*",)}, r"modules_to_save: pattern 'nope.\*' matches no module"),
    ],
)
def test_injection_errors_name_the_field_and_leave_model_untouched(build_conformance_model, kwargs, match):
    model = build_conformance_model("small_v05noz_ln2d")
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match=match):
        inject_adaptors(model, MambaAdaptorConfig(**kwargs))
    assert list(model.state_dict()) == keys
    assert getattr(model, "adaptor_config", None) is None


def test_double_injection_and_missing_adaptors_raise(build_conformance_model):
    model = build_conformance_model("small_v05noz_ln2d")
    with pytest.raises(ValueError, match="no adaptors"):
        adaptor_state_dict(model)
    inject_adaptors(model, MambaAdaptorConfig())
    with pytest.raises(ValueError, match="already has adaptors"):
        inject_adaptors(model, MambaAdaptorConfig())
    with pytest.raises(TypeError, match="MambaAdaptorConfig"):
        inject_adaptors(build_conformance_model("small_v05noz_ln2d"), {"temporal": True})


def test_booster_mode_keeps_everything_trainable(build_conformance_model):
    model = build_conformance_model("small_v05noz_ln2d")
    inject_adaptors(model, MambaAdaptorConfig(), freeze_base=False)
    assert all(p.requires_grad for p in model.parameters())


def test_injected_model_on_the_triton_backend_matches_torch(monkeypatch):
    """The whole injected model with every kernel on Triton (scan, cross-scan/merge, Adaptor-T read-out;
    the interpreter on CPU) gives the torch backend's features and adaptor gradients."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model("test_vmamba", num_classes=10)
    inject_adaptors(model, MambaAdaptorConfig(init="random"))
    model.to(device)
    x = torch.randn(1, 3, 32, 16, device=device)  # rectangular
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("ADAPTOR_PEFT_SCAN", backend)
        feats = model.forward_features(x)
        params = [p for n, p in model.named_parameters() if ".adaptor_t." in n]
        results[backend] = (feats.detach(), torch.autograd.grad(feats.pow(2).mean(), params))
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=2e-5, rtol=1e-4)
    for a, b in zip(results["triton"][1], results["torch"][1]):
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item() + 1e-9, rtol=1e-3)
