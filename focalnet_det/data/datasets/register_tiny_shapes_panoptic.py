"""The built-in tiny panoptic dataset: ``tiny_shapes_panoptic_{train,val}``, made from ``tiny_shapes``.

Things are the shapes (circle, square, triangle: the instance masks of ``tiny_shapes``); stuff is the
background, split by brightness into "dark background" and "light background" regions (luminance of the
background smoothed over ~8 px, threshold 116, regions under 64 px merged into the other class). Every
pixel is labelled. Written on first use (like ``tiny_shapes``, which it reads), next to it in
``$FOCALNET_DET_CACHE``::

    <tiny_shapes folder>_panoptic_v1/
        panoptic_{train,val}/*.png            (COCO panoptic PNGs)
        annotations/panoptic_{train,val}.json
        panoptic_semseg_{train,val}/*.png     (semantic labels 0..4, from the panoptic ones)

Category ids: 1-3 the shapes (as in ``tiny_shapes``' instance json, used for mask AP), 4-5 the stuff;
contiguous ids 0..4. ``evaluator_type: coco_panoptic_seg`` (PQ, mask AP, mIoU), as COCO panoptic.
"""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from .tiny_shapes import TINY_SHAPES_CLASSES, ensure_tiny_shapes, register_lazily, tiny_shapes_root, write_once
from .panoptic_utils import id2rgb, load_panoptic_json, panoptic_metadata, write_semantic_from_panoptic

__all__ = [
    "TINY_PANOPTIC_CATEGORIES",
    "make_panoptic_from_instances",
    "tiny_shapes_panoptic_root",
    "ensure_tiny_shapes_panoptic",
    "register_tiny_shapes_panoptic",
]

VERSION = 1
_COLORS = [(220, 20, 60), (0, 114, 230), (255, 190, 0)]
TINY_PANOPTIC_CATEGORIES = [
    {"id": k + 1, "name": name, "isthing": 1, "color": list(_COLORS[k % 3])} for k, name in enumerate(TINY_SHAPES_CLASSES)
] + [
    {"id": len(TINY_SHAPES_CLASSES) + 1, "name": "dark background", "isthing": 0, "color": [80, 80, 80]},
    {"id": len(TINY_SHAPES_CLASSES) + 2, "name": "light background", "isthing": 0, "color": [190, 190, 160]},
]
DARK, LIGHT = TINY_PANOPTIC_CATEGORIES[-2]["id"], TINY_PANOPTIC_CATEGORIES[-1]["id"]
SPLITS = {"tiny_shapes_panoptic_train": "train", "tiny_shapes_panoptic_val": "val"}
BRIGHTNESS_THRESHOLD = 116.0
SMOOTHING_SIGMA = 8.0
MIN_STUFF_AREA = 64


def _stuff_labels(image_rgb, background):
    """Per background pixel DARK or LIGHT (0 elsewhere): smoothed background luminance vs the threshold."""
    lum = image_rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    bg = background.astype(np.float32)
    # normalised convolution: the shapes do not bleed into the background's brightness
    num = cv2.GaussianBlur(lum * bg, (0, 0), SMOOTHING_SIGMA)
    den = cv2.GaussianBlur(bg, (0, 0), SMOOTHING_SIGMA)
    light = num > BRIGHTNESS_THRESHOLD * np.maximum(den, 1e-6)
    labels = np.where(light, LIGHT, DARK) * background
    for cat, other in ((DARK, LIGHT), (LIGHT, DARK)):  # small islands join the class around them
        n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == cat).astype(np.uint8), connectivity=4)
        for c in range(1, n):
            if stats[c, cv2.CC_STAT_AREA] < MIN_STUFF_AREA:
                labels[comp == c] = other
    return labels


def make_panoptic_from_instances(instances_json, image_dir, out_root, split):
    """From a tiny-shapes split (instance json + images) write ``out_root``'s panoptic PNGs, json and semantic PNGs."""
    out_root = Path(out_root)
    with open(instances_json) as f:
        coco = json.load(f)
    anns_by_image = {}
    for a in coco["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    pan_dir = out_root / f"panoptic_{split}"
    pan_dir.mkdir(parents=True, exist_ok=True)
    annotations = []
    for img in coco["images"]:
        h, w = img["height"], img["width"]
        image = np.asarray(Image.open(os.path.join(image_dir, img["file_name"])).convert("RGB"))
        ids = np.zeros((h, w), np.int64)
        segments = []
        for k, a in enumerate(anns_by_image.get(img["id"], [])):
            mask = mask_util.decode(a["segmentation"]).astype(bool) & (ids == 0)
            if mask.any():
                ids[mask] = k + 1
                segments.append((k + 1, a["category_id"], mask))
        stuff = _stuff_labels(image, ids == 0)
        for cat in (DARK, LIGHT):
            mask = stuff == cat
            if mask.any():
                ids[mask] = 1000 + cat
                segments.append((1000 + cat, cat, mask))
        png = os.path.splitext(img["file_name"])[0] + ".png"
        Image.fromarray(id2rgb(ids)).save(pan_dir / png)
        info = []
        for seg_id, cat, mask in segments:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            info.append({"id": int(seg_id), "category_id": int(cat), "area": int(mask.sum()),
                         "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": 0})
        annotations.append({"image_id": img["id"], "file_name": png, "segments_info": info})
    panoptic = {
        "info": {"description": f"tiny_shapes panoptic {split} (focalnet_det v{VERSION}) from {instances_json}"},
        "images": coco["images"],
        "annotations": annotations,
        "categories": TINY_PANOPTIC_CATEGORIES,
    }
    (out_root / "annotations").mkdir(parents=True, exist_ok=True)
    json_path = out_root / "annotations" / f"panoptic_{split}.json"
    with open(json_path, "w") as f:
        json.dump(panoptic, f)
    write_semantic_from_panoptic(json_path, pan_dir, out_root / f"panoptic_semseg_{split}", TINY_PANOPTIC_CATEGORIES)
    return json_path


def tiny_shapes_panoptic_root():
    """Where the registered panoptic datasets live (nothing is written)."""
    base = tiny_shapes_root()
    return base.parent / f"{base.name}_panoptic_v{VERSION}"


def ensure_tiny_shapes_panoptic():
    """Generate the shapes (if needed) and their panoptic version (if missing); safe when processes race."""
    shapes = ensure_tiny_shapes()

    def write(folder):
        for split in ("train", "val"):
            make_panoptic_from_instances(shapes / "annotations" / f"instances_{split}.json", shapes / split, folder, split)

    return write_once(tiny_shapes_panoptic_root(), "annotations/panoptic_val.json", write)


class _TinyPanopticMetadata(Metadata):
    """Paths that generate the data on first access (evaluators read them)."""

    @property
    def panoptic_root(self):
        return str(ensure_tiny_shapes_panoptic() / f"panoptic_{SPLITS[self.name]}")

    @property
    def panoptic_json(self):
        return str(ensure_tiny_shapes_panoptic() / "annotations" / f"panoptic_{SPLITS[self.name]}.json")

    @property
    def sem_seg_root(self):
        return str(ensure_tiny_shapes_panoptic() / f"panoptic_semseg_{SPLITS[self.name]}")

    @property
    def image_root(self):
        return str(ensure_tiny_shapes() / SPLITS[self.name])

    @property
    def json_file(self):  # tiny_shapes' instance json: mask AP of the things
        return str(ensure_tiny_shapes() / "annotations" / f"instances_{SPLITS[self.name]}.json")


def _load(name):
    meta = MetadataCatalog.get(name)
    return load_panoptic_json(meta.panoptic_json, meta.image_root, meta.panoptic_root, panoptic_metadata(TINY_PANOPTIC_CATEGORIES),
                              sem_seg_dir=meta.sem_seg_root)


def register_tiny_shapes_panoptic():
    """Register ``tiny_shapes_panoptic_train`` / ``_val`` (idempotent; writes nothing)."""
    register_lazily(SPLITS, _load, _TinyPanopticMetadata, evaluator_type="coco_panoptic_seg", ignore_label=255,
                    label_divisor=1000, **panoptic_metadata(TINY_PANOPTIC_CATEGORIES))
