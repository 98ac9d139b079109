"""Parameter counts of UPerNet / Mask R-CNN on the b1/b2 and VMamba-T backbones (built on the meta device).

The paper's supplementary: UperNet + b1 38M, + b2 58M; VMamba's own: UperNet + VMamba-T[s1l8] 62M,
+ vanilla VMamba-T 55M, Mask R-CNN + VMamba-T[s1l8] 50M. mmseg's UperNet also carries an auxiliary FCN
head on stage 3 (conv3x3 C3->256 + BN + 1x1 to 150 classes) that smp's UPerNet lacks: it is added
below for the comparison.
"""

from __future__ import annotations

import pytest
import torch

import adaptor_peft  # noqa: F401

pytest.importorskip("segmentation_models_pytorch")
from adaptor_peft.dense.detection import detection_model  # noqa: E402
from adaptor_peft.dense.segmentation import segmentation_model  # noqa: E402


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _aux_fcn(c3: int, classes: int = 150, channels: int = 256) -> int:
    return c3 * channels * 9 + 2 * channels + channels * classes + classes


# name: (UPerNet exact, Mask R-CNN exact, stage-3 channels, paper UperNet M, paper Mask R-CNN M)
EXPECTED = {
    "mamba_adaptor_b1": (36_562_486, 27_885_557, 192, 38.0, None),
    "mamba_adaptor_b2": (62_379_734, 51_157_749, 384, 58.0, None),
    "vmamba_tiny_s1l8": (60_981_654, 49_759_669, 384, 62.0, 50.0),
    "vanilla_vmamba_tiny": (53_626_038, 42_404_053, 384, 55.0, None),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_dense_parameter_counts(name):
    upernet, maskrcnn, c3, paper_seg, paper_det = EXPECTED[name]
    with torch.device("meta"):
        seg = segmentation_model(name, 150)
        det = detection_model(name, 81)
    assert _count(seg) == upernet
    assert _count(det) == maskrcnn
    with_aux = (upernet + _aux_fcn(c3)) / 1e6
    if name == "mamba_adaptor_b2":
        # Our best-guess b2 (VMamba-T[s1l8] + adaptors, 32M as a classifier) gives 63.3M, not 58M:
        # 58M - 32.3M (UperNet heads) leaves ~26M for the backbone, below b2's own 32M (see the report).
        assert with_aux == pytest.approx(63.3, abs=0.05)
    else:
        assert with_aux == pytest.approx(paper_seg, rel=0.03)
    if paper_det is not None:
        assert maskrcnn / 1e6 == pytest.approx(paper_det, rel=0.03)
    if not name.startswith("mamba_adaptor"):
        return
    # Shapes at the papers' resolutions, for free on the meta device: ADE20K 512x512 crops, COCO 800x1216.
    with torch.device("meta"):
        assert seg(torch.empty(2, 3, 512, 512)).shape == (2, 150, 512, 512)
        fpn = det.backbone(torch.empty(1, 3, 800, 1216))
    assert {k: tuple(v.shape[-2:]) for k, v in fpn.items()} == {
        "0": (200, 304), "1": (100, 152), "2": (50, 76), "3": (25, 38), "pool": (13, 19),
    }  # fmt: skip
