"""Data: dataset registration (``datasets``, run on import), training mappers (``dataset_mappers``), augmentations,
the resumable training loader (``build``), your own datasets (``arguments``: the tools' ``--register-*`` flags, and
the same as functions). Public: ``build_train_mapper``, ``build_resumable_train_loader``, ``register_coco_dataset``, ..."""
from . import datasets  # noqa: F401  (registers the datasets)
from .arguments import add_dataset_arguments, register_datasets_from_args
from .augmentation import build_detection_augmentation
from .build import ReadCheckedMapper, build_resumable_train_loader
from .dataset_mappers import build_train_mapper
from .datasets.register_own import register_coco_dataset, register_coco_panoptic_dataset, register_sem_seg_dataset

__all__ = ["build_train_mapper", "build_detection_augmentation", "build_resumable_train_loader", "ReadCheckedMapper",
           "add_dataset_arguments", "register_datasets_from_args", "register_coco_dataset",
           "register_coco_panoptic_dataset", "register_sem_seg_dataset"]
