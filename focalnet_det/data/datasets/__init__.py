"""Dataset registration, run on import (nothing is read or written until a dataset is used).
Public: the built-in ``tiny_shapes`` (instances), ``tiny_shapes_panoptic``, ``tiny_shapes_sem_seg``; COCO panoptic with semantic labels, ADE20K panoptic.

- ``tiny_shapes_{train,val}``, ``tiny_shapes_panoptic_{train,val}``, ``tiny_shapes_sem_seg_{train,val}``: built in,
  generated on first use into ``$FOCALNET_DET_CACHE``;
- ``objects365_v2_{train,val}`` (COCO-format json) under ``$DETECTRON2_DATASETS/objects365``;
- ``coco_2017_{train,val}_panoptic_with_sem_seg`` (and things-only ``thing_classes`` for Detectron2's
  ``coco_2017_{train,val}_panoptic``), ``ade20k_panoptic_{train,val}``, under ``$DETECTRON2_DATASETS``.

ADE20K semantic (``ade20k_sem_seg_{train,val}``) is registered by Detectron2 itself. Your own datasets:
``register_own`` (the tools' ``--register-*`` flags), their files checked before launch by ``check_files``.
"""
import os

from .register_ade20k_panoptic import register_all_ade20k_panoptic
from .register_coco_panoptic_annos_semseg import register_all_coco_panoptic_annos_sem_seg
from .register_objects365 import register_objects365
from .register_tiny_shapes_panoptic import register_tiny_shapes_panoptic
from .register_tiny_shapes_sem_seg import register_tiny_shapes_sem_seg
from .tiny_shapes import TINY_SHAPES_CLASSES, ensure_tiny_shapes, generate_tiny_shapes, register_tiny_shapes, tiny_shapes_root

__all__ = ["TINY_SHAPES_CLASSES", "ensure_tiny_shapes", "generate_tiny_shapes", "tiny_shapes_root"]

_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_tiny_shapes()
register_tiny_shapes_panoptic()
register_tiny_shapes_sem_seg()
register_all_coco_panoptic_annos_sem_seg(_root)
register_all_ade20k_panoptic(_root)
register_objects365(_root)  # objects365_v2_{train,val}
