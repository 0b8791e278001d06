#!/usr/bin/env python
"""Semantic labels made from COCO panoptic annotations, for the mIoU of the Mask2Former COCO panoptic evaluation.

    DETECTRON2_DATASETS=/path/to/datasets python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py

Reads ``coco/annotations/panoptic_{train,val}2017.json`` and ``coco/panoptic_{train,val}2017/*.png`` and writes
``coco/panoptic_semseg_{train,val}2017/*.png``: every segment (crowd ones too) labelled with its category as
0..132 (the 133 categories in Detectron2's ``COCO_CATEGORIES`` order, the contiguous ids of training), pixels in
no segment 255. Unlike Detectron2's ``prepare_panoptic_fpn.py`` things keep their own classes. Only the
evaluation (``coco_2017_val_panoptic_with_sem_seg``) reads them.
"""
import argparse
import json
import os
import sys
import time

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from focalnet_det.data.datasets.panoptic_utils import write_semantic_from_panoptic


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                   help="folder holding coco/ (default: $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--splits", nargs="+", default=["val2017", "train2017"])
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    coco = os.path.join(args.root, "coco")
    for split in args.splits:
        panoptic_json = os.path.join(coco, "annotations", f"panoptic_{split}.json")
        panoptic_root = os.path.join(coco, f"panoptic_{split}")
        out = os.path.join(coco, f"panoptic_semseg_{split}")
        if not os.path.isfile(panoptic_json):
            print(f"error: {panoptic_json} not found", file=sys.stderr)
            return 2
        with open(panoptic_json) as f:
            ids = [c["id"] for c in json.load(f)["categories"]]
        unknown = sorted(set(ids) - {c["id"] for c in COCO_CATEGORIES})
        if unknown:
            print(f"error: {panoptic_json}: categories {unknown} are not COCO panoptic's", file=sys.stderr)
            return 2
        start = time.time()
        n = write_semantic_from_panoptic(panoptic_json, panoptic_root, out, COCO_CATEGORIES, processes=args.processes)
        print(f"{split}: {n} semantic labels in {out} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
