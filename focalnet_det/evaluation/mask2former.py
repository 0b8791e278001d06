"""Evaluators of Mask2Former models, by the dataset's ``evaluator_type`` (as the official train_net.py):

- ``sem_seg``: ``SemSegEvaluator`` (mIoU);
- ``coco``: ``COCOEvaluator`` (mask AP);
- ``coco_panoptic_seg``: ``PerClassPanopticEvaluator`` (PQ, per class too; panopticapi) if ``TEST.PANOPTIC_ON``, ``COCOEvaluator``
  on the dataset's instance json (mask AP) if ``TEST.INSTANCE_ON`` and the dataset has one, ``SemSegEvaluator`` (mIoU) if ``TEST.SEMANTIC_ON``;
- ``ade20k_panoptic_seg``: ``SemSegEvaluator``, ``PerClassPanopticEvaluator`` if ``PANOPTIC_ON``,
  :class:`InstanceSegEvaluator` if ``INSTANCE_ON``.

Mask AP only (``tasks=("segm",)``): Mask2Former predicts no boxes. COCO evaluation in pure Python
(``use_fast_impl=False``), which every Detectron2 install has.
"""
import copy
import logging

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator

from .panoptic import PerClassPanopticEvaluator
from .sem_seg import build_sem_seg_evaluator

__all__ = ["InstanceSegEvaluator", "build_maskformer_evaluators"]

logger = logging.getLogger(__name__)


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
        evaluators.append(build_sem_seg_evaluator(dataset_name, output_folder))
    if evaluator_type == "coco":
        evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder, use_fast_impl=False))
    if evaluator_type in ("coco_panoptic_seg", "ade20k_panoptic_seg") and test.PANOPTIC_ON:
        evaluators.append(PerClassPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type == "coco_panoptic_seg" and test.INSTANCE_ON:
        if MetadataCatalog.get(dataset_name).get("json_file", None):
            evaluators.append(COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder,
                                            use_fast_impl=False))
        else:  # a panoptic dataset registered from its files alone
            logger.info(f"{dataset_name}: no instances json, so no mask AP (PQ and per-class IoU are evaluated)")
    if evaluator_type == "ade20k_panoptic_seg" and test.INSTANCE_ON:
        evaluators.append(InstanceSegEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder,
                                               use_fast_impl=False))
    if evaluator_type == "coco_panoptic_seg" and test.SEMANTIC_ON:
        evaluators.append(build_sem_seg_evaluator(dataset_name, output_folder))
    return evaluators
