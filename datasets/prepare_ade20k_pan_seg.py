#!/usr/bin/env python
"""ADE20K panoptic annotations (150 categories: 100 things, 50 stuff) for Mask2Former.

    DETECTRON2_DATASETS=/path/to/datasets python datasets/prepare_ade20k_pan_seg.py

Reads, under ``ADEChallengeData2016/``: ``images/{training,validation}/*.jpg``, the semantic annotations
``annotations/{training,validation}/*.png`` (0 "other", 1..150) and the instance annotations of the ADE20K
instance challenge ``annotations_instance/{training,validation}/*.png`` (red: instance category 1..100, green:
instance id; download them from the ADE20K challenge site). Writes:

- ``ade20k_panoptic_{train,val}/*.png`` and ``ade20k_panoptic_{train,val}.json``: COCO panoptic format, category
  ids 0..149 (the semantic classes in ADE order, ``isthing`` for the 100 instance classes); one segment per
  instance, one per stuff class present; "other" and thing pixels without an instance are VOID;
- ``ade20k_instance_{train,val}.json``: the instances in COCO format (RLE masks, the same category ids), for
  the mask AP of the panoptic evaluation.

The semantic labels the evaluation also reads (``annotations_detectron2``) come from
``datasets/prepare_ade20k_sem_seg.py`` (labels - 1, "other" -> 255).
"""
import argparse
import glob
import json
import os
import sys
import time
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from focalnet_det.data.datasets.panoptic_utils import id2rgb
from focalnet_det.data.datasets.register_ade20k_panoptic import ADE20K_150_CATEGORIES, ADE20K_150_THING_IDS
from focalnet_det.fileio import atomic_open, atomic_path

SPLITS = (("val", "validation"), ("train", "training"))


def _box(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def convert_image(semantic, instance):
    """semantic (H, W) 0..150, instance (H, W, 3) -> (segment ids (H, W), [(segment id, category, mask, isthing)])."""
    cat_ids, ins_ids = instance[..., 0].astype(np.int64), instance[..., 1].astype(np.int64)
    ids = np.zeros(semantic.shape, np.int64)
    segments = []
    for ins in np.unique(ins_ids):
        if ins == 0:
            continue
        mask = (ins_ids == ins) & (cat_ids > 0)
        if not mask.any():
            continue
        category = Counter(cat_ids[mask].tolist()).most_common(1)[0][0]  # one per instance in the annotations
        if not 1 <= category <= len(ADE20K_150_THING_IDS):
            raise ValueError(f"instance category {category} outside 1..{len(ADE20K_150_THING_IDS)}")
        segments.append((len(segments) + 1, ADE20K_150_THING_IDS[category - 1], mask, True))
        ids[mask] = len(segments)
    for label in np.unique(semantic):
        if label == 0 or ADE20K_150_CATEGORIES[label - 1]["isthing"]:
            continue
        mask = (semantic == label) & (ids == 0)
        if mask.any():
            segments.append((len(segments) + 1, int(label) - 1, mask, False))
            ids[mask] = len(segments)
    return ids, segments


def convert_split(root, name, dirname):
    image_dir = os.path.join(root, "images", dirname)
    semantic_dir = os.path.join(root, "annotations", dirname)
    instance_dir = os.path.join(root, "annotations_instance", dirname)
    out_dir = os.path.join(root, f"ade20k_panoptic_{name}")
    os.makedirs(out_dir, exist_ok=True)
    files = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    if not files:
        raise FileNotFoundError(f"no images in {image_dir}")
    images, pan_annotations, ins_annotations = [], [], []
    for k, path in enumerate(files):
        stem = os.path.splitext(os.path.basename(path))[0]
        semantic = np.asarray(Image.open(os.path.join(semantic_dir, stem + ".png")))
        instance = np.asarray(Image.open(os.path.join(instance_dir, stem + ".png")).convert("RGB"))
        h, w = semantic.shape
        images.append({"id": stem, "file_name": stem + ".jpg", "width": w, "height": h})
        ids, segments = convert_image(semantic, instance)
        with atomic_path(os.path.join(out_dir, stem + ".png")) as tmp:  # whole or not at all
            Image.fromarray(id2rgb(ids)).save(tmp)
        info = []
        for seg_id, category, mask, isthing in segments:
            area = int(mask.sum())
            info.append({"id": seg_id, "category_id": category, "area": area, "bbox": _box(mask), "iscrowd": 0})
            if isthing:
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                ins_annotations.append({"id": len(ins_annotations) + 1, "image_id": stem, "category_id": category,
                                        "segmentation": rle, "area": area, "bbox": _box(mask), "iscrowd": 0})
        pan_annotations.append({"image_id": stem, "file_name": stem + ".png", "segments_info": info})
        if (k + 1) % 1000 == 0:
            print(f"  {name}: {k + 1}/{len(files)}")
    categories = [dict(c) for c in ADE20K_150_CATEGORIES]
    with atomic_open(os.path.join(root, f"ade20k_panoptic_{name}.json"), "w") as f:
        json.dump({"images": images, "annotations": pan_annotations, "categories": categories}, f)
    with atomic_open(os.path.join(root, f"ade20k_instance_{name}.json"), "w") as f:
        json.dump({"images": images, "annotations": ins_annotations,
                   "categories": [c for c in categories if c["isthing"]]}, f)
    return len(files)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                   help="folder holding ADEChallengeData2016/ (default: $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--splits", nargs="+", default=["val", "train"], choices=["val", "train"])
    args = p.parse_args(argv)
    root = os.path.join(args.root, "ADEChallengeData2016")
    for name, dirname in SPLITS:
        if name not in args.splits:
            continue
        start = time.time()
        try:
            n = convert_split(root, name, dirname)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{name}: {n} images -> {root}/ade20k_panoptic_{name}[.json], ade20k_instance_{name}.json "
              f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
