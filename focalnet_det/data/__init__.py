"""Data: dataset registration (``datasets``, run on import), training mappers (``dataset_mappers``), augmentations,
the resumable training loader (``build``). Public: ``build_train_mapper``, ``build_resumable_train_loader``, ..."""
from . import datasets  # noqa: F401  (registers the datasets)
from .augmentation import build_detection_augmentation
from .build import ReadCheckedMapper, build_resumable_train_loader
from .dataset_mappers import build_train_mapper

__all__ = ["build_train_mapper", "build_detection_augmentation", "build_resumable_train_loader", "ReadCheckedMapper"]
