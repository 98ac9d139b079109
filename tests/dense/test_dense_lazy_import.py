"""The dense package never imports its optional dependencies at import time."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_in_smp_or_pycocotools():
    code = (
        "import sys, adaptor_peft.dense as d; "
        "names = ('segmentation_models_pytorch', 'pycocotools', 'mmdet', 'mmseg'); "
        "print(sorted(m for m in names if m in sys.modules)); "
        "print(d.confusion_matrix.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["[]", "adaptor_peft.dense.metrics"]
