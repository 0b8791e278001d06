"""PQ with the PQ of every class: Detectron2's ``COCOPanopticEvaluator`` reports all / things / stuff only,
although panopticapi computes each class's PQ in the same run."""
import contextlib
import json
import logging

from tabulate import tabulate

from detectron2.evaluation import COCOPanopticEvaluator

__all__ = ["PerClassPanopticEvaluator"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _keep_pq_result(store):
    """panopticapi's ``pq_compute`` (imported by the evaluator when it runs) also leaves its result in ``store``."""
    import panopticapi.evaluation as panoptic_evaluation

    compute = panoptic_evaluation.pq_compute

    def pq_compute(*args, **kwargs):
        store.update(compute(*args, **kwargs))
        return store

    panoptic_evaluation.pq_compute = pq_compute
    try:
        yield store
    finally:
        panoptic_evaluation.pq_compute = compute


class PerClassPanopticEvaluator(COCOPanopticEvaluator):
    """``COCOPanopticEvaluator`` whose results (and log) also hold ``PQ-<class>`` for every class of the
    dataset (``stuff_classes``, by ``stuff_dataset_id_to_contiguous_id``), from the same panopticapi run; NaN
    for a class found neither in the ground truth nor in the predictions."""

    def evaluate(self):
        with _keep_pq_result({}) as pq_res:
            results = super().evaluate()
        if not results or "per_class" not in pq_res:  # not the main process
            return results
        meta = self._metadata
        names = {i: meta.stuff_classes[c] for i, c in meta.stuff_dataset_id_to_contiguous_id.items()}
        # panopticapi gives 0 to a class that is neither in the ground truth nor predicted: NaN here, as COCO AP
        with open(meta.panoptic_json) as f:
            annotations = json.load(f)["annotations"]
        present = {s["category_id"] for a in annotations + self._predictions for s in a["segments_info"]
                   if not s.get("iscrowd", 0)}
        per_class = {names.get(i, str(i)): 100 * r["pq"] if i in present else float("nan")
                     for i, r in pq_res["per_class"].items()}
        results["panoptic_seg"].update({f"PQ-{name}": pq for name, pq in per_class.items()})
        rows = [(name, f"{pq:.3f}") for name, pq in per_class.items()]
        logger.info("Per-category PQ:\n" + tabulate(rows, headers=["category", "PQ"], tablefmt="pipe"))
        return results
