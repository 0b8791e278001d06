"""Predictions out: the predictor (with tiled inference for large images), the readers of the tools' inputs, and the
writers of prediction files (COCO results and annotations, semantic and panoptic PNGs). Used by ``tools/demo.py``,
``tools/predict.py`` and ``tools/web_demo.py`` alike."""
from .inputs import (
    add_inference_arguments, expand_inputs, for_each_input, is_video, output_path, read_image, split_overrides,
    video_frames,
)
from .predictor import (
    Predictor, dataset_metadata, load_tool_config, load_weights, sem_seg_labels, set_score_threshold, thing_ids,
)
from .tiling import CroppedMasks, InstanceMerger, merge_instances, tile_windows
from .writers import PredictionWriter, instances_to_records

__all__ = [
    "Predictor", "PredictionWriter", "add_inference_arguments", "CroppedMasks", "InstanceMerger", "tile_windows",
    "merge_instances", "expand_inputs", "for_each_input", "is_video", "output_path", "read_image", "split_overrides",
    "video_frames", "sem_seg_labels", "set_score_threshold", "load_tool_config", "load_weights", "thing_ids",
    "dataset_metadata", "instances_to_records",
]
