#!/usr/bin/env python
"""Check Objects365 v2 for ``objects365_v2_{train,val}`` (configs/COCO-Detection/dino_*_objects365.yaml).

Expects, under ``$DETECTRON2_DATASETS`` (default ``./datasets``) or ``--root``::

    objects365/annotations/zhiyuan_objv2_train.json    objects365/train/<file_name of each image>
    objects365/annotations/zhiyuan_objv2_val.json      objects365/val/<file_name of each image>

(the COCO-format json files of the official release; image ``file_name``s are relative to ``train/`` and
``val/``). Checks that both json files exist and parse, that the categories are ids 1..365 (the registered
metadata maps them to contiguous ids 0..364), and that the images exist (``--sample N`` of them per split,
0 = all). Prints what is there, or names what is missing and exits 1. Nothing is written.

    python datasets/prepare_objects365.py [--root DIR] [--sample N]
"""
import argparse
import json
import os
import random
import sys
from pathlib import Path

SPLITS = {
    "train": ("objects365/annotations/zhiyuan_objv2_train.json", "objects365/train"),
    "val": ("objects365/annotations/zhiyuan_objv2_val.json", "objects365/val"),
}
NUM_CLASSES = 365


def check(root, sample=1000, seed=0):
    """A list of problems (empty when the data is complete), and a summary line per split."""
    root = Path(root)
    problems, summary = [], []
    for split, (json_rel, image_rel) in SPLITS.items():
        json_file, image_root = root / json_rel, root / image_rel
        if not json_file.is_file():
            problems.append(f"missing {json_file}")
            continue
        try:
            with open(json_file) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f"cannot read {json_file}: {e}")
            continue
        for key in ("images", "annotations", "categories"):
            if key not in data:
                problems.append(f"{json_file} has no '{key}' (not a COCO-format json)")
        if problems and problems[-1].startswith(str(json_file)):
            continue
        ids = sorted(c["id"] for c in data["categories"])
        if ids != list(range(1, NUM_CLASSES + 1)):
            problems.append(f"{json_file}: category ids are not 1..{NUM_CLASSES} "
                            f"({len(ids)} categories, ids {ids[:3]}...{ids[-3:]})")
        if not image_root.is_dir():
            problems.append(f"missing image folder {image_root}")
            continue
        images = data["images"]
        checked = images if sample <= 0 or sample >= len(images) else random.Random(seed).sample(images, sample)
        absent = [im["file_name"] for im in checked if not (image_root / im["file_name"]).is_file()]
        if absent:
            problems.append(f"{len(absent)} of {len(checked)} checked images of {split} are missing under {image_root}, "
                            f"e.g. {absent[0]}")
        summary.append(f"{split}: {len(images)} images, {len(data['annotations'])} boxes, {len(ids)} categories "
                       f"({len(checked)} images checked)")
    return problems, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                        help="folder holding objects365/ (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--sample", type=int, default=1000, help="images checked per split (0: all)")
    args = parser.parse_args(argv)
    problems, summary = check(args.root, args.sample)
    for line in summary:
        print(line)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
