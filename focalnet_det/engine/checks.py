"""Config checks run before any process starts: each user mistake becomes one ``UserError`` naming the culprit.

- a dataset name that is not registered (with the close matches);
- a registered dataset whose files are missing (the path, ``DETECTRON2_DATASETS``, the script that makes them);
- the files of a dataset registered from the command line (``--register-*``): malformed JSON, unknown image or
  category ids, missing images, label values beyond the classes (``data/datasets/check_files.py``);
- the class count on the key this family does not read, or not equal to the dataset's classes where it does
  (DINO: its denoising label book too); ``MODEL.DINO.LOGITS_BY_DATASET_ID`` with a dataset that is not COCO or
  Objects365; a panoptic head or mapper on a dataset without panoptic annotations; a semantic ``IGNORE_VALUE``
  that is a class, or that is not the dataset's ignore label;
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
from ..data.datasets.check_files import check_registered_files
from ..errors import UserError

__all__ = ["check_config", "check_datasets", "check_num_classes", "check_feature_names", "check_weights",
           "check_dataset_kinds", "check_best_checkpoint_metric"]

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
        check_registered_files(name, meta)  # own data: its files, before anything is derived from them
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


def family_name(cfg):
    """The head family of ``cfg`` in words (for messages)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "GeneralizedRCNN":
        kind = "Mask R-CNN" if cfg.MODEL.MASK_ON else "Faster R-CNN"
        return f"Cascade {kind}" if "Cascade" in cfg.MODEL.ROI_HEADS.NAME else kind
    if arch == "SemanticSegmentor":
        return "UPerNet" if cfg.MODEL.SEM_SEG_HEAD.NAME == "UPerNetHead" else "semantic segmentation"
    return {"MaskFormer": "Mask2Former"}.get(arch, arch)


def _dataset_classes(cfg, meta):
    """The classes the family predicts on a dataset: things for detectors and for Mask2Former on instances,
    every class (``stuff_classes``) for semantic and panoptic heads."""
    kind = _NUM_CLASSES.get(cfg.MODEL.META_ARCHITECTURE, (None, "thing_classes"))[1]
    if cfg.MODEL.META_ARCHITECTURE == "MaskFormer" and not _is_panoptic(meta) and meta.get("evaluator_type") == "coco":
        kind = "thing_classes"
    return meta.get(kind, None) or meta.get("thing_classes", None)


def _is_panoptic(meta):
    return meta.get("panoptic_json", None) is not None


def _logit_id_layouts():
    """The category-id layouts of the released by-id checkpoints: COCO's 80 things among 91 ids, Objects365's."""
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    from ..data.datasets.register_objects365 import NUM_OBJECTS365_CLASSES

    coco = _get_builtin_metadata("coco")["thing_dataset_id_to_contiguous_id"]
    return {"COCO": coco, "Objects365": {i + 1: i for i in range(NUM_OBJECTS365_CLASSES)}}


def check_num_classes(cfg, eval_only=False):
    """The family's class-count key equals the classes of every dataset it reads (DINO by id: covers the ids);
    the message names the key this family reads, and a class-count key set instead that it does not read."""
    arch = cfg.MODEL.META_ARCHITECTURE
    key, _ = _NUM_CLASSES.get(arch, (None, None))
    num_classes = _get(cfg, key) if key else None
    if num_classes is None:
        return
    family = family_name(cfg)
    by_id = arch == "DINO" and cfg.MODEL.DINO.LOGITS_BY_DATASET_ID
    for dataset_key, name in used_datasets(cfg, eval_only):
        meta = MetadataCatalog.get(name)
        if by_id:
            id_map = meta.get("thing_dataset_id_to_contiguous_id", None) or {}
            layouts = _logit_id_layouts()
            if id_map and not any(id_map == ids for ids in layouts.values()):
                count = len(id_map)
                raise UserError(f"MODEL.DINO.LOGITS_BY_DATASET_ID True indexes the logits by COCO's (or Objects365's) "
                                f"category ids; {dataset_key} {name!r} is neither: set MODEL.DINO.LOGITS_BY_DATASET_ID "
                                f"False and MODEL.DINO.NUM_CLASSES {count}")
            if id_map and max(id_map) >= num_classes:
                raise UserError(f"{name} has category ids up to {max(id_map)}; this DINO config indexes logits by id "
                                f"and reads MODEL.DINO.NUM_CLASSES ({num_classes}): set it to {max(id_map) + 1}")
            continue
        classes = _dataset_classes(cfg, meta)
        if not classes or len(classes) == num_classes:
            continue
        n = len(classes)
        others = [k for k, _ in set(_NUM_CLASSES.values()) if k != key and _get(cfg, k) == n]
        unread = f" ({', '.join(others)} {n} is not read by {family})" if others else ""
        book = (f"; its denoising label book (label_enc, NUM_CLASSES + 1 = {num_classes + 1} entries) must "
                f"cover the {n} classes" if arch == "DINO" and num_classes < n else "")
        raise UserError(f"{name} has {n} classes; this {family} config reads {key} ({num_classes}){book}: "
                        f"set {key} {n}{unread}")


def check_dataset_kinds(cfg, eval_only=False):
    """Mask2Former: panoptic heads and mappers need panoptic datasets. UPerNet (whose loss reads it): the
    ``IGNORE_VALUE`` is no class and is the dataset's ignore label."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in ("MaskFormer", "SemanticSegmentor"):
        return
    datasets = used_datasets(cfg, eval_only)
    if arch == "MaskFormer":
        panoptic_mapper = cfg.INPUT.DATASET_MAPPER_NAME in ("mask_former_panoptic", "coco_panoptic_lsj")
        for dataset_key, name in datasets:
            meta = MetadataCatalog.get(name)
            if _is_panoptic(meta) or meta.get("evaluator_type") == "ade20k_panoptic_seg":
                continue
            if dataset_key == "DATASETS.TRAIN" and panoptic_mapper:
                raise UserError(f"{dataset_key} {name!r} has no panoptic annotations; INPUT.DATASET_MAPPER_NAME "
                                f"{cfg.INPUT.DATASET_MAPPER_NAME!r} trains a panoptic head: register a panoptic dataset "
                                f"(--register-coco-panoptic) or use 'coco_instance_lsj' / 'mask_former_semantic'")
            if dataset_key == "DATASETS.TEST" and cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON:
                raise UserError(f"{dataset_key} {name!r} has no panoptic annotations; MODEL.MASK_FORMER.TEST.PANOPTIC_ON "
                                f"evaluates PQ on one: set it False (and INSTANCE_ON / SEMANTIC_ON as the data allows)")
        return  # its mappers take the dataset's ignore label
    ignore, num_classes = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if 0 <= ignore < num_classes:
        raise UserError(f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE {ignore} is a class (0..{num_classes - 1} with "
                        f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {num_classes}): its pixels would never be learnt; use the "
                        f"dataset's ignore label (usually 255)")
    for dataset_key, name in datasets:
        label = MetadataCatalog.get(name).get("ignore_label", None)
        if label is not None and label != ignore:
            raise UserError(f"{dataset_key} {name!r} marks unlabelled pixels {label}; MODEL.SEM_SEG_HEAD.IGNORE_VALUE is "
                            f"{ignore}: set it to {label}")


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


# the tasks whose metrics the evaluators put in metrics.json ("<task>/<metric>"; "_MS" with test-time augmentation)
_METRIC_TASKS = ("bbox", "segm", "sem_seg", "panoptic_seg")


def check_best_checkpoint_metric(cfg, eval_only=False):
    """``TEST.BEST_CHECKPOINT_METRIC`` names a metric of the form the evaluators write, of a run that evaluates."""
    metric = cfg.TEST.BEST_CHECKPOINT_METRIC
    if not metric or eval_only:
        return
    if not cfg.DATASETS.TEST:
        raise UserError(f"TEST.BEST_CHECKPOINT_METRIC {metric!r}: DATASETS.TEST is empty, nothing is evaluated")
    task = metric.split("/")[-2] if metric.count("/") >= 1 else None
    if task is None or task.removesuffix("_MS") not in _METRIC_TASKS or not metric.split("/")[-1]:
        raise UserError(f"TEST.BEST_CHECKPOINT_METRIC {metric!r}: not a metric name as metrics.json has them "
                        f"(<task>/<metric>, task one of {', '.join(_METRIC_TASKS)}; e.g. bbox/AP, segm/AP-<class>, "
                        f"sem_seg/mIoU, panoptic_seg/PQ)")


def check_config(cfg, eval_only=False, resume=False):
    """All checks above, cheapest first."""
    check_weights(cfg, resume)
    check_datasets(cfg, eval_only)
    check_num_classes(cfg, eval_only)
    check_dataset_kinds(cfg, eval_only)
    check_best_checkpoint_metric(cfg, eval_only)
    check_feature_names(cfg)
