#!/usr/bin/env python
"""Prepare ADE20K (SceneParsing, ADEChallengeData2016) for Detectron2's builtin ``ade20k_sem_seg_{train,val}``.

Expects the official release unpacked under ``$DETECTRON2_DATASETS`` (default ``./datasets``)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations/{training,validation}/*.png     # 0 = "other", 1..150 = classes

and writes ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png`` with every label shifted
down by one: classes become 0..149 and "other" (0) becomes 255, the ignore value (mmseg's
``reduce_zero_label=True``). Existing outputs are overwritten.

    python datasets/prepare_ade20k_sem_seg.py [--root DIR] [--workers N]
"""
import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from focalnet_det.fileio import atomic_path

SPLITS = ("training", "validation")


def shift_labels(label):
    """uint8 ADE label map -> 0..149 classes, 255 for 'other' (0)."""
    label = np.asarray(label, dtype=np.uint8)
    return np.where(label == 0, 255, label.astype(np.int16) - 1).astype(np.uint8)


def _convert(paths):
    src, dst = paths
    with atomic_path(dst) as tmp:  # whole or not at all: a killed run leaves no half-written label map
        Image.fromarray(shift_labels(Image.open(src))).save(tmp)


def prepare(root, workers=4):
    """Convert both splits under ``root/ADEChallengeData2016``; returns the number of files written per split."""
    base = Path(root) / "ADEChallengeData2016"
    counts = {}
    for split in SPLITS:
        src_dir, dst_dir = base / "annotations" / split, base / "annotations_detectron2" / split
        files = sorted(src_dir.glob("*.png"))
        if not files:
            raise FileNotFoundError(f"no label PNGs in {src_dir}: unpack ADEChallengeData2016.zip under {root}")
        dst_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(f, dst_dir / f.name) for f in files]
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_convert, jobs, chunksize=64))
        else:
            for job in jobs:
                _convert(job)
        counts[split] = len(jobs)
        print(f"{split}: {len(jobs)} label maps -> {dst_dir}")
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                        help="folder holding ADEChallengeData2016 (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--workers", type=int, default=4, help="parallel processes (default 4)")
    args = parser.parse_args(argv)
    try:
        prepare(args.root, args.workers)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
