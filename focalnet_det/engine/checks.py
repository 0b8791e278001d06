"""Config checks run before any process starts: each user mistake becomes one ``UserError`` naming the culprit.

- a dataset name that is not registered (with the close matches);
- a registered dataset whose files are missing (the path, ``DETECTRON2_DATASETS``, the script that makes them);
- ``NUM_CLASSES`` smaller than the dataset's classes;
- a feature name (``MODEL.FPN.IN_FEATURES``, a head's ``IN_FEATURES``, ...) the backbone does not produce;
- invalid ``MODEL.FOCALNET`` values (checked when the backbone is built, on the meta device here: no memory);
- a local ``MODEL.WEIGHTS`` file that does not exist.
"""
import difflib
import os

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_backbone

from ..config import check_weights_file
from ..errors import UserError

__all__ = ["check_config", "check_datasets", "check_num_classes", "check_feature_names", "check_weights"]

# metadata entries that name files a dataset needs ("json_file" only where it is the annotation source)
_PATH_KEYS = ("image_root", "panoptic_json", "panoptic_root", "sem_seg_root", "image_dir", "gt_dir")
# (part of a missing path, how to make it)
_HOW_TO_MAKE = (
    ("panoptic_semseg_", "python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py"),
    ("annotations_detectron2", "python datasets/prepare_ade20k_sem_seg.py"),
    ("ade20k_panoptic", "python datasets/prepare_ade20k_pan_seg.py"),
    ("ade20k_instance", "python datasets/prepare_ade20k_pan_seg.py"),
    ("ADEChallengeData2016", "unpack ADEChallengeData2016.zip there (README: UPerNet)"),
    ("coco", "download COCO 2017 (images and annotations) there in Detectron2's layout (coco/train2017, ...)"),
)
# meta-architecture -> (NUM_CLASSES key, which classes it counts)
_NUM_CLASSES = {
    "GeneralizedRCNN": ("MODEL.ROI_HEADS.NUM_CLASSES", "thing_classes"),
    "RetinaNet": ("MODEL.RETINANET.NUM_CLASSES", "thing_classes"),
    "SemanticSegmentor": ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "stuff_classes"),
    "MaskFormer": ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "stuff_classes"),
    "DINO": ("MODEL.DINO.NUM_CLASSES", "thing_classes"),
}


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def used_datasets(cfg, eval_only):
    """(config key, dataset name) of every dataset the run reads: training ones unless ``eval_only``, and the
    test ones (Detectron2's trainer evaluates them at the end)."""
    keys = ([] if eval_only else ["DATASETS.TRAIN"]) + ["DATASETS.TEST"]
    return [(key, name) for key in keys for name in _get(cfg, key)]


def check_datasets(cfg, eval_only=False):
    """Every dataset named is registered and its files exist."""
    registered = DatasetCatalog.list()
    for key, name in used_datasets(cfg, eval_only):
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=4, cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else "; see Detectron2's builtin datasets or register it"
            raise UserError(f"{key}: dataset {name!r} is not registered{hint}")
        meta = MetadataCatalog.get(name)
        keys = list(_PATH_KEYS)
        if meta.get("evaluator_type") in ("coco", "lvis") or "panoptic_json" not in meta.as_dict():
            keys.append("json_file")
        for path_key in keys:
            path = meta.get(path_key, None)
            if isinstance(path, str) and path and not os.path.exists(path):
                how = next((h for part, h in _HOW_TO_MAKE if part in path), "prepare the dataset (README)")
                root = os.getenv("DETECTRON2_DATASETS", "datasets (the default; DETECTRON2_DATASETS is not set)")
                raise UserError(f"{key}: dataset {name!r} needs {path}, which does not exist; DETECTRON2_DATASETS "
                                f"is {root}; to make it: {how}")


def check_num_classes(cfg, eval_only=False):
    """The model's ``NUM_CLASSES`` covers the classes of every dataset it reads."""
    key, kind = _NUM_CLASSES.get(cfg.MODEL.META_ARCHITECTURE, (None, None))
    num_classes = _get(cfg, key) if key else None
    if num_classes is None:
        return
    for dataset_key, name in used_datasets(cfg, eval_only):
        meta = MetadataCatalog.get(name)
        classes = meta.get(kind, None) or meta.get("thing_classes", None)
        if classes and num_classes < len(classes):
            raise UserError(f"{key}: {num_classes} is smaller than the {len(classes)} classes of {dataset_key} "
                            f"{name!r}; set {key} {len(classes)}")


def check_feature_names(cfg):
    """Every feature name a head or neck asks for is one the backbone produces (built on the meta device)."""
    meta_cfg = cfg.clone()
    meta_cfg.defrost()
    meta_cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        backbone = build_backbone(meta_cfg)  # FocalNet values and the FPN's bottom-up names are checked here
    produced = list(backbone.output_shape())
    if cfg.MODEL.META_ARCHITECTURE in ("GeneralizedRCNN", "ProposalNetwork"):
        keys = ["MODEL.RPN.IN_FEATURES"] + (["MODEL.ROI_HEADS.IN_FEATURES"] if cfg.MODEL.META_ARCHITECTURE != "ProposalNetwork" else [])
    elif cfg.MODEL.META_ARCHITECTURE in ("SemanticSegmentor", "MaskFormer"):
        keys = ["MODEL.SEM_SEG_HEAD.IN_FEATURES"]
        if cfg.MODEL.SEM_SEG_HEAD.NAME == "MaskFormerHead":
            keys.append("MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES")
        if cfg.MODEL.SEM_SEG_HEAD.NAME == "UPerNetHead" and cfg.MODEL.UPERNET.AUX_IN_FEATURE:
            keys.append("MODEL.UPERNET.AUX_IN_FEATURE")
    else:
        keys = []
    for key in keys:
        value = _get(cfg, key)
        names = [value] if isinstance(value, str) else list(value)
        unknown = [n for n in names if n not in produced]
        if unknown:
            raise UserError(f"{key}: the backbone produces no feature {unknown}; it produces {produced}")


def check_weights(cfg, resume=False):
    """A local ``MODEL.WEIGHTS`` exists (URLs are fetched, and checked, when loaded), unless a resumed run
    starts from the last checkpoint in ``OUTPUT_DIR`` instead."""
    if not (resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))):
        check_weights_file(cfg)


def check_config(cfg, eval_only=False, resume=False):
    """All checks above, cheapest first."""
    check_weights(cfg, resume)
    check_datasets(cfg, eval_only)
    check_num_classes(cfg, eval_only)
    check_feature_names(cfg)
