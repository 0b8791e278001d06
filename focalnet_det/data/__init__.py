"""Dataset registration. Importing this module registers the built-in datasets (and writes nothing)."""
from .tiny_shapes import (  # noqa: F401
    TINY_SHAPES_CLASSES,
    ensure_tiny_shapes,
    generate_tiny_shapes,
    register_tiny_shapes,
    tiny_shapes_root,
)
from .sem_seg import SemSegDatasetMapper, register_tiny_shapes_sem_seg  # noqa: F401

register_tiny_shapes()
register_tiny_shapes_sem_seg()

# Mask2Former: COCO panoptic with semantic labels, ADE20K panoptic, tiny_shapes_panoptic (registered on import)
from . import datasets  # noqa: F401,E402
from .dataset_mappers import build_maskformer_train_mapper  # noqa: F401,E402
