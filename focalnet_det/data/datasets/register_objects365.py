"""Objects365 v2 (365 classes, COCO-format json), registered as ``objects365_v2_{train,val}`` on import.

Expected under ``$DETECTRON2_DATASETS`` (``python datasets/prepare_objects365.py`` checks it and names what is
missing)::

    objects365/annotations/zhiyuan_objv2_train.json   objects365/train/   (the json's file_name under it)
    objects365/annotations/zhiyuan_objv2_val.json     objects365/val/

The category ids are 1..365; the metadata records the mapping to contiguous ids (id - 1) from the start, so a
DINO config with ``MODEL.DINO.LOGITS_BY_DATASET_ID`` (366 logits, as the official Objects365 DINO) builds before
the json is read. COCO box AP via ``COCOEvaluator``.
"""
import os

from detectron2.data.datasets import register_coco_instances

__all__ = ["OBJECTS365_SPLITS", "register_objects365"]

OBJECTS365_SPLITS = {
    "objects365_v2_train": ("objects365/train", "objects365/annotations/zhiyuan_objv2_train.json"),
    "objects365_v2_val": ("objects365/val", "objects365/annotations/zhiyuan_objv2_val.json"),
}
NUM_OBJECTS365_CLASSES = 365


def register_objects365(root):
    for name, (image_root, json_file) in OBJECTS365_SPLITS.items():
        metadata = {"thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(NUM_OBJECTS365_CLASSES)}}
        register_coco_instances(name, metadata, os.path.join(root, json_file), os.path.join(root, image_root))
