"""Datasets for the large-scale recipes: ImageNet-style folders (timm), ADE20K, COCO instances, and the
synthetic batches of a dry run.

Each returns what the recipe runner's loop eats: classification (image tensor, label); segmentation
(normalised image, mask with `ignore_index`); detection (float image in [0, 1], torchvision target dict
with boxes XYXY, contiguous labels 1..K, masks, image_id).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .builders import build_classification_transform, build_segmentation_transform

__all__ = ["ADE20KDataset", "CocoInstances", "detection_collate", "synthetic_batch"]

_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class ADE20KDataset(Dataset):
    """ADEChallengeData2016 layout: images/{training,validation}/*.jpg + annotations/<split>/*.png.

    reduce_zero_label maps label 0 ("other") to ignore_index and 1..150 to 0..149 (mmseg's ADE20K).
    transform: a torchvision v2 callable taking (Image, Mask) tv_tensors.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "training",
        transform: Any = None,
        reduce_zero_label: bool = True,
        ignore_index: int = 255,
    ) -> None:
        root = Path(root)
        image_dir, ann_dir = root / "images" / split, root / "annotations" / split
        for d in (image_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"ADE20K folder not found: {d} (expected images/ and annotations/)")
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        if not self.images:
            raise FileNotFoundError(f"no images in {image_dir}")
        self.annotations = [ann_dir / f"{p.stem}.png" for p in self.images]
        missing = [str(p) for p in self.annotations if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} annotation(s) missing, first: {missing[0]}")
        self.transform = transform
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        image = tv_tensors.Image(TF.pil_to_tensor(Image.open(self.images[i]).convert("RGB")))
        mask = TF.pil_to_tensor(Image.open(self.annotations[i])).long()
        if self.reduce_zero_label:
            mask = torch.where(mask == 0, torch.full_like(mask, self.ignore_index), mask - 1)
        mask = tv_tensors.Mask(mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0].long()


class CocoInstances(Dataset):
    """COCO instances (pycocotools) as torchvision detection samples; images without boxes are skipped.

    Category ids map to contiguous labels 1..K in sorted id order (`label_to_category` inverts it).
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, hflip: float = 0.0) -> None:
        from pycocotools.coco import COCO

        if not Path(ann_file).is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
        self.image_dir = Path(image_dir)
        self.coco = COCO(str(ann_file))
        cats = sorted(self.coco.getCatIds())
        self.category_to_label = {c: i + 1 for i, c in enumerate(cats)}
        self.label_to_category = {i: c for c, i in self.category_to_label.items()}
        self.ids = [i for i in sorted(self.coco.getImgIds()) if self._annotations(i)]
        self.hflip = hflip

    def _annotations(self, image_id: int) -> list[dict[str, Any]]:
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False))
        return [a for a in anns if a["bbox"][2] > 1 and a["bbox"][3] > 1]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        import numpy as np
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as TF

        image_id = self.ids[i]
        info = self.coco.loadImgs(image_id)[0]
        image = tv_tensors.Image(
            TF.pil_to_tensor(Image.open(self.image_dir / info["file_name"]).convert("RGB"))
        )
        anns = self._annotations(image_id)
        h, w = image.shape[-2:]
        boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)])
        masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns]))
        target = dict(
            boxes=tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            masks=tv_tensors.Mask(masks),
            labels=torch.tensor([self.category_to_label[a["category_id"]] for a in anns]),
        )
        tf = v2.Compose(
            [
                v2.RandomHorizontalFlip(self.hflip),
                v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            ]
        )
        image, target = tf(image, target)
        out = {k: v.as_subclass(torch.Tensor) for k, v in target.items()}
        out["image_id"] = torch.tensor(image_id)
        return image.as_subclass(torch.Tensor), out


def detection_collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Lists of images and targets (detection images differ in size)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def synthetic_batch(recipe: dict[str, Any], batch: int, size: int, gen: torch.Generator) -> Any:
    """One batch of random images (and masks / boxes) through the recipe's own training transforms."""
    from PIL import Image

    task, classes = recipe["task"], recipe["data"]["num_classes"]

    def pil(h: int, w: int) -> Image.Image:
        return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())

    if task == "classification":
        tf = build_classification_transform(recipe, size)
        images = torch.stack([tf(pil(size + size // 4, size + size // 2)) for _ in range(batch)])
        return images, torch.randint(0, classes, (batch,), generator=gen)
    if task == "segmentation":
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        tf = build_segmentation_transform(recipe, size)
        images, masks = [], []
        for _ in range(batch):
            mask = torch.randint(0, classes, (1, size + size // 2, 2 * size), generator=gen)
            mask[:, :4] = recipe["data"].get("ignore_index", 255)
            image = tv_tensors.Image(TF.pil_to_tensor(pil(size + size // 2, 2 * size)))
            x, m = tf(image, tv_tensors.Mask(mask))
            images.append(x)
            masks.append(m[0].long())
        return torch.stack(images), torch.stack(masks)
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    hflip = (recipe.get("augment") or {}).get("hflip", 0.5)
    to_float = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
    flip = v2.Compose([v2.RandomHorizontalFlip(hflip), to_float])
    images, targets = [], []
    for k in range(batch):
        h, w = size, size + 16 * k
        boxes = torch.tensor([[4.0, 6.0, 30.0, 34.0], [20.0, 10.0, 60.0, 50.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        target = dict(
            boxes=tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            masks=tv_tensors.Mask(masks), labels=torch.randint(1, classes, (2,), generator=gen),
        )  # fmt: skip
        image, target = flip(image, target)
        images.append(image.as_subclass(torch.Tensor))
        targets.append({k2: v.as_subclass(torch.Tensor) for k2, v in target.items()})
    return images, targets
