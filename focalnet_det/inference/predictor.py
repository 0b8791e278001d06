"""The predictor every tool uses: a config's model with its weights read by the project's checkpointer (official,
timm, Hugging Face or Detectron2 files), one image in, Detectron2's outputs out, tiled when ``TEST.TILE.SIZE`` > 0.

    from focalnet_det.inference import Predictor
    predictor = Predictor(cfg)          # cfg from focalnet_det.config.load_config(...)
    outputs = predictor(bgr_image)      # {"instances": ..., "sem_seg": ..., "panoptic_seg": ...}

A tiled prediction (image larger than a tile) returns ``instances`` with ``pred_masks`` as
:class:`~focalnet_det.inference.tiling.CroppedMasks`, ``sem_seg_labels`` (an (H, W) label map) instead of the
``sem_seg`` scores, and ``panoptic_seg`` built from those two; :func:`sem_seg_labels` reads either form.
"""
import contextlib
import logging

import torch
import tqdm

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor

from ..checkpoint import FocalNetCheckpointer
from ..errors import UserError
from .tiling import InstanceMerger, SemanticBand, localize_instances, paint_panoptic, tile_windows

__all__ = [
    "Predictor", "load_weights", "load_tool_config", "set_score_threshold", "sem_seg_labels", "thing_ids",
    "dataset_metadata",
]

logger = logging.getLogger(__name__)


def set_score_threshold(cfg, threshold):
    """The minimum score of the models' instance outputs (Mask R-CNN / Cascade, RetinaNet, Panoptic FPN) in ``cfg``
    (not frozen); Mask2Former and DINO keep their own selection (filter their scores afterwards)."""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = threshold


def load_weights(module, weights, what="the predictions"):
    """``weights`` (``MODEL.WEIGHTS``: an official, timm, Hugging Face or Detectron2 file) into ``module`` by the
    project's checkpointer; empty: a warning that ``what`` come from a randomly initialised model."""
    if weights:
        FocalNetCheckpointer(module).load(weights)
    else:
        logger.warning(f"MODEL.WEIGHTS is empty: {what} of a randomly initialised model")


def load_tool_config(args, opts, score_threshold=None):
    """The frozen config of an inference tool: the datasets of its ``--register-*`` flags registered first (their
    class names and ids reach the outputs through ``DATASETS.TEST``), then ``--config-file`` and ``opts``; the
    instance score threshold when given; a missing ``MODEL.WEIGHTS`` file is a UserError."""
    from ..config import check_weights_file, load_config
    from ..data import register_datasets_from_args

    register_datasets_from_args(args)
    cfg = load_config(args.config_file, opts)
    if score_threshold is not None:
        set_score_threshold(cfg, score_threshold)
    check_weights_file(cfg)
    cfg.freeze()
    return cfg


def dataset_metadata(cfg):
    """The metadata of the config's first test dataset (class names, colours, id mappings), else an empty one."""
    return MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")


def thing_ids(metadata):
    """Contiguous ids of the thing classes (None: every class is a thing)."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    return None if mapping is None else set(mapping.values())


def sem_seg_labels(predictions):
    """The (H, W) label map of a prediction: ``sem_seg_labels`` (tiled), else the argmax of ``sem_seg``."""
    if "sem_seg_labels" in predictions:
        return predictions["sem_seg_labels"]
    return predictions["sem_seg"].argmax(dim=0).to("cpu")


class Predictor:
    """``cfg``'s model in eval mode with ``MODEL.WEIGHTS`` loaded; ``predictor(bgr_image)`` -> outputs in the
    image's coordinates. Images go through Detectron2's ``DefaultPredictor`` (test resize, ``INPUT.FORMAT``); with
    ``TEST.TILE.SIZE`` > 0 an image larger than that is predicted tile by tile (each tile resized as an image would
    be) and the results merged (``focalnet_det/inference/tiling.py``)."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        empty = cfg.clone()
        empty.defrost()
        empty.MODEL.WEIGHTS = ""  # DefaultPredictor's own loading knows Detectron2 files only
        try:
            self._predictor = DefaultPredictor(empty)
        except (KeyError, ValueError, AssertionError) as e:  # unknown registry name, inconsistent model keys
            raise UserError(f"{cfg.MODEL.META_ARCHITECTURE}: cannot build the model: {' '.join(str(e).split())}") from None
        self.model = self._predictor.model
        load_weights(self.model, cfg.MODEL.WEIGHTS)
        self.metadata = dataset_metadata(cfg)
        self.tile_size, self.tile_overlap = int(cfg.TEST.TILE.SIZE), float(cfg.TEST.TILE.OVERLAP)
        if self.tile_size:
            tile_windows(self.tile_size, self.tile_size, self.tile_size, self.tile_overlap)  # checks the keys early

    @property
    def test_resize(self):
        """The test-time resize (a Detectron2 augmentation) images go through."""
        return self._predictor.aug

    def __call__(self, image):
        """``image``: (H, W, 3) uint8, BGR. Returns Detectron2's per-image output dict."""
        if not self.tile_size or max(image.shape[:2]) <= self.tile_size:
            return self._predictor(image)
        return self.predict_tiled(image)

    @contextlib.contextmanager
    def _per_tile_outputs(self):
        """A panoptic Mask2Former gives its tiles' instances and semantic scores instead (the panoptic result is
        built from their merge); the model's switches are put back afterwards."""
        model = self.model
        if not getattr(model, "panoptic_on", False):
            yield
            return
        saved = model.panoptic_on, model.instance_on, model.semantic_on
        model.panoptic_on, model.instance_on, model.semantic_on = False, True, True
        try:
            yield
        finally:
            model.panoptic_on, model.instance_on, model.semantic_on = saved

    def predict_tiled(self, image):
        H, W = image.shape[:2]
        windows = tile_windows(H, W, self.tile_size, self.tile_overlap)
        model = self.model
        panoptic = getattr(model, "panoptic_on", False)
        things = thing_ids(self.metadata)
        is_thing = (lambda c: True) if things is None else (lambda c: c in things)
        merger, band = None, None
        with self._per_tile_outputs():
            for window in tqdm.tqdm(windows, desc="tiles", leave=False, disable=len(windows) < 16):
                x0, y0, x1, y1 = window
                out = self._predictor(image[y0:y1, x0:x1])
                if "instances" in out:
                    inst = out["instances"].to("cpu")
                    if panoptic:  # things only, as a panoptic Mask2Former's instances
                        inst = inst[torch.tensor([is_thing(int(c)) for c in inst.pred_classes], dtype=torch.bool)]
                    merger = merger or InstanceMerger((H, W), self.cfg.TEST.DETECTIONS_PER_IMAGE)
                    merger.add(localize_instances(inst, window, (H, W)))
                if "sem_seg" in out:
                    if band is None:
                        sets = {"all": None}
                        if panoptic:
                            sets["stuff"] = [c for c in range(out["sem_seg"].shape[0]) if not is_thing(c)] or None
                        band = SemanticBand((H, W), sets)
                    band.add(out["sem_seg"].to("cpu"), window)
        result = {}
        merged = merger.result() if merger is not None else None
        labels = band.finish() if band is not None else None
        if merged is not None and (not panoptic or model.instance_on):
            result["instances"] = merged
        if labels is not None and (not panoptic or model.semantic_on):
            result["sem_seg_labels"] = labels["all"]
        if panoptic:
            result["panoptic_seg"] = paint_panoptic(
                merged, labels["stuff"], is_thing, model.object_mask_threshold, model.overlap_threshold
            )
        return result
