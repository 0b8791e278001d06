#!/usr/bin/env python
"""Write a model's predictions as files other programs read (no ground truth needed), for any head family.

    python tools/predict.py --config-file configs/X.yaml --input img.jpg folder/ 'dir/*.png' clip.mp4 \
        --output out/ [--score-threshold 0.3] [--top-k 50] [--resume] [--register-coco NAME JSON DIR ...] \
        MODEL.WEIGHTS model.pth [TEST.TILE.SIZE 640]

Under --output, for what the model predicts:
  instances  predictions.json  COCO results (dataset category ids, RLE masks): pycocotools COCO.loadRes reads it
             annotations.json  COCO dataset (images, annotations with a "score", categories): CVAT / Label Studio
  semantic   sem_seg/<stem>.png               label maps with the dataset's label values
  panoptic   panoptic/<stem>.png + panoptic.json   COCO panoptic
and journal.jsonl, one line per image done: --resume continues an interrupted run without predicting those again.
Class names and ids come from the metadata of DATASETS.TEST[0] (a built-in dataset or one of --register-*).
Video frames are images named <video stem>_<frame:06d>.jpg. Unreadable inputs are reported on stderr and skipped.
Exit status: 0 if at least one input was predicted, 2 if none was or the configuration is wrong.
"""
import argparse
import logging
import os
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")  # raised by Detectron2's import

from detectron2.utils.logger import setup_logger  # noqa: E402

from focalnet_det.allocator import reuse_freed_memory  # noqa: E402
from focalnet_det.errors import UserError, run_tool  # noqa: E402
from focalnet_det.inference import (  # noqa: E402
    PredictionWriter, Predictor, add_inference_arguments, expand_inputs, for_each_input, is_video, load_tool_config, read_image,
    split_overrides, video_frames,
)

logger = logging.getLogger("focalnet_det.predict")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(p, output_help="folder for the prediction files (created if missing)",
                            inputs_help="images, folders of images, glob patterns ('dir/*.jpg') or video files")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="minimum score of written instances (default: the config's, e.g. 0.05 for Mask R-CNN)")
    p.add_argument("--top-k", type=int, default=None, help="at most this many instances per image, best first")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same --output")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    reuse_freed_memory()
    setup_logger(name="fvcore")
    setup_logger(name="focalnet_det")
    setup_logger()
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    cfg = load_tool_config(args, split_overrides(args), args.score_threshold)
    paths = expand_inputs(args.input)
    predictor = Predictor(cfg)
    writer = PredictionWriter(args.output, predictor.metadata, resume=args.resume,
                              score_threshold=args.score_threshold or 0.0, top_k=args.top_k)
    if writer.done:
        logger.info(f"--resume: {len(writer.done)} images already predicted in {args.output}")

    def predict(key, file_name, image):
        if not writer.is_done(key):
            writer.add(key, file_name, image.shape[:2], predictor(image))

    def process(path):
        if is_video(path):
            stem = os.path.splitext(os.path.basename(path))[0]
            for index, frame in video_frames(path):
                predict(f"{os.path.abspath(path)}#{index}", f"{stem}_{index:06d}.jpg", frame)
        elif not writer.is_done(os.path.abspath(path)):
            predict(os.path.abspath(path), os.path.basename(path), read_image(path, format="BGR"))

    for_each_input(paths, process, "predict.py", "predict", args.output)
    logger.info(f"wrote {', '.join(writer.finish())}")
    return 0


if __name__ == "__main__":
    run_tool(main)
