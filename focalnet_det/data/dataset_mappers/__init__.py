"""Training mappers, one module per head family: ``mask2former`` (by ``INPUT.DATASET_MAPPER_NAME``), ``upernet``.
Public: ``build_train_mapper`` (the mapper for a config), the mapper classes, ``MASKFORMER_MAPPERS``."""
from detectron2.data import DatasetMapper

from ...errors import UserError
from ..augmentation import build_detection_augmentation
from .mask2former import (
    MASKFORMER_MAPPERS,
    COCOInstanceNewBaselineDatasetMapper,
    COCOPanopticNewBaselineDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_maskformer_train_mapper,
)
from .upernet import SemSegDatasetMapper

__all__ = [
    "build_train_mapper",
    "build_maskformer_train_mapper",
    "MASKFORMER_MAPPERS",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "COCOInstanceNewBaselineDatasetMapper",
    "COCOPanopticNewBaselineDatasetMapper",
    "SemSegDatasetMapper",
]


def build_train_mapper(cfg):
    """The training mapper of ``cfg``'s recipe: Mask2Former's by ``INPUT.DATASET_MAPPER_NAME``, mmseg's
    pipeline for a ``SemanticSegmentor`` (UPerNet), else Detectron2's ``DatasetMapper`` with the detection
    recipe's augmentation."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "MaskFormer":
        mapper = build_maskformer_train_mapper(cfg)
        if mapper is None:
            raise UserError(f"INPUT.DATASET_MAPPER_NAME: unknown {cfg.INPUT.DATASET_MAPPER_NAME!r} for "
                            f"MaskFormer (choose from {sorted(MASKFORMER_MAPPERS)})")
        return mapper
    if arch == "SemanticSegmentor":
        return SemSegDatasetMapper(cfg, is_train=True)
    return DatasetMapper(cfg, is_train=True, augmentations=build_detection_augmentation(cfg, True))
