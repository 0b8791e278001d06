"""Mask2Former's training mappers, chosen by ``INPUT.DATASET_MAPPER_NAME`` (:func:`build_maskformer_train_mapper`).
Evaluation uses Detectron2's ``DatasetMapper(cfg, is_train=False)``, as the official code."""
from .coco_instance_new_baseline_dataset_mapper import COCOInstanceNewBaselineDatasetMapper
from .coco_panoptic_new_baseline_dataset_mapper import COCOPanopticNewBaselineDatasetMapper
from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = [
    "MASKFORMER_MAPPERS",
    "build_maskformer_train_mapper",
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
]

MASKFORMER_MAPPERS = {
    "mask_former_semantic": MaskFormerSemanticDatasetMapper,
    "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    "mask_former_instance": MaskFormerInstanceDatasetMapper,
    "coco_instance_lsj": COCOInstanceNewBaselineDatasetMapper,
    "coco_panoptic_lsj": COCOPanopticNewBaselineDatasetMapper,
}


def build_maskformer_train_mapper(cfg):
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME``, or None for a name not listed above
    (the caller then uses its default mapper, as the official train_net.py does)."""
    mapper = MASKFORMER_MAPPERS.get(cfg.INPUT.DATASET_MAPPER_NAME)
    return mapper(cfg, True) if mapper is not None else None
