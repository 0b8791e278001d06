#!/usr/bin/env python
"""Draw a model's predictions (instances, semantic or panoptic segmentation) on images or videos.

    python tools/demo.py --config-file configs/X.yaml --input img.jpg folder/ clip.mp4 \
        --output out/ [--confidence-threshold 0.5] [--opts] MODEL.WEIGHTS model.pth MODEL.DEVICE cpu

Writes one picture per input image into --output (same name; non-PNG/JPG inputs become .png) and,
for a video, OUTPUT/<name>.mp4. Large images: TEST.TILE.SIZE 640 (tiled inference, see README). Unreadable inputs
are reported on stderr and skipped. Exit status: 0 if at least one input was drawn, 2 if none was or the
configuration is wrong. The prediction files themselves: tools/predict.py.
"""
import argparse
import itertools
import os
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")  # raised by Detectron2's import

import cv2  # noqa: E402
import tqdm  # noqa: E402

from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.video_visualizer import VideoVisualizer  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

from focalnet_det.allocator import reuse_freed_memory  # noqa: E402
from focalnet_det.errors import run_tool  # noqa: E402
from focalnet_det.fileio import atomic_path  # noqa: E402
from focalnet_det.inference import (  # noqa: E402
    Predictor, add_inference_arguments, expand_inputs, for_each_input, is_video, load_tool_config, output_path,
    read_image, split_overrides, video_frames,
)
from focalnet_det.inference.inputs import video_info  # noqa: E402
from focalnet_det.visualize import draw_predictions  # noqa: E402


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(p, output_help="folder for the pictures (created if missing)",
                            inputs_help="images, folders of images, glob patterns ('dir/*.jpg') or video files")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score of drawn instances")
    p.add_argument("--scale", type=float, default=1.0, help="drawing scale of still images (e.g. 3 for small ones)")
    return p


def process_image(predictor, path, out_path, threshold, scale=1.0):
    image = read_image(path, format="BGR")  # what the predictor takes
    visualizer = Visualizer(image[:, :, ::-1], predictor.metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    vis = draw_predictions(visualizer, predictor(image), threshold)
    if vis is None:
        raise RuntimeError("the model returned nothing drawable")
    with atomic_path(out_path) as tmp:
        cv2.imwrite(tmp, vis.get_image()[:, :, ::-1])


def process_video(predictor, path, out_path, threshold):
    frames = video_frames(path)
    first = next(frames)  # OSError here: not a video
    fps, count, size = video_info(path)
    visualizer = VideoVisualizer(predictor.metadata, ColorMode.IMAGE)
    with atomic_path(out_path) as tmp:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        try:
            for _, frame in tqdm.tqdm(itertools.chain([first], frames), total=count, desc=os.path.basename(path),
                                      leave=False):
                vis = draw_predictions(visualizer, predictor(frame), threshold, frame=frame[:, :, ::-1])
                writer.write(vis.get_image()[:, :, ::-1])
        finally:
            writer.release()


def main(argv=None):
    args = get_parser().parse_args(argv)
    reuse_freed_memory()  # large CPU buffers: reused instead of page-faulted anew (focalnet_det/allocator.py)
    setup_logger(name="fvcore")
    setup_logger(name="focalnet_det")
    setup_logger()
    cfg = load_tool_config(args, split_overrides(args), args.confidence_threshold)
    paths = expand_inputs(args.input)
    os.makedirs(args.output, exist_ok=True)
    predictor = Predictor(cfg)
    used, outputs = set(), {}

    def process(path):
        video = is_video(path)
        out_path = outputs[path] = output_path(args.output, path, used, ".mp4" if video else None)
        if video:
            process_video(predictor, path, out_path, args.confidence_threshold)
        else:
            process_image(predictor, path, out_path, args.confidence_threshold, args.scale)

    for_each_input(paths, process, "demo.py", "demo", args.output)
    return 0


if __name__ == "__main__":
    run_tool(main)
