"""Checks of a dataset's files before any process starts: one UserError naming the file and the first offending
entry, or a warning for what training drops by itself (boxes without area).

One pass over the JSON (parsed once; its categories kept for the registration's class names) and one directory
listing per image folder, not one file-system call per image: a 100k-image COCO file is checked in seconds.
"""
import logging
import os
from collections import defaultdict

import numpy as np
from PIL import Image

from ...errors import UserError
from .register_own import REGISTERED_FROM, coco_categories, panoptic_categories, image_extension, read_json

__all__ = ["check_registered_files", "check_coco_file", "check_panoptic_file", "check_sem_seg_files"]

logger = logging.getLogger(__name__)

_FIRST = 3  # how many offending entries a message names
MAX_LABEL_FILES = 1000  # label PNGs read by the semantic check (evenly spread over the dataset beyond that)


def _entry_list(data, key, json_file, required=True):
    entries = data.get(key, [] if not required else None)
    if not isinstance(entries, list):
        raise UserError(f"{json_file}: no {key!r} list" if entries is None else f"{json_file}: {key!r} is not a list")
    return entries


def _images(data, json_file):
    """image id -> image entry; each entry needs ``id`` and ``file_name``, ids unique."""
    images = {}
    for i, img in enumerate(_entry_list(data, "images", json_file)):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise UserError(f"{json_file}: images[{i}] needs 'id' and 'file_name': {str(img)[:120]}")
        if img["id"] in images:
            raise UserError(f"{json_file}: images[{i}] repeats image id {img['id']!r}")
        images[img["id"]] = img
    return images


def _missing_files(root, names):
    """The names (relative paths) that are not files under ``root``, by one listing per folder."""
    by_folder = defaultdict(list)
    for name in names:
        folder, base = os.path.split(name)
        by_folder[folder].append(base)
    missing = []
    for folder, bases in by_folder.items():
        try:
            present = set(os.listdir(os.path.join(root, folder)))
        except OSError:
            present = set()
        missing.extend(os.path.join(folder, b) for b in bases if b not in present)
    return missing


def _check_present(root, names, json_file, what, flag_dir):
    missing = _missing_files(root, names)
    if missing:
        raise UserError(f"{json_file}: {len(missing)} of {len(names)} {what} are missing under {flag_dir} {root}: "
                        f"{', '.join(missing[:_FIRST])}{', ...' if len(missing) > _FIRST else ''}")


def check_coco_file(json_file, image_root, name="dataset"):
    """A COCO instances file: readable JSON, images and categories, every annotation's ``image_id`` and
    ``category_id`` known, every image on disk; boxes of zero or negative size counted (training drops them)."""
    data = read_json(json_file)
    images = _images(data, json_file)
    category_ids = {c["id"] for c in coco_categories(json_file, data)}
    degenerate = []
    for i, ann in enumerate(_entry_list(data, "annotations", json_file, required=False)):
        if not isinstance(ann, dict):
            raise UserError(f"{json_file}: annotations[{i}] is not an object: {str(ann)[:120]}")
        where = f"annotations[{i}] (id {ann.get('id')!r})"
        if ann.get("image_id") not in images:
            raise UserError(f"{json_file}: {where} has image_id {ann.get('image_id')!r}, which is not in 'images'")
        if ann.get("category_id") not in category_ids:
            raise UserError(f"{json_file}: {where} has category_id {ann.get('category_id')!r}, which is not in "
                            f"'categories' (ids {sorted(category_ids)[:10]}{' ...' if len(category_ids) > 10 else ''})")
        box = ann.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise UserError(f"{json_file}: {where} needs 'bbox' [x, y, width, height], has {box!r}")
        if box[2] <= 0 or box[3] <= 0:
            degenerate.append(ann.get("id"))
    if degenerate:
        logger.warning(f"{json_file}: {len(degenerate)} annotations have a box of zero or negative size (ids "
                       f"{', '.join(map(str, degenerate[:_FIRST]))}{', ...' if len(degenerate) > _FIRST else ''}); "
                       f"they are dropped when {name} is loaded")
    _check_present(image_root, [img["file_name"] for img in images.values()], json_file, "images", "IMAGE_DIR")


def check_panoptic_file(json_file, png_root, image_root):
    """A COCO panoptic file: readable JSON, categories with ``isthing``, every annotation's ``image_id`` and
    segments' ``category_id`` known (and the segment fields the PQ evaluation reads), every image and panoptic
    PNG on disk."""
    data = read_json(json_file)
    images = _images(data, json_file)
    category_ids = {c["id"] for c in panoptic_categories(json_file, data)}
    pngs = []
    for i, ann in enumerate(_entry_list(data, "annotations", json_file)):
        if not isinstance(ann, dict) or "file_name" not in ann or not isinstance(ann.get("segments_info"), list):
            raise UserError(f"{json_file}: annotations[{i}] needs 'image_id', 'file_name' and 'segments_info'")
        if ann.get("image_id") not in images:
            raise UserError(f"{json_file}: annotations[{i}] ({ann['file_name']}) has image_id {ann.get('image_id')!r}, "
                            f"which is not in 'images'")
        for s in ann["segments_info"]:
            lacking = [k for k in ("id", "category_id", "area", "iscrowd") if k not in s]
            if lacking:
                raise UserError(f"{json_file}: annotations[{i}] ({ann['file_name']}) segment {s.get('id')!r} lacks "
                                f"{', '.join(map(repr, lacking))} (panopticapi reads id, category_id, area, iscrowd)")
            if s.get("category_id") not in category_ids:
                raise UserError(f"{json_file}: annotations[{i}] ({ann['file_name']}) segment {s.get('id')!r} has "
                                f"category_id {s.get('category_id')!r}, which is not in 'categories'")
        pngs.append(ann["file_name"])
    _check_present(image_root, [images[i]["file_name"] for i in images], json_file, "images", "IMAGE_DIR")
    _check_present(png_root, pngs, json_file, "panoptic PNGs", "PNG_DIR")


def check_sem_seg_files(image_root, label_root, classes, ignore_label, name="dataset"):
    """Image + label-PNG pairs: some pairs match by stem; labels are single-channel class indices below the
    number of classes (or the ignore label). At most ``MAX_LABEL_FILES`` label files are read."""
    stems = {os.path.splitext(f)[0] for f in os.listdir(image_root) if f.endswith(image_extension(image_root))}
    labels = sorted(f for f in os.listdir(label_root) if f.endswith(".png"))
    paired = [f for f in labels if os.path.splitext(f)[0] in stems]
    if not paired:
        raise UserError(f"{name}: no label PNG in {label_root} has the file stem of an image in {image_root}")
    unpaired = len(stems) - len(paired)
    if unpaired:
        logger.warning(f"{name}: {unpaired} images in {image_root} have no label PNG in {label_root}; they are skipped")
    step = max(1, len(paired) // MAX_LABEL_FILES)
    sample = paired[::step]
    for f in sample:
        path = os.path.join(label_root, f)
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"{path}: a {im.mode} image; label PNGs hold one class index per pixel "
                                f"(mode L or P), not colours")
            labels_ = np.asarray(im)
        values = labels_[labels_ != ignore_label]
        if values.size and int(values.max()) >= len(classes):
            raise UserError(f"{path}: label {int(values.max())} is not a class: {name} has {len(classes)} classes "
                            f"(0..{len(classes) - 1}), ignore label {ignore_label}")
    if len(sample) < len(paired):
        logger.info(f"{name}: label values checked in {len(sample)} of {len(paired)} label PNGs")


def check_registered_files(name, metadata):
    """The checks above for a dataset registered from files (``register_own``); nothing for others."""
    if metadata.get(REGISTERED_FROM, None) is None:
        return
    evaluator_type = metadata.get("evaluator_type")
    if evaluator_type == "coco":
        check_coco_file(metadata.json_file, metadata.image_root, name)
    elif evaluator_type == "coco_panoptic_seg":
        check_panoptic_file(metadata.panoptic_json, metadata.panoptic_root, metadata.image_root)
    elif evaluator_type == "sem_seg":
        check_sem_seg_files(metadata.image_root, metadata.sem_seg_root, metadata.stuff_classes, metadata.ignore_label,
                            name)
