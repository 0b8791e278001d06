"""Reading COCO-format panoptic annotations (any image extension), and semantic labels made from them."""
import json
import os

import numpy as np
from PIL import Image

from ...fileio import atomic_path

__all__ = ["panoptic_metadata", "load_panoptic_json", "panoptic_to_semantic", "write_semantic_from_panoptic", "id2rgb", "rgb2id"]


def rgb2id(color):
    """Panoptic PNG (H, W, 3) -> segment ids: R + 256 G + 256^2 B."""
    color = np.asarray(color, dtype=np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids):
    """Segment ids (H, W) -> (H, W, 3) uint8, the inverse of :func:`rgb2id`."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 // 256 % 256], -1).astype(np.uint8)


def panoptic_metadata(categories):
    """Classes, colours and id maps of COCO-format panoptic ``categories`` (``id``, ``name``, ``isthing``,
    ``color``): things -> their contiguous id among all categories; the stuff map covers every category
    (what the semantic evaluator reads)."""
    return {
        "thing_classes": [c["name"] for c in categories if c["isthing"]],
        "thing_colors": [c["color"] for c in categories if c["isthing"]],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": [c["color"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def load_panoptic_json(json_file, image_dir, gt_dir, meta, sem_seg_dir=None):
    """COCO panoptic json -> Detectron2 dataset dicts.

    Each dict: ``file_name`` (the json's image file name under ``image_dir``), ``image_id``, ``height``, ``width``,
    ``pan_seg_file_name``, ``segments_info`` with contiguous ``category_id`` and ``isthing`` (from ``meta``'s
    ``thing_dataset_id_to_contiguous_id`` / ``stuff_dataset_id_to_contiguous_id``), and ``sem_seg_file_name``
    (``sem_seg_dir/<panoptic png name>``) if ``sem_seg_dir`` is given.
    """
    with open(json_file) as f:
        data = json.load(f)
    images = {img["id"]: img for img in data["images"]}
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    dicts = []
    for ann in data["annotations"]:
        img = images[ann["image_id"]]
        segments = []
        for s in ann["segments_info"]:
            s = dict(s)
            if s["category_id"] in things:
                s["category_id"], s["isthing"] = things[s["category_id"]], True
            else:
                s["category_id"], s["isthing"] = stuff[s["category_id"]], False
            segments.append(s)
        record = {
            "file_name": os.path.join(image_dir, img["file_name"]),
            "image_id": ann["image_id"],
            "height": img.get("height"),
            "width": img.get("width"),
            "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
            "segments_info": segments,
        }
        if sem_seg_dir is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_dir, ann["file_name"])
        dicts.append({k: v for k, v in record.items() if v is not None})
    if not dicts:
        raise ValueError(f"no annotations in {json_file}")
    return dicts


def panoptic_to_semantic(pan_ids, segments_info, category_map, ignore_label=255):
    """Segment ids (H, W) -> uint8 semantic labels: every segment (crowd ones included: they are of their
    class, only not one instance) gets its category through ``category_map`` (dataset id -> contiguous id);
    pixels in no segment get ``ignore_label``."""
    sem = np.full(pan_ids.shape, ignore_label, dtype=np.uint8)
    for s in segments_info:
        sem[pan_ids == s["id"]] = category_map[s["category_id"]]
    return sem


def write_semantic_from_panoptic(panoptic_json, panoptic_root, sem_seg_root, categories, ignore_label=255,
                                 processes=1):
    """Write one semantic PNG per panoptic annotation (same file name) under ``sem_seg_root``: category ``i`` of
    ``categories`` (the json's list, in order) becomes label ``i``, unlabelled pixels ``ignore_label``."""
    with open(panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    category_map = {c["id"]: i for i, c in enumerate(categories)}
    os.makedirs(sem_seg_root, exist_ok=True)
    jobs = [(os.path.join(panoptic_root, a["file_name"]), a["segments_info"], os.path.join(sem_seg_root, a["file_name"]),
             category_map, ignore_label) for a in annotations]
    if processes > 1:
        import multiprocessing

        with multiprocessing.Pool(processes) as pool:
            pool.starmap(_convert_one, jobs, chunksize=64)
    else:
        for job in jobs:
            _convert_one(*job)
    return len(jobs)


def _convert_one(pan_path, segments_info, out_path, category_map, ignore_label):
    pan_ids = rgb2id(np.asarray(Image.open(pan_path).convert("RGB")))
    with atomic_path(out_path) as tmp:  # a killed conversion leaves no half PNG for training to read
        Image.fromarray(panoptic_to_semantic(pan_ids, segments_info, category_map, ignore_label)).save(tmp, format="PNG")
