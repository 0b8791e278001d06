"""Dataset registrations for Mask2Former (run on import; nothing is read or written until a dataset is used).

- ``coco_2017_{train,val}_panoptic_with_sem_seg`` (and things-only ``thing_classes`` for Detectron2's
  ``coco_2017_{train,val}_panoptic``), ``ade20k_panoptic_{train,val}``, under ``$DETECTRON2_DATASETS``;
- ``tiny_shapes_panoptic_{train,val}``, built in.

ADE20K semantic (``ade20k_sem_seg_{train,val}``) is registered by Detectron2 itself.
"""
import os

from .register_ade20k_panoptic import register_all_ade20k_panoptic
from .register_coco_panoptic_annos_semseg import register_all_coco_panoptic_annos_sem_seg
from .register_tiny_shapes_panoptic import register_tiny_shapes_panoptic

_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_coco_panoptic_annos_sem_seg(_root)
register_all_ade20k_panoptic(_root)
register_tiny_shapes_panoptic()
