"""ADE20K panoptic (150 categories: 100 things, 50 stuff): ``ade20k_panoptic_{train,val}``.

Layout under ``$DETECTRON2_DATASETS/ADEChallengeData2016`` (``datasets/prepare_ade20k_pan_seg.py`` writes the
panoptic PNGs, jsons and the instance jsons; ``prepare_ade20k_sem_seg.py`` the semantic labels)::

    images/{training,validation}/*.jpg
    ade20k_panoptic_{train,val}/*.png         ade20k_panoptic_{train,val}.json
    annotations_detectron2/{training,validation}/*.png
    ade20k_instance_{train,val}.json

Category ids are 0..149 (the semantic classes in ADE order), so contiguous id = dataset id;
``evaluator_type: ade20k_panoptic_seg`` (PQ, mIoU, mask AP). The semantic-only ``ade20k_sem_seg_{train,val}``
are Detectron2's own.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from .panoptic_utils import load_panoptic_json

__all__ = ["ADE20K_150_THING_IDS", "ADE20K_150_CATEGORIES", "register_all_ade20k_panoptic", "get_ade20k_panoptic_metadata"]

# The 100 thing categories among the 150 (0-based, ADE order). The instance challenge's category k (1..100)
# is the k-th of these (Mask2Former's datasets/ade20k_instance_catid_mapping.txt).
ADE20K_150_THING_IDS = (
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41, 42, 43, 44, 45, 47,
    49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74, 75, 76, 78, 80, 81, 82, 83, 85, 86, 87,
    88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107, 108, 110, 111, 112, 115, 116, 118, 119, 120, 121, 123, 124,
    125, 126, 127, 129, 130, 132, 133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149,
)
assert len(ADE20K_150_THING_IDS) == 100
ADE20K_150_CATEGORIES = [
    {"id": i, "name": name, "isthing": int(i in ADE20K_150_THING_IDS)} for i, name in enumerate(ADE20K_SEM_SEG_CATEGORIES)
]

_SPLITS = {
    "ade20k_panoptic_train": ("training", "ade20k_panoptic_train", "ade20k_panoptic_train.json", "ade20k_instance_train.json"),
    "ade20k_panoptic_val": ("validation", "ade20k_panoptic_val", "ade20k_panoptic_val.json", "ade20k_instance_val.json"),
}


def get_ade20k_panoptic_metadata():
    names = [c["name"] for c in ADE20K_150_CATEGORIES]
    return {
        # all 150 names under both (contiguous ids index them directly, things and stuff alike)
        "thing_classes": names,
        "stuff_classes": names,
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(ADE20K_150_CATEGORIES) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(ADE20K_150_CATEGORIES)},
    }


def register_all_ade20k_panoptic(root):
    root = os.path.join(root, "ADEChallengeData2016")
    metadata = get_ade20k_panoptic_metadata()
    for name, (dirname, panoptic_dir, panoptic_json, instances_json) in _SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        image_root = os.path.join(root, "images", dirname)
        panoptic_root = os.path.join(root, panoptic_dir)
        panoptic_json = os.path.join(root, panoptic_json)
        sem_seg_root = os.path.join(root, "annotations_detectron2", dirname)
        DatasetCatalog.register(
            name,
            lambda j=panoptic_json, i=image_root, p=panoptic_root, s=sem_seg_root: load_panoptic_json(
                j, i, p, metadata, sem_seg_dir=s
            ),
        )
        MetadataCatalog.get(name).set(
            panoptic_root=panoptic_root,
            image_root=image_root,
            panoptic_json=panoptic_json,
            json_file=os.path.join(root, instances_json),
            sem_seg_root=sem_seg_root,
            evaluator_type="ade20k_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
            **metadata,
        )
