"""Datasets from the command line, for every tool that reads datasets or their class names.

``add_dataset_arguments(parser)`` adds the repeatable flags; ``register_datasets_from_args(args)`` registers what
they name. Call it before the config checks, and again in every launched process (a spawned process starts with
Detectron2's catalogs as ``import focalnet_det`` leaves them)::

    --register-coco NAME JSON IMAGE_DIR
    --register-coco-panoptic NAME JSON PNG_DIR IMAGE_DIR
    --register-sem-seg NAME IMAGE_DIR LABEL_DIR  (with --classes a,b,c or --classes-file F, and --ignore-label N)
"""
import os

from ..errors import UserError
from .datasets.register_own import register_coco_dataset, register_coco_panoptic_dataset, register_sem_seg_dataset

__all__ = ["add_dataset_arguments", "register_datasets_from_args", "read_classes"]


def add_dataset_arguments(parser):
    """Add ``--register-coco``, ``--register-coco-panoptic``, ``--register-sem-seg`` (each repeatable) and the
    semantic datasets' ``--classes`` / ``--classes-file`` / ``--ignore-label`` to an argparse ``parser``."""
    group = parser.add_argument_group("your own datasets (then name them in DATASETS.TRAIN / DATASETS.TEST)")
    group.add_argument("--register-coco", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_DIR"),
                       help="COCO instances json (boxes, polygons or RLE; any category ids) and its images")
    group.add_argument("--register-coco-panoptic", nargs=4, action="append", default=[],
                       metavar=("NAME", "JSON", "PNG_DIR", "IMAGE_DIR"),
                       help="COCO panoptic json, its segment PNGs and its images (things and stuff by 'isthing')")
    group.add_argument("--register-sem-seg", nargs=3, action="append", default=[],
                       metavar=("NAME", "IMAGE_DIR", "LABEL_DIR"),
                       help="images and label PNGs matched by file stem (label i = class i); needs --classes "
                            "or --classes-file")
    names = group.add_mutually_exclusive_group()
    names.add_argument("--classes", metavar="A,B,C", help="class names of the --register-sem-seg datasets")
    names.add_argument("--classes-file", metavar="FILE",
                       help="class names of the --register-sem-seg datasets, one a line")
    group.add_argument("--ignore-label", type=int, default=255, metavar="N",
                       help="label value of unlabelled pixels in the --register-sem-seg datasets (default 255)")
    return parser


def read_classes(classes=None, classes_file=None):
    """Class names from ``"a,b,c"`` or from a file with one a line (blank lines skipped)."""
    if classes_file:
        try:
            with open(classes_file, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UserError(f"--classes-file {classes_file}: cannot read it ({e.strerror})") from None
        if not names:
            raise UserError(f"--classes-file {classes_file}: no class names in it (one a line)")
    else:
        names = [n.strip() for n in (classes or "").split(",") if n.strip()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"class names given twice: {', '.join(duplicates)}")
    return names


def _existing(flag, name, kind, path, is_dir=True):
    if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
        raise UserError(f"{flag} {name}: {kind} {path} does not exist")
    return path


def register_datasets_from_args(args):
    """Register the datasets named by :func:`add_dataset_arguments`' flags in ``args`` (an argparse namespace);
    returns their names. Missing files and folders are one-line UserErrors."""
    names = []
    for name, json_file, image_dir in getattr(args, "register_coco", None) or []:
        flag = "--register-coco"
        register_coco_dataset(name, _existing(flag, name, "JSON", json_file, is_dir=False),
                              _existing(flag, name, "IMAGE_DIR", image_dir))
        names.append(name)
    for name, json_file, png_dir, image_dir in getattr(args, "register_coco_panoptic", None) or []:
        flag = "--register-coco-panoptic"
        register_coco_panoptic_dataset(name, _existing(flag, name, "JSON", json_file, is_dir=False),
                                       _existing(flag, name, "PNG_DIR", png_dir),
                                       _existing(flag, name, "IMAGE_DIR", image_dir))
        names.append(name)
    sem_seg = getattr(args, "register_sem_seg", None) or []
    if sem_seg:
        classes = read_classes(args.classes, args.classes_file)
        for name, image_dir, label_dir in sem_seg:
            flag = "--register-sem-seg"
            if not classes:
                raise UserError(f"{flag} {name}: the class names are missing: add --classes a,b,c or --classes-file F")
            register_sem_seg_dataset(name, _existing(flag, name, "IMAGE_DIR", image_dir),
                                     _existing(flag, name, "LABEL_DIR", label_dir), classes, args.ignore_label)
            names.append(name)
    elif getattr(args, "classes", None) or getattr(args, "classes_file", None):
        raise UserError("--classes / --classes-file name the classes of --register-sem-seg datasets; none is given")
    return names
