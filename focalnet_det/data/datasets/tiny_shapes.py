"""The built-in tiny dataset: coloured shapes on textured backgrounds, in COCO instance format.

``generate_tiny_shapes(DIR)`` writes, deterministically for a given seed::

    DIR/train/000000.png ...   DIR/val/000000.png ...
    DIR/annotations/instances_train.json   DIR/annotations/instances_val.json

Shapes are drawn one over another; each annotation's mask is the *visible* part of its shape
(compressed RLE, so train with ``INPUT.MASK_FORMAT bitmask``); a placement that would hide more
than half of an earlier shape is redrawn elsewhere.

``register_tiny_shapes()`` (run on ``import focalnet_det``) registers ``tiny_shapes_train`` and
``tiny_shapes_val``. Nothing is written on import: the data is generated on first use (loading the
dataset, or reading ``json_file`` / ``image_root`` from its metadata, as COCOEvaluator does) into
``$FOCALNET_DET_CACHE`` (default ``~/.cache/focalnet_det``), in a folder named after the generator
version and parameters, so a changed generator regenerates.
"""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json

from ...errors import UserError

__all__ = [
    "TINY_SHAPES_CLASSES",
    "TINY_SHAPES_DEFAULTS",
    "generate_tiny_shapes",
    "tiny_shapes_root",
    "ensure_tiny_shapes",
    "register_tiny_shapes",
]

GENERATOR_VERSION = 1
TINY_SHAPES_CLASSES = ("circle", "square", "triangle")
# What the registered datasets are generated with (bump GENERATOR_VERSION when drawing changes).
TINY_SHAPES_DEFAULTS = dict(
    num_train=300, num_val=50, seed=0, image_size=160, max_objects=5, min_size=18, max_size=56, min_visible=0.5
)
SPLITS = {"tiny_shapes_train": "train", "tiny_shapes_val": "val"}


def _background(rng, size):
    """A smooth random colour field, plus stripes or blobs, plus pixel noise."""
    low = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC) * 0.6 + 40
    if rng.random() < 0.5:  # stripes
        period, angle = rng.uniform(6, 24), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[:size, :size]
        img += 25 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)[..., None]
    img += rng.normal(0, 12, size=img.shape)
    return img


def _shape_mask(rng, cls, size, image_size):
    """A filled shape of class ``cls`` with extent ~``size`` px at a random place and angle."""
    mask = np.zeros((image_size, image_size), np.uint8)
    cx, cy = rng.uniform(size / 2, image_size - size / 2, size=2)
    r, angle = size / 2, rng.uniform(0, 2 * np.pi)
    if cls == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1, lineType=cv2.LINE_8)
        return mask
    n = 4 if cls == "square" else 3
    rad = r * (0.85 if n == 4 else 1.0)  # similar areas
    angles = angle + np.arange(n) * 2 * np.pi / n
    pts = np.stack([cx + rad * np.cos(angles), cy + rad * np.sin(angles)], 1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask


def _make_image(rng, image_size, max_objects, min_size, max_size, min_visible):
    """Returns an HxWx3 uint8 BGR image and a list of (class index, visible mask)."""
    img = _background(rng, image_size)
    owner = np.full((image_size, image_size), -1, np.int32)  # which object each pixel shows
    objects = []  # (class index, full area)
    for _ in range(rng.integers(1, max_objects + 1)):
        for _attempt in range(20):
            cls = int(rng.integers(len(TINY_SHAPES_CLASSES)))
            mask = _shape_mask(rng, TINY_SHAPES_CLASSES[cls], rng.uniform(min_size, max_size), image_size).astype(bool)
            hidden = np.bincount(owner[mask & (owner >= 0)], minlength=len(objects))
            visible = np.bincount(owner[owner >= 0], minlength=len(objects)) - hidden
            if all(v >= min_visible * area for v, (_, area) in zip(visible, objects)):
                break
        else:
            continue
        colour = rng.uniform(0, 255, size=3)
        while np.abs(colour - img[mask].mean(0)).sum() < 120:  # keep it distinguishable from what it covers
            colour = rng.uniform(0, 255, size=3)
        shade = np.linspace(-20, 20, image_size)[None, :, None] * rng.choice([-1, 1])
        img = np.where(mask[..., None], colour + shade + rng.normal(0, 6, size=img.shape), img)
        owner[mask] = len(objects)
        objects.append((cls, int(mask.sum())))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, [(cls, owner == k) for k, (cls, _) in enumerate(objects)]


def _write_split(root, split, num_images, seed, **params):
    os.makedirs(root / split, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        img, objects = _make_image(rng, **params)
        file_name = f"{i:06d}.png"
        cv2.imwrite(str(root / split / file_name), img)
        images.append({"id": i + 1, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]})
        for cls, mask in objects:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": cls + 1,
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            })
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(TINY_SHAPES_CLASSES)]
    coco = {
        "info": {"description": f"tiny_shapes {split} (focalnet_det generator v{GENERATOR_VERSION}, seed {seed})"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    os.makedirs(root / "annotations", exist_ok=True)
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(coco, f)


def generate_tiny_shapes(output_dir, num_train=300, num_val=50, seed=0, image_size=160, max_objects=5,
                         min_size=18, max_size=56, min_visible=0.5):
    """Write the dataset (both splits) under ``output_dir``; returns it as a ``Path``.

    Images are ``image_size`` px squares with 1..``max_objects`` shapes of ``min_size``..``max_size`` px;
    a shape is placed only where every earlier one keeps ``min_visible`` of its area visible."""
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise UserError(f"need a positive number of images (num_train={num_train}, num_val={num_val})")
    if max_objects < 1:
        raise UserError(f"max_objects must be >= 1, got {max_objects}")
    if not 0 <= min_visible <= 1:
        raise UserError(f"min_visible must be in [0, 1], got {min_visible}")
    if not 2 <= min_size <= max_size <= image_size:
        raise UserError(f"need 2 <= min_size <= max_size <= image_size, got {min_size}, {max_size}, {image_size}")
    root = Path(output_dir)
    for split, n in (("train", num_train), ("val", num_val)):
        _write_split(root, split, n, seed, image_size=image_size, max_objects=max_objects, min_size=min_size,
                     max_size=max_size, min_visible=min_visible)
    return root


def tiny_shapes_root():
    """Where the registered datasets live (computed from the environment; nothing is written)."""
    cache = Path(os.environ.get("FOCALNET_DET_CACHE") or Path.home() / ".cache" / "focalnet_det")
    params = json.dumps(TINY_SHAPES_DEFAULTS, sort_keys=True).encode()
    return cache / f"tiny_shapes_v{GENERATOR_VERSION}_{hashlib.sha1(params).hexdigest()[:8]}"


def write_once(root, marker, write):
    """``root``, written by ``write(folder)`` into a temporary folder renamed to ``root`` unless ``root/marker``
    exists: the rename is atomic, so when several processes race, the first wins and the others use its data."""
    root = Path(root)
    if (root / marker).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
    try:
        write(tmp)
        os.rename(tmp, root)  # fails if another process finished first
    except OSError:
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_tiny_shapes():
    """Generate the registered datasets if missing; safe when several processes race."""
    return write_once(tiny_shapes_root(), "annotations/instances_val.json",
                      lambda folder: generate_tiny_shapes(folder, **TINY_SHAPES_DEFAULTS))


class _TinyShapesMetadata(Metadata):
    """Metadata whose ``json_file`` / ``image_root`` generate the data on first access."""

    @property
    def json_file(self):
        return str(ensure_tiny_shapes() / "annotations" / f"instances_{SPLITS[self.name]}.json")

    @property
    def image_root(self):
        return str(ensure_tiny_shapes() / SPLITS[self.name])


def _load(name):
    meta = MetadataCatalog.get(name)
    return load_coco_json(meta.json_file, meta.image_root, name)


def register_lazily(names, load, metadata_cls, **metadata):
    """Register each dataset of ``names`` (idempotent; writes nothing): ``load(name)`` gives its dicts, an
    instance of ``metadata_cls`` (whose folder properties generate the data on first access) its metadata."""
    for name in names:
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: load(name))
        MetadataCatalog[name] = metadata_cls(name=name).set(**metadata)


def register_tiny_shapes():
    """Register ``tiny_shapes_train`` / ``tiny_shapes_val`` (idempotent; writes nothing)."""
    register_lazily(
        SPLITS, _load, _TinyShapesMetadata,
        thing_classes=list(TINY_SHAPES_CLASSES),
        thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(TINY_SHAPES_CLASSES))},
        evaluator_type="coco",
    )
