#!/usr/bin/env python
"""Draw a model's predictions (instances, semantic or panoptic segmentation) on images or videos.

    python tools/demo.py --config-file configs/X.yaml --input img.jpg folder/ clip.mp4 \
        --output out/ [--confidence-threshold 0.5] [--opts] MODEL.WEIGHTS model.pth MODEL.DEVICE cpu

Writes one picture per input image into --output (same name; non-PNG/JPG inputs become .png) and,
for a video, OUTPUT/<name>.mp4. Unreadable inputs are reported on stderr and skipped. Exit status:
0 if at least one input was drawn, 2 if none was or the configuration is wrong.
"""
import argparse
import glob
import logging
import os
import re
import sys
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")  # raised by Detectron2's import

import cv2  # noqa: E402
import tqdm  # noqa: E402

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.video_visualizer import VideoVisualizer  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

from focalnet_det.config import check_weights_file, load_config  # noqa: E402
from focalnet_det.allocator import reuse_freed_memory  # noqa: E402
from focalnet_det.errors import UserError  # noqa: E402

from focalnet_det.checkpoint import FocalNetCheckpointer as Checkpointer  # noqa: E402

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg"}
CFG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")
logger = logging.getLogger("focalnet_det.demo")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    p.add_argument("--input", nargs="+", required=True,
                   help="images, folders of images, glob patterns ('dir/*.jpg') or video files")
    p.add_argument("--output", required=True, help="folder for the pictures (created if missing)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score of drawn instances")
    p.add_argument("--scale", type=float, default=1.0, help="drawing scale of still images (e.g. 3 for small ones)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def split_overrides(args):
    """Trailing KEY VALUE pairs may land in --input: move them (from the first config key on) to the opts."""
    for i, item in enumerate(args.input):
        if CFG_KEY.match(item) and not os.path.exists(item):
            args.input, extra = args.input[:i], args.input[i:]
            return args.opts + args.overrides + extra
    return args.opts + args.overrides


def setup_cfg(args, opts):
    cfg = load_config(args.config_file, opts)
    thr = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = thr
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = thr
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = thr
    check_weights_file(cfg)
    cfg.freeze()
    return cfg


def build_predictor(cfg):
    """DefaultPredictor, with the weights read by the project's checkpointer (official/timm/Detectron2 files)."""
    empty = cfg.clone()
    empty.defrost()
    empty.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(empty)
    if cfg.MODEL.WEIGHTS:
        Checkpointer(predictor.model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: drawing the predictions of a randomly initialised model")
    predictor.cfg = cfg
    return predictor


def expand_inputs(items):
    """Folders become their image files (sorted); glob patterns are expanded; other paths stay as given."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item))
            paths += [f for f in found if os.path.splitext(f)[1].lower() in IMAGE_EXTS]
        elif not os.path.exists(item) and glob.has_magic(item):
            paths += sorted(glob.glob(os.path.expanduser(item)))
        else:
            paths.append(item)
    return paths


def draw(visualizer, predictions, threshold, frame=None):
    """Panoptic if present, else semantic and/or instances, as in Detectron2's demo.

    ``frame``: the RGB frame when ``visualizer`` is a VideoVisualizer (which takes it per call)."""
    args = () if frame is None else (frame,)
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        fn = visualizer.draw_panoptic_seg if frame is None else visualizer.draw_panoptic_seg_predictions
        return fn(*args, panoptic_seg.to("cpu"), segments_info)
    vis = None
    if "sem_seg" in predictions:
        vis = visualizer.draw_sem_seg(*args, predictions["sem_seg"].argmax(dim=0).to("cpu"))
        args = () if frame is None else (vis.get_image(),)
    if "instances" in predictions:
        instances = predictions["instances"].to("cpu")
        if instances.has("scores"):
            instances = instances[instances.scores >= threshold]
        vis = visualizer.draw_instance_predictions(*args, instances)
    return vis


def output_path(output_dir, path, used, ext=None):
    stem, suffix = os.path.splitext(os.path.basename(path))
    suffix = ext or (suffix if suffix.lower() in {".png", ".jpg", ".jpeg"} else ".png")
    name, k = stem + suffix, 1
    while name in used:  # two inputs with the same name
        name, k = f"{stem}_{k}{suffix}", k + 1
    used.add(name)
    return os.path.join(output_dir, name)


def process_image(predictor, metadata, path, out_path, threshold, scale=1.0):
    try:
        image = read_image(path, format="BGR")  # what DefaultPredictor expects
    except Exception as e:  # PIL raises several kinds for unreadable files
        raise OSError(" ".join(str(e).split()) or type(e).__name__) from None
    predictions = predictor(image)
    visualizer = Visualizer(image[:, :, ::-1], metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    vis = draw(visualizer, predictions, threshold)
    if vis is None:
        raise RuntimeError(f"the model returned nothing drawable ({sorted(predictions)})")
    cv2.imwrite(out_path, vis.get_image()[:, :, ::-1])


def process_video(predictor, metadata, path, out_path, threshold):
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise OSError("not a readable video")
    fps = video.get(cv2.CAP_PROP_FPS) or 25
    size = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
    frames = 0
    try:
        with tqdm.tqdm(total=int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None, desc=os.path.basename(path),
                       leave=False) as bar:
            while True:
                ok, frame = video.read()
                if not ok:
                    break
                vis = draw(visualizer, predictor(frame), threshold, frame=frame[:, :, ::-1])
                writer.write(vis.get_image()[:, :, ::-1])
                frames += 1
                bar.update()
    finally:
        video.release()
        writer.release()
    if not frames:
        os.remove(out_path)
        raise OSError("no frame could be read")


def main(argv=None):
    args = get_parser().parse_args(argv)
    reuse_freed_memory()  # large CPU buffers: reused instead of page-faulted anew (focalnet_det/allocator.py)
    setup_logger(name="fvcore")
    setup_logger(name="focalnet_det")
    setup_logger()
    cfg = setup_cfg(args, split_overrides(args))
    paths = expand_inputs(args.input)
    if not paths:
        raise UserError(f"no input images found in {args.input}")
    os.makedirs(args.output, exist_ok=True)
    predictor = build_predictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")

    done, skipped, used = [], [], set()
    for path in tqdm.tqdm(paths, disable=len(paths) < 2, desc="demo"):
        is_video = os.path.splitext(path)[1].lower() in VIDEO_EXTS
        out_path = output_path(args.output, path, used, ".mp4" if is_video else None)
        try:
            if not os.path.isfile(path):
                raise OSError("no such file")
            if is_video:
                process_video(predictor, metadata, path, out_path, args.confidence_threshold)
            else:
                process_image(predictor, metadata, path, out_path, args.confidence_threshold, args.scale)
        except OSError as e:
            tqdm.tqdm.write(f"demo.py: skipped {path}: {e}", file=sys.stderr)
            skipped.append(path)
            continue
        done.append(out_path)
    logger.info(f"drew {len(done)} of {len(paths)} inputs into {args.output}" + (f"; skipped {skipped}" if skipped else ""))
    if not done:
        raise UserError(f"none of the {len(paths)} inputs could be read")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        sys.exit(2)
