"""Evaluators of Mask2Former models, by the dataset's ``evaluator_type`` (as the official train_net.py):

- ``sem_seg``: ``SemSegEvaluator`` (mIoU);
- ``coco``: ``COCOEvaluator`` (mask AP);
- ``coco_panoptic_seg``: ``COCOPanopticEvaluator`` (PQ, panopticapi) if ``TEST.PANOPTIC_ON``, ``COCOEvaluator``
  on the dataset's instance json (mask AP) if ``TEST.INSTANCE_ON``, ``SemSegEvaluator`` (mIoU) if ``TEST.SEMANTIC_ON``;
- ``ade20k_panoptic_seg``: ``SemSegEvaluator``, ``COCOPanopticEvaluator`` if ``PANOPTIC_ON``,
  :class:`InstanceSegEvaluator` if ``INSTANCE_ON``.

Mask AP only (``tasks=("segm",)``): Mask2Former predicts no boxes. COCO evaluation in pure Python
(``use_fast_impl=False``), which every Detectron2 install has.
"""
import copy

import numpy as np
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.utils.file_io import PathManager

__all__ = ["InstanceSegEvaluator", "build_maskformer_evaluators", "load_sem_seg_label"]


def load_sem_seg_label(filename, dtype=int):
    """A label PNG as an array. (Detectron2 0.7's default loader passes ``copy=False`` to ``np.array``, which
    numpy 2 refuses when a dtype conversion needs a copy.)"""
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def _sem_seg_evaluator(dataset_name, output_folder):
    return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                           sem_seg_loading_fn=load_sem_seg_label)


class InstanceSegEvaluator(COCOEvaluator):
    """``COCOEvaluator`` for datasets whose thing classes are not the contiguous ids 0..T-1 (ADE20K panoptic:
    100 things among 150 classes): predictions are mapped back to dataset ids directly, predictions of
    non-thing classes dropped, and the per-class table named after the json's categories."""

    def _eval_predictions(self, predictions, img_ids=None):
        meta = self._metadata
        to_dataset = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
        predictions = copy.deepcopy(predictions)
        for p in predictions:
            p["instances"] = [r for r in p.get("instances", []) if r["category_id"] in to_dataset]
            for r in p["instances"]:
                r["category_id"] = to_dataset[r["category_id"]]
        names = meta.get("thing_classes")
        class_names = None
        if names is not None:
            class_names = [names[meta.thing_dataset_id_to_contiguous_id[i]] for i in sorted(to_dataset.values())]
        # the base class then finds no id map to apply (already applied) and a table of the json's classes
        self._metadata = Metadata(name=meta.name).set(thing_classes=class_names) if class_names else Metadata(name=meta.name)
        try:
            return super()._eval_predictions(predictions, img_ids=img_ids)
        finally:
            self._metadata = meta


def build_maskformer_evaluators(cfg, dataset_name, output_folder):
    """The evaluators for ``dataset_name`` (a list, empty if its evaluator_type is not known here)."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    test = cfg.MODEL.MASK_FORMER.TEST
    evaluators = []
    if evaluator_type in ("sem_seg", "ade20k_panoptic_seg"):
        evaluators.append(_sem_seg_evaluator(dataset_name, output_folder))
    if evaluator_type == "coco":
        evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder, use_fast_impl=False))
    if evaluator_type in ("coco_panoptic_seg", "ade20k_panoptic_seg") and test.PANOPTIC_ON:
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type == "coco_panoptic_seg" and test.INSTANCE_ON:
        evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder, use_fast_impl=False))
    if evaluator_type == "ade20k_panoptic_seg" and test.INSTANCE_ON:
        evaluators.append(InstanceSegEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder,
                                               use_fast_impl=False))
    if evaluator_type == "coco_panoptic_seg" and test.SEMANTIC_ON:
        evaluators.append(_sem_seg_evaluator(dataset_name, output_folder))
    return evaluators
