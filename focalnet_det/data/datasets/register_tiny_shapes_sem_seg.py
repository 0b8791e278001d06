"""``tiny_shapes_sem_seg_{train,val}``: the semantic view of the built-in tiny panoptic dataset
``tiny_shapes_panoptic_{train,val}`` (same images; classes circle, square, triangle, dark background, light
background), as ADE20K's semantic and panoptic tasks share their images. Registered on ``import focalnet_det``;
the files are written on first use, by the panoptic dataset's code."""
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_sem_seg

from .tiny_shapes import register_lazily

__all__ = ["register_tiny_shapes_sem_seg"]

# each split is the semantic view of a split of the tiny panoptic dataset (same images, same labels)
SEM_SEG_SPLITS = {"tiny_shapes_sem_seg_train": "tiny_shapes_panoptic_train", "tiny_shapes_sem_seg_val": "tiny_shapes_panoptic_val"}


class _TinySemSegMetadata(Metadata):
    """Classes, colours and folders of the panoptic split it views; reading a folder generates the data."""

    def _panoptic(self):
        return MetadataCatalog.get(SEM_SEG_SPLITS[self.name])

    @property
    def stuff_classes(self):
        return list(self._panoptic().stuff_classes)

    @property
    def stuff_colors(self):
        return list(self._panoptic().stuff_colors)

    @property
    def image_root(self):
        return self._panoptic().image_root

    @property
    def sem_seg_root(self):
        return self._panoptic().sem_seg_root


def _load(name):
    meta = MetadataCatalog.get(name)
    return load_sem_seg(meta.sem_seg_root, meta.image_root, gt_ext="png", image_ext="png")


def register_tiny_shapes_sem_seg():
    """Register ``tiny_shapes_sem_seg_train`` / ``_val`` (idempotent; writes nothing)."""
    register_lazily(SEM_SEG_SPLITS, _load, _TinySemSegMetadata, ignore_label=255, evaluator_type="sem_seg")
