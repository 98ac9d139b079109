"""Input checks shared by the public entry points: clear errors instead of shape errors deep in a model.

What VMamba actually needs from an image batch (checked by running the stems and downsamplers):

- a dense, floating-point, 4-D (B, C, H, W) tensor with B >= 1, C == in_chans, H, W >= 1;
- the v1 patch embedding (one conv, kernel = stride = patch_size) silently drops the last H % patch_size
  rows (and columns), and the v2 downsample (kernel 2, stride 2, no padding) drops the odd last row of a
  stage; the v2 stem, the v1 (padding) and v3 (padding 1) downsamples accept any size. We require H and W
  to be multiples of ``input_multiple`` (patch_size, times 2**(stages-1) for the v2 downsample) for every
  layout, so one rule holds for all variants and no pixel is ever dropped silently; ``pad_to_patch``
  pads bottom/right with zeros (the mean colour after normalisation) instead of failing;
- a learned ``pos_embed`` fixes the token grid to ``imgsize // patch_size``.

Non-finite values are checked only on request (``check_finite``): the scan is costly to debug once NaNs
are inside it, but a full ``isfinite`` pass forces a device sync on every forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "ImageInputError",
    "ImageTypeError",
    "NonFiniteInputError",
    "check_images",
    "check_model_input",
    "input_multiple",
]


class ImageInputError(ValueError):
    """An image batch has the wrong shape, size or values for the model; the message names them."""


class ImageTypeError(ImageInputError, TypeError):
    """The input is not a dense floating-point torch.Tensor (e.g. a numpy array, uint8, sparse)."""


class NonFiniteInputError(ImageInputError):
    """The input holds NaN or Inf values (raised only when finite checking is enabled)."""


def input_multiple(patch_size: int, num_stages: int = 1, downsample_version: str = "v3") -> int:
    """The multiple H and W must have so that no stem/downsample drops pixels silently."""
    if downsample_version == "v2":  # kernel-2 stride-2 conv without padding: every stage must be even
        return patch_size * 2 ** max(0, num_stages - 1)
    return patch_size


def _describe(x: torch.Tensor) -> str:
    return f"tensor of shape {tuple(x.shape)}"


def check_images(
    x: Any,
    patch_size: int,
    in_chans: int,
    *,
    multiple: int | None = None,
    pad: bool = False,
    check_finite: bool = False,
    grid: tuple[int, int] | None = None,
    name: str = "images",
) -> torch.Tensor:
    """Validate a (B, C, H, W) image batch and return it (zero-padded bottom/right when ``pad``).

    multiple: H and W must be multiples of it (default patch_size); grid: the (H, W) token grid a fixed
    position embedding requires after the patch embedding.
    """
    if not isinstance(x, torch.Tensor):
        raise ImageTypeError(
            f"{name} must be a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__module__}."
            f"{type(x).__qualname__}; convert it with torch.as_tensor(...).permute(...) and normalise it"
        )
    if x.is_nested or x.layout != torch.strided:
        kind = "nested" if x.is_nested else str(x.layout)
        raise ImageTypeError(
            f"{name} must be a dense (strided) tensor, got a {kind} tensor; call .to_dense()"
        )
    if x.ndim != 4:
        hint = " (a single image? add the batch dim with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ImageInputError(f"{name} must be 4-D (B, C, H, W), got a {x.ndim}-D {_describe(x)}{hint}")
    if not x.is_floating_point():
        raise ImageTypeError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype} ({_describe(x)}); "
            "convert with x.float() / 255 and normalise with the model's mean/std"
        )
    b, c, h, w = x.shape
    if b == 0:
        raise ImageInputError(f"{name} is an empty batch ({_describe(x)}): at least one image is needed")
    if c != in_chans:
        hint = ""
        if x.shape[-1] == in_chans:
            hint = " (it looks channel-last (B, H, W, C): use x.permute(0, 3, 1, 2))"
        elif c == 1 and in_chans == 3:
            hint = " (grayscale: repeat it with x.expand(-1, 3, -1, -1))"
        raise ImageInputError(
            f"{name} has {c} channels at dim 1 but the model expects in_chans={in_chans} "
            f"({_describe(x)}){hint}"
        )
    if h == 0 or w == 0:
        raise ImageInputError(f"{name} has an empty spatial size H={h}, W={w} ({_describe(x)})")
    m = multiple or patch_size
    if h % m or w % m:
        if not pad:
            sizes = ", ".join(f"{k}={v}" for k, v in (("H", h), ("W", w)) if v % m)
            raise ImageInputError(
                f"{name} size {h}x{w} is not divisible by {m} (the model's patch size {patch_size}"
                f"{'' if m == patch_size else ' x its 2x downsamples'}): {sizes}; resize/crop to a multiple "
                f"of {m} (e.g. {max(m, h // m * m)}x{max(m, w // m * m)}) or enable pad_to_patch"
            )
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m))
        h, w = x.shape[-2:]
    if grid is not None and (h // patch_size, w // patch_size) != tuple(grid):
        raise ImageInputError(
            f"{name} size {h}x{w} gives a {h // patch_size}x{w // patch_size} token grid, but the model's "
            f"fixed position embedding needs {grid[0]}x{grid[1]} (input {grid[0] * patch_size}x"
            f"{grid[1] * patch_size}, set by imgsize)"
        )
    if check_finite and x.device.type != "meta":
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            per_image = bad.flatten(1).sum(1)
            first = int(torch.nonzero(per_image)[0, 0])
            raise NonFiniteInputError(
                f"{name} holds {int(bad.sum())} NaN/Inf value(s) ({_describe(x)}); "
                f"first affected image: index {first} ({int(per_image[first])} values)"
            )
    return x


def check_model_input(model: torch.nn.Module, x: Any) -> torch.Tensor:
    """check_images with a VSSM's own settings (patch size, in_chans, layout, pad_to_patch, check_finite)."""
    config = getattr(model, "model_config", {})
    patch = int(getattr(model, "patch_size", config.get("patch_size", 4)))
    multiple = input_multiple(patch, len(config.get("depths", [1])), config.get("downsample_version", "v3"))
    pos = getattr(model, "pos_embed", None)
    grid = tuple(pos.shape[-2:]) if isinstance(pos, torch.Tensor) else None
    return check_images(
        x,
        patch,
        int(config.get("in_chans", 3)),
        multiple=multiple,
        pad=bool(getattr(model, "pad_to_patch", False)),
        check_finite=bool(getattr(model, "check_finite", False)),
        grid=grid,
    )
