"""COCO panoptic for Mask2Former: ``coco_2017_{train,val}_panoptic_with_sem_seg``.

Detectron2 registers ``coco_2017_{train,val}_panoptic`` (the training set of the recipe); this adds the
``_with_sem_seg`` versions (the evaluation set of the recipe), whose dicts also carry ``sem_seg_file_name``
(``coco/panoptic_semseg_{train,val}2017``, from ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py``:
all 133 categories as 0..132, unlabelled 255), with ``evaluator_type: coco_panoptic_seg`` (PQ, mask AP on
the instances json, mIoU). As in the official code, ``thing_classes`` / ``thing_colors`` of the panoptic
datasets become the 80 thing categories (Detectron2 lists all 133 there), so that the COCO instance
evaluator and the instance drawing agree with the contiguous ids.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .panoptic_utils import load_panoptic_json, panoptic_metadata

__all__ = ["register_all_coco_panoptic_annos_sem_seg", "get_coco_panoptic_metadata"]

_SPLITS = {
    "coco_2017_train_panoptic": (
        "coco/panoptic_train2017", "coco/annotations/panoptic_train2017.json", "coco/panoptic_semseg_train2017",
    ),
    "coco_2017_val_panoptic": (
        "coco/panoptic_val2017", "coco/annotations/panoptic_val2017.json", "coco/panoptic_semseg_val2017",
    ),
}


def get_coco_panoptic_metadata():
    """Classes, colours and id maps of COCO's 133 panoptic categories."""
    return panoptic_metadata(COCO_CATEGORIES)


def register_coco_panoptic_annos_sem_seg(name, metadata, image_root, panoptic_root, panoptic_json, sem_seg_root,
                                         instances_json):
    panoptic = MetadataCatalog.get(name)
    if panoptic.get("thing_classes") != metadata["thing_classes"]:
        for key in ("thing_classes", "thing_colors"):
            if hasattr(panoptic, key):
                delattr(panoptic, key)
        panoptic.set(thing_classes=metadata["thing_classes"], thing_colors=metadata["thing_colors"])

    semantic_name = name + "_with_sem_seg"
    if semantic_name in DatasetCatalog.list():
        return
    DatasetCatalog.register(
        semantic_name,
        lambda: load_panoptic_json(panoptic_json, image_root, panoptic_root, metadata, sem_seg_dir=sem_seg_root),
    )
    MetadataCatalog.get(semantic_name).set(
        sem_seg_root=sem_seg_root,
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )


def register_all_coco_panoptic_annos_sem_seg(root):
    metadata = get_coco_panoptic_metadata()
    for name, (panoptic_root, panoptic_json, semantic_root) in _SPLITS.items():
        instances = MetadataCatalog.get(name[: -len("_panoptic")])  # coco_2017_{train,val} (Detectron2's)
        register_coco_panoptic_annos_sem_seg(
            name,
            metadata,
            instances.image_root,
            os.path.join(root, panoptic_root),
            os.path.join(root, panoptic_json),
            os.path.join(root, semantic_root),
            instances.json_file,
        )
