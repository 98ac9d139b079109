"""Image classification data: ImageFolder dirs, ``.npz`` (x, y) files and ``datasets`` save_to_disk dirs.

Every source becomes an ``ImageSource`` (raw images + integer labels + class names); a
``TransformedDataset`` turns it into normalised 3-channel tensors of the recipe's size. Training
augmentation is seeded per (seed, epoch, sample), so it does not depend on worker count, process
count, prefetching or where a resumed run restarts.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..limits import MODEL_LIMITS

if TYPE_CHECKING:
    from .recipes import Recipe

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
#: An ImageFolder of at most this many image files and bytes is scanned for unreadable files when it is
#: opened (recipe key check_images unset): seconds, not minutes. Measured on 2 cores at load 8 (a
#: quarter core): 0.1 ms per 32x32 PNG, 0.5-1 ms per 224x224 JPEG (decoded at 1/8 scale), 7-55 ms per
#: MB; at the bound at most ~20 s there, a few seconds on an idle core.
CHECK_IMAGES_MAX_FILES = 20_000
CHECK_IMAGES_MAX_BYTES = 256 * 1024**2
#: Largest class index a label may hold (a head of more classes is refused by the model limits anyway).
MAX_LABEL = int(MODEL_LIMITS["num_classes"]) - 1
#: Pixel values converted per chunk (bounds the temporaries of the float -> uint8 conversion).
_CHUNK_PIXELS = 1 << 22
#: How the fix for an unreadable image reads in every message about one.
SKIP_HINT = "set bad_images=skip to leave unreadable images out (or fix or remove them)"


class DataError(ValueError):
    """A dataset is missing, empty, unreadable, or has labels that do not fit the model."""


class ImageSource(Dataset):
    """Raw images with integer labels; ``__getitem__`` returns (PIL image or HxW[xC] uint8 array, label)."""

    #: True when ``classes`` are the data's own names (folders, an npz 'classes' array, a ClassLabel),
    #: False when they are only the label numbers: evaluation maps named classes by name.
    named_classes: bool = False

    def __init__(self, labels: np.ndarray, classes: list[str], source: str) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = classes
        self.source = source

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image | np.ndarray:
        """Return the raw image at ``index``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.load(index), int(self.labels[index])

    def check_labels(self, num_classes: int) -> None:
        """Raise DataError naming the source and value when a label falls outside [0, num_classes)."""
        if len(self.labels) == 0:
            return
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{self.source}: label {int(self.labels[i])} at index {i} is outside the model head "
                f"(num_classes={num_classes}); {bad.size} label(s) out of range"
            )


class ArraySource(ImageSource):
    """Images held in memory as a (N, H, W), (N, H, W, C) or (N, C, H, W) array."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        classes: list[str] | None,
        source: str,
        nonfinite_pixels: str | float = "error",
    ) -> None:
        if x.ndim not in (3, 4):
            raise DataError(
                f"{source}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C in 1/3; got {x.shape}"
            )
        channel_first = x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3)
        if x.ndim == 4 and not channel_first and x.shape[-1] not in (1, 3):
            raise DataError(
                f"{source}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C in 1/3; got {x.shape}"
            )
        y = np.asarray(y).reshape(-1)
        if len(x) != len(y):
            raise DataError(f"{source}: {len(x)} images but {len(y)} labels")
        labels = checked_labels(y, source)  # before any cast: 1e30 or 'a' must not become an index
        x = pixels_to_uint8(x, source, nonfinite_pixels)
        if channel_first:
            x = x.transpose(0, 2, 3, 1)  # channel-first -> channel-last (a view of the uint8 copy)
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        n_cls = int(labels.max()) + 1 if labels.size else 0
        super().__init__(labels, classes or [str(i) for i in range(n_cls)], source)
        self.x, self.named_classes = x, classes is not None

    def load(self, index: int) -> np.ndarray:
        """Return the uint8 array of image ``index``."""
        return self.x[index]


def _label_text(value: Any) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return repr(value)


def checked_labels(y: Any, source: str) -> np.ndarray:
    """Labels as int64, after checking (before any cast) that each is an integer in [0, MAX_LABEL]."""
    y = np.asarray(y).reshape(-1)
    if y.size == 0:
        return np.zeros(0, dtype=np.int64)
    kind = y.dtype.kind
    if kind == "b":
        raise DataError(
            f"{source}: label {_label_text(y[0])} at index 0 is a boolean, not a class index; "
            "store labels as integers 0..C-1"
        )
    if kind not in "iuf":  # strings, complex numbers, dates, objects
        raise DataError(
            f"{source}: label {_label_text(y[0])} at index 0 is not a class index (labels have dtype "
            f"{y.dtype}); store labels as integers 0..C-1 (npz: class names go in a 'classes' array)"
        )
    if kind in "iu" and y.min() >= 0 and y.max() <= MAX_LABEL:  # the common case, without temporaries
        return y.astype(np.int64, copy=False)
    with np.errstate(invalid="ignore"):
        if kind == "f":
            whole = np.isfinite(y) & (y == np.floor(y))
        else:
            whole = np.ones(y.shape, dtype=bool)
        bad = ~whole | (y < 0) | (y > MAX_LABEL)
    if bad.any():
        i = int(np.argmax(bad))
        value = y[i]
        if not whole[i]:
            why = "not a whole number"
        elif value < 0:
            why = "negative"
        else:
            why = f"larger than the largest class index allowed ({MAX_LABEL})"
        raise DataError(
            f"{source}: label {_label_text(value)} at index {i} is {why}; labels must be integer class "
            f"indices 0..C-1 ({int(bad.sum())} bad label(s))"
        )
    return y.astype(np.int64, copy=False)


def pixels_to_uint8(x: np.ndarray, source: str, nonfinite_pixels: str | float = "error") -> np.ndarray:
    """uint8 images from integer pixels in [0, 255] or float pixels consistently in [0, 1] or [0, 255].

    The float range is decided for the whole source from the data: every image with a pixel above 1 is a
    0-255 image, every other non-black image a 0-1 image; both kinds in one source is an error (a 0-1
    set with one stray 1.5 must not be read as 0-255). NaN/Inf pixels are an error naming the image
    unless ``nonfinite_pixels`` is a 0-255 value to put in their place. Works in chunks of images, so
    the only full-size allocation is the uint8 result.
    """
    kind = x.dtype.kind
    if x.dtype == np.uint8:
        return x
    if kind not in "iuf":
        raise DataError(
            f"{source}: pixels of dtype {x.dtype} are not supported; use uint8 (0-255) or floats in "
            "[0, 1] or [0, 255]"
        )
    n = len(x)
    per_image = int(np.prod(x.shape[1:], dtype=np.int64))
    if per_image == 0:
        raise DataError(f"{source}: the images are empty (shape {x.shape})")
    step = max(1, _CHUNK_PIXELS // max(1, per_image))
    if kind in "iu":
        lo = min((int(x[i : i + step].min()) for i in range(0, n, step)), default=0)
        hi = max((int(x[i : i + step].max()) for i in range(0, n, step)), default=0)
        if lo < 0 or hi > 255:
            raise DataError(
                f"{source}: integer pixels must be in [0, 255]; the images hold [{lo}, {hi}] (dtype "
                f"{x.dtype}); rescale them to 0-255"
            )
        return x.astype(np.uint8)
    lo, hi = np.inf, -np.inf
    first_high, n_high, first_low, n_low = -1, 0, -1, 0
    n_bad = 0
    for start in range(0, n, step):
        chunk = x[start : start + step].reshape(-1, per_image).astype(np.float64, copy=False)
        finite = np.isfinite(chunk)
        if not finite.all():
            rows = np.flatnonzero(~finite.all(axis=1))
            if nonfinite_pixels == "error":
                i = int(rows[0])
                j = int(np.argmax(~finite[i]))
                pos = tuple(int(v) for v in np.unravel_index(j, x.shape[1:]))
                raise DataError(
                    f"{source}: image {start + i} has a non-finite pixel ({chunk[i, j]}) at {pos}; "
                    "repair the data or set nonfinite_pixels=<0-255 value> to replace such pixels"
                )
            n_bad += len(rows)
        img_max = np.where(finite, chunk, -np.inf).max(axis=1)
        img_min = np.where(finite, chunk, np.inf).min(axis=1)
        lo, hi = min(lo, float(img_min.min())), max(hi, float(img_max.max()))
        high = np.flatnonzero(img_max > 1.0)
        low = np.flatnonzero((img_max > 0.0) & (img_max <= 1.0))
        if high.size and first_high < 0:
            first_high = start + int(high[0])
        if low.size and first_low < 0:
            first_low = start + int(low[0])
        n_high, n_low = n_high + high.size, n_low + low.size
    seen = f"[{lo:g}, {hi:g}]" if lo <= hi else "no finite values"
    if lo < 0 or hi > 255:
        raise DataError(
            f"{source}: float pixels must be in [0, 1] or [0, 255]; the images hold {seen}; rescale them"
        )
    if n_high and n_low:
        raise DataError(
            f"{source}: float pixels are not consistently in [0, 1] or [0, 255]: the images hold {seen}; "
            f"{n_low} image(s) stay within [0, 1] (first: index {first_low}) and {n_high} go above 1 "
            f"(first: index {first_high}); rescale them to one range"
        )
    scale = 1.0 if n_high else 255.0
    out = np.empty(x.shape, dtype=np.uint8)
    for start in range(0, n, step):
        chunk = x[start : start + step].astype(np.float64, copy=False)
        finite = np.isfinite(chunk)
        pixels = np.rint(np.where(finite, chunk, 0.0) * scale)
        if n_bad:
            pixels[~finite] = float(nonfinite_pixels)
        out[start : start + step] = pixels
    if n_bad:
        warnings.warn(
            f"{source}: {n_bad} image(s) hold NaN/Inf pixels; they were set to {nonfinite_pixels} "
            "(nonfinite_pixels)",
            stacklevel=3,
        )
    return out


class FolderSource(ImageSource):
    """An ImageFolder tree: ``root/<class name>/<image file>``.

    Unreadable files are found up front when ``bad_images`` is "skip" (they are left out, with a
    warning) or when the folder is scanned (``check_images``; None: folders of at most
    CHECK_IMAGES_MAX_FILES files and CHECK_IMAGES_MAX_BYTES): with "error" they are then all listed
    before anything trains.
    """

    def __init__(self, root: Path, bad_images: str = "error", check_images: bool | None = None) -> None:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"{root}: no class sub-folders found (expected root/<class>/<image>)")
        files, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((root / name).rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    files.append(path)
                    labels.append(label)
        if check_images is None:
            check_images = len(files) <= CHECK_IMAGES_MAX_FILES and (
                sum(p.stat().st_size for p in files) <= CHECK_IMAGES_MAX_BYTES
            )
        if bad_images == "skip" or check_images:
            problems = [(i, why) for i, p in enumerate(files) if (why := image_problem(p)) is not None]
            if problems and bad_images != "skip":
                raise DataError(_unreadable_message(root, [(files[i], why) for i, why in problems]))
            if problems:
                warnings.warn(f"{root}: skipped {len(problems)} unreadable image(s)", stacklevel=2)
                dropped = {i for i, _ in problems}
                keep = [i for i in range(len(files)) if i not in dropped]
                files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        super().__init__(np.array(labels, dtype=np.int64), classes, str(root))
        self.files, self.named_classes = files, True

    def load(self, index: int) -> Image.Image:
        """Open image ``index`` (errors name the file and bad_images=skip)."""
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img.load()
                return img.copy()
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {_one_line(exc, path)}; {SKIP_HINT}") from None


def _one_line(exc: BaseException, path: Path | None = None) -> str:
    text = str(exc) if path is None else str(exc).replace(f" '{path}'", "")  # PIL repeats the path
    return " ".join(text.split()) or type(exc).__name__


def image_problem(path: Path) -> str | None:
    """Why the image file at ``path`` cannot be decoded, or None when it can."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, ~2.5x faster; still reads every byte
            img.load()
        return None
    except Exception as exc:
        return _one_line(exc, path)


def _unreadable_message(root: Path, problems: list[tuple[Path, str]], shown: int = 5) -> str:
    listed = ", ".join(f"{path} ({why})" for path, why in problems[:shown])
    more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
    return f"{root}: {len(problems)} unreadable image(s): {listed}{more}; {SKIP_HINT}"


class HFDiskSource(ImageSource):
    """A Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (image + label columns)."""

    def __init__(self, root: Path, split: str | None) -> None:
        try:
            import datasets  # lazy: an optional dependency
        except ImportError:
            raise DataError(
                f"{root} is a Hugging Face datasets directory; reading it needs the 'datasets' package "
                "(pip install datasets)"
            ) from None
        try:
            ds = datasets.load_from_disk(str(root))
        except Exception as exc:
            raise DataError(f"{root}: cannot load the datasets directory: {exc}") from None
        if isinstance(ds, datasets.DatasetDict):
            names = list(ds.keys())
            split = split or next((s for s in ("train", "test", "validation") if s in ds), names[0])
            if split not in ds:
                raise DataError(f"{root}: split '{split}' not found; available: {names}")
            ds = ds[split]
            where = f"{root}[{split}]"
        else:
            where = str(root)
        features = ds.features
        image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
        image_col = image_col or next((c for c in ("image", "img", "pixel_values") if c in features), None)
        label_col = next((c for c in ("label", "labels", "fine_label") if c in features), None)
        if label_col is None:
            label_col = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        if image_col is None or label_col is None:
            raise DataError(f"{where}: need an image column and a label column, found {list(features)}")
        feature = features[label_col]
        labels = checked_labels(ds[label_col], f"{where} column '{label_col}'")
        if isinstance(feature, datasets.ClassLabel):
            classes = list(feature.names)
        else:
            classes = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
        super().__init__(labels, classes, where)
        self.ds, self.image_col = ds, image_col
        self.named_classes = isinstance(feature, datasets.ClassLabel)

    def load(self, index: int) -> Image.Image | np.ndarray:
        """Return image ``index`` as a PIL image (or array for array-valued columns)."""
        value = self.ds[int(index)][self.image_col]
        if isinstance(value, Image.Image):
            return value
        pixels = np.asarray(value)
        if pixels.dtype.kind == "f":  # one row cannot tell 0-1 from 0-255: only exact 0-255 values pass
            with np.errstate(invalid="ignore"):
                exact = np.isfinite(pixels) & (pixels == np.round(pixels)) & (pixels >= 0) & (pixels <= 255)
            if not exact.all():
                bad = pixels.reshape(-1)[int(np.argmax(~exact.reshape(-1)))]
                raise DataError(
                    f"{self.source}: row {index} of column '{self.image_col}' holds the pixel value {bad}; "
                    "float array columns are read as whole 0-255 values: store uint8 images (or an Image "
                    "feature)"
                )
            return pixels.astype(np.uint8)  # not pixels_to_uint8: a 0/1 row would be scaled to 0/255
        return pixels_to_uint8(pixels, f"{self.source} row {index}")


class SubsetSource(ImageSource):
    """A view of another source restricted to some indices."""

    def __init__(self, base: ImageSource, indices: np.ndarray) -> None:
        super().__init__(base.labels[indices], base.classes, base.source)
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.named_classes = base.named_classes

    def load(self, index: int) -> Any:
        """Return the base image at the mapped index."""
        return self.base.load(int(self.indices[index]))


def open_source(
    path: str | os.PathLike,
    split: str | None = None,
    bad_images: str = "error",
    check_images: bool | None = None,
    nonfinite_pixels: str | float = "error",
) -> ImageSource:
    """Open a dataset path: ``.npz`` file, ``save_to_disk`` dir or ImageFolder dir, checking its data."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{path}: unsupported dataset file (expected .npz with x and y arrays)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                prefer = [f"x_{split}"] if split else []
                xk = next((k for k in prefer + ["x", "images", "X"] if k in keys), None)
                prefer = [f"y_{split}"] if split else []
                yk = next((k for k in prefer + ["y", "labels", "Y"] if k in keys), None)
                if xk is None or yk is None:
                    raise DataError(f"{path}: expected arrays 'x' and 'y', found {keys}")
                x, y = npz[xk], npz[yk]
                classes = [str(c) for c in npz["classes"]] if "classes" in keys else None
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read the .npz file: {exc}") from None
        source: ImageSource = ArraySource(x, y, classes, str(path), nonfinite_pixels)
    elif any((path / marker).exists() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")):
        source = HFDiskSource(path, split)
    else:
        source = FolderSource(path, bad_images=bad_images, check_images=check_images)
    if len(source) == 0:
        raise DataError(f"{path}: dataset is empty")
    return source


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced subset of size min(n, len(labels))."""
    n = min(n, len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picked: list[int] = []
    depth = 0
    while len(picked) < n:  # round-robin over classes, so small classes give all they have
        for pool in pools:
            if depth < len(pool) and len(picked) < n:
                picked.append(int(pool[depth]))
        depth += 1
    return np.sort(np.array(picked, dtype=np.int64))


def split_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, holdout) index split; the holdout holds ``fraction`` of each class."""
    n_hold = max(1, int(round(len(labels) * fraction)))
    hold = stratified_subset(labels, n_hold, seed + 7919)
    mask = np.ones(len(labels), dtype=bool)
    mask[hold] = False
    return np.flatnonzero(mask), hold


# --- transforms ---------------------------------------------------------------------------------


def fit_size(img: Image.Image, size: int, mode: str) -> Image.Image:
    """Pad (centre, black) an image no larger than ``size`` to size x size, else resize to it."""
    w, h = img.size
    if mode == "pad" and w <= size and h <= size:
        if (w, h) == (size, size):
            return img
        canvas = Image.new(img.mode, (size, size))
        canvas.paste(img, ((size - w) // 2, (size - h) // 2))
        return canvas
    return img.resize((size, size), Image.BILINEAR)


def to_rgb(img: Image.Image | np.ndarray) -> Image.Image:
    """Convert a PIL image or uint8 array (gray or RGB) to an RGB PIL image (gray repeated)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    return img if img.mode == "RGB" else img.convert("RGB")


class Preprocess:
    """Raw image -> normalised (3, S, S) float tensor, with an optional timm training pipeline."""

    def __init__(self, recipe: Recipe, train: bool) -> None:
        self.size, self.mode = recipe.img_size, recipe.resize
        self.mean = torch.tensor(recipe.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(recipe.std, dtype=torch.float32).view(3, 1, 1)
        self.random = train and recipe.augment == "timm"
        self.timm_tf = None
        if self.random:
            from .augment import create_train_transform

            self.timm_tf = create_train_transform(
                input_size=recipe.img_size,
                scale=tuple(recipe.crop_scale),
                hflip=recipe.hflip,
                vflip=0.0,
                color_jitter=None,
                auto_augment=recipe.auto_augment,
                re_prob=recipe.re_prob,
                mean=tuple(recipe.mean),
                std=tuple(recipe.std),
            )

    def __call__(self, raw: Image.Image | np.ndarray) -> torch.Tensor:
        if self.timm_tf is not None:
            return self.timm_tf(fit_size(to_rgb(raw), self.size, self.mode))
        if (
            isinstance(raw, np.ndarray)
            and raw.ndim == 2
            and self.mode == "pad"
            and max(raw.shape) <= self.size
        ):
            return self._fast_gray(raw)  # the common case (MNIST-like arrays): no PIL round trip
        img = fit_size(to_rgb(raw), self.size, self.mode)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std

    def _fast_gray(self, raw: np.ndarray) -> torch.Tensor:
        h, w = raw.shape
        x = torch.zeros(self.size, self.size)
        top, left = (self.size - h) // 2, (self.size - w) // 2
        x[top : top + h, left : left + w] = torch.from_numpy(raw).float() / 255.0
        return (x.expand(3, -1, -1) - self.mean) / self.std


class TransformedDataset(Dataset):
    """Applies Preprocess to a source; random augmentation is seeded per (seed, epoch, index)."""

    def __init__(self, source: ImageSource, preprocess: Preprocess, seed: int = 0) -> None:
        self.source, self.preprocess, self.seed, self.epoch = source, preprocess, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raw, label = self.source[index]
        if not self.preprocess.random:
            return self.preprocess(raw), label
        sample_seed = (self.seed * 1_000_003 + self.epoch * 7_919 + int(index)) % (2**31)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            try:
                x = self.preprocess(raw)
            finally:
                random.setstate(py_state)
        return x, label


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, truncated to whole optimizer steps, with a start offset.

    The same permutation is produced in every process; accelerate then deals whole per-process
    batches round-robin, so N processes x batch B see exactly the samples of 1 process x batch N*B.
    """

    def __init__(self, n: int, samples_per_step: int, seed: int, shuffle: bool = True) -> None:
        if n < samples_per_step:
            raise DataError(
                f"the training set has {n} samples, fewer than one optimizer step needs "
                f"({samples_per_step} = batch_size x grad_accum x processes)"
            )
        self.n, self.samples_per_step, self.seed, self.shuffle = n, samples_per_step, seed, shuffle
        self.epoch, self.start = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (the remainder is dropped)."""
        return self.n // self.samples_per_step

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Start the next iteration at ``start_step`` (optimizer steps) into ``epoch``."""
        self.epoch, self.start = epoch, start_step * self.samples_per_step

    def set_epoch(self, epoch: int) -> None:
        """Accelerate/torch hook: select the permutation of ``epoch`` (keeps the start offset)."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """The epoch's sample order as one integer tensor (no Python list: 10^8 samples take 400 MB)."""
        # int32 holds the same permutation as the int64 randperm of earlier versions (the same
        # generator draws), at half the memory: existing seeds and resumed runs keep their order.
        dtype = torch.int32 if self.n < 2**31 else torch.int64
        if not self.shuffle:
            return torch.arange(self.n, dtype=dtype)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g, dtype=dtype)

    def __iter__(self):  # noqa: ANN204
        order = self.order()[self.start : self.steps_per_epoch * self.samples_per_step]
        return (i for chunk in order.split(1 << 16) for i in chunk.tolist())

    def __len__(self) -> int:
        return self.steps_per_epoch * self.samples_per_step - self.start


def describe(source: ImageSource) -> str:
    """One-line summary: path, size, classes."""
    counts = np.bincount(source.labels, minlength=len(source.classes))
    return (
        f"{source.source}: {len(source)} images, {len(source.classes)} classes "
        f"(min/max per class {counts.min()}/{counts.max()})"
    )


def classes_json(classes: Sequence[str]) -> str:
    """Class names as compact JSON (for file metadata)."""
    return json.dumps(list(classes))
