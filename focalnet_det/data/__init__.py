"""Data: dataset registration (``datasets``, run on import), training mappers (``dataset_mappers``), augmentations.
Public: ``build_train_mapper``, ``build_detection_augmentation``, the tiny-dataset helpers of ``datasets``."""
from . import datasets  # noqa: F401  (registers the datasets)
from .augmentation import build_detection_augmentation
from .dataset_mappers import build_train_mapper

__all__ = ["build_train_mapper", "build_detection_augmentation"]
