"""Preprocessing against pixels worked out by hand: padding of images exactly as wide (or tall) as the
target, and channel-first arrays with non-square images (where swapping H and W changes the result)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adaptor_peft.train import load_recipe, open_source
from adaptor_peft.train.data import ArraySource, Preprocess, TransformedDataset

MEAN = [0.5, 0.4, 0.3]
STD = [0.5, 0.25, 0.2]


def _pixel(n: int, c: int, h: int, w: int) -> int:
    """A value that differs for every (image, channel, row, column) of the small arrays used here."""
    return (n * 97 + c * 61 + h * 13 + w * 3 + 5) % 256


def _hwc(height: int, width: int, n: int = 0) -> np.ndarray:
    img = np.zeros((height, width, 3), dtype=np.uint8)
    for h in range(height):
        for w in range(width):
            for c in range(3):
                img[h, w, c] = _pixel(n, c, h, w)
    return img


def _expected_padded(img: np.ndarray, size: int) -> np.ndarray:
    """(3, size, size): the image centred on a black canvas (top/left padding = floor of half the
    slack), each channel scaled to [0, 1] and normalised with MEAN / STD; written out pixel by pixel."""
    height, width, _ = img.shape
    top, left = (size - height) // 2, (size - width) // 2
    out = np.zeros((3, size, size))
    for c in range(3):
        for i in range(size):
            for j in range(size):
                inside = top <= i < top + height and left <= j < left + width
                v = img[i - top, j - left, c] / 255.0 if inside else 0.0
                out[c, i, j] = (v - MEAN[c]) / STD[c]
    return out


def _pre(size: int, **over) -> Preprocess:
    return Preprocess(load_recipe(dict(img_size=size, resize="pad", mean=MEAN, std=STD, **over)), train=False)


@pytest.mark.parametrize(
    ("height", "width"),
    [
        pytest.param(10, 16, id="as-wide-as-target"),
        pytest.param(16, 10, id="as-tall-as-target"),
        pytest.param(16, 16, id="exactly-target"),
        pytest.param(9, 13, id="smaller-odd-slack"),
    ],
)
@pytest.mark.parametrize("kind", ["array", "pil"])
def test_pad_centres_images_that_fit_without_stretching(height, width, kind):
    img = _hwc(height, width)
    raw = img if kind == "array" else Image.fromarray(img)
    got = _pre(16)(raw)
    assert got.shape == (3, 16, 16) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _expected_padded(img, 16), rtol=0, atol=1e-5)


def test_pad_top_left_corner_values_by_hand():
    """16 wide x 10 tall into 16: three black rows above (rows 0-2), the image at rows 3-12, three below."""
    got = _pre(16)(_hwc(10, 16)).numpy()
    black = [(0.0 - m) / s for m, s in zip(MEAN, STD)]  # -1.0, -1.6, -1.5
    for c in range(3):
        np.testing.assert_allclose(got[c, 0:3], np.full((3, 16), black[c]), rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[c, 13:16], np.full((3, 16), black[c]), rtol=0, atol=1e-6)
        # row 3 is image row 0: pixel (c, 0, w) = (61 c + 3 w + 5) % 256
        row = [((61 * c + 3 * w + 5) % 256 / 255.0 - MEAN[c]) / STD[c] for w in range(16)]
        assert got[c, 3].tolist() == pytest.approx(row, abs=1e-5)


# ------------------------------------------------------------------------ channel-first arrays
N, HEIGHT, WIDTH = 2, 8, 12  # non-square: H != W


def _nchw() -> np.ndarray:
    x = np.zeros((N, 3, HEIGHT, WIDTH), dtype=np.uint8)
    for n in range(N):
        for c in range(3):
            for h in range(HEIGHT):
                for w in range(WIDTH):
                    x[n, c, h, w] = _pixel(n, c, h, w)
    return x


def test_channel_first_array_source_gives_channel_last_images():
    src = ArraySource(_nchw(), np.array([0, 1]), None, "nchw")
    assert len(src) == N and src.classes == ["0", "1"]
    for n in range(N):
        img = src.load(n)
        assert img.shape == (HEIGHT, WIDTH, 3)
        assert np.array_equal(img, _hwc(HEIGHT, WIDTH, n))
        assert img[7, 11, 2] == _pixel(n, 2, 7, 11) and img[0, 11, 1] == _pixel(n, 1, 0, 11)


def test_channel_first_and_channel_last_npz_give_the_same_tensors(tmp_path):
    y = np.array([1, 0])
    last = np.stack([_hwc(HEIGHT, WIDTH, n) for n in range(N)])  # (N, H, W, 3), built without transpose
    np.savez(tmp_path / "first.npz", x=_nchw(), y=y)
    np.savez(tmp_path / "last.npz", x=last, y=y)
    pre = _pre(12)
    first_ds = TransformedDataset(open_source(tmp_path / "first.npz"), pre)
    last_ds = TransformedDataset(open_source(tmp_path / "last.npz"), pre)
    for n in range(N):
        (a, la), (b, lb) = first_ds[n], last_ds[n]
        assert la == lb == int(y[n])
        assert a.shape == b.shape == (3, 12, 12)
        assert torch.equal(a, b)
        np.testing.assert_allclose(a.numpy(), _expected_padded(last[n], 12), rtol=0, atol=1e-5)
