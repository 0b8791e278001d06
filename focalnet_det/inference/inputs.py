"""What the tools read: input expansion (files, folders, globs, videos), image and video-frame reading that fails
with an ``OSError`` naming the problem, unique output names, and the loop over inputs that reports and skips bad ones.
Shared by ``tools/demo.py``, ``tools/predict.py``, ``tools/visualize_modulation.py`` and the web page."""
import argparse
import glob
import logging
import os
import re
import sys

import cv2
import tqdm

from detectron2.data.detection_utils import read_image as _d2_read_image

from ..errors import UserError

__all__ = [
    "IMAGE_EXTS", "VIDEO_EXTS", "add_inference_arguments", "is_video", "split_overrides", "expand_inputs",
    "read_image", "video_frames", "output_path", "for_each_input",
]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg"}
CFG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")
logger = logging.getLogger(__name__)


def add_inference_arguments(parser, output_help=None, inputs_help=None):
    """The arguments the inference tools share: ``--config-file``, ``--input`` (when ``inputs_help``), ``--output``
    (when ``output_help``), ``--opts`` and trailing ``KEY VALUE`` overrides (read them with :func:`split_overrides`),
    and the ``--register-*`` dataset flags (``focalnet_det.data``)."""
    from ..data import add_dataset_arguments

    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    if inputs_help:
        parser.add_argument("--input", nargs="+", required=True, help=inputs_help)
    if output_help:
        parser.add_argument("--output", required=True, help=output_help)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    add_dataset_arguments(parser)
    return parser


def is_video(path):
    return os.path.splitext(path)[1].lower() in VIDEO_EXTS


def split_overrides(args):
    """Trailing KEY VALUE pairs may land in ``args.input`` (argparse's nargs="+"): move them, from the first config
    key on, to the overrides; returns ``args.opts + args.overrides + those``."""
    for i, item in enumerate(getattr(args, "input", None) or []):
        if CFG_KEY.match(item) and not os.path.exists(item):
            args.input, extra = args.input[:i], args.input[i:]
            return args.opts + args.overrides + extra
    return args.opts + args.overrides


def expand_inputs(items, videos=True):
    """Folders become their image (and, with ``videos``, video) files, sorted; glob patterns are expanded; other
    paths stay as given (a missing one is reported when it is read). A UserError when nothing is found."""
    exts = IMAGE_EXTS | (VIDEO_EXTS if videos else set())
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item))
            paths += [f for f in found if os.path.splitext(f)[1].lower() in exts]
        elif not os.path.exists(item) and glob.has_magic(item):
            paths += sorted(glob.glob(os.path.expanduser(item)))
        else:
            paths.append(item)
    if not paths:
        raise UserError(f"no input images found in {list(items)}")
    return paths


def read_image(path, format="BGR"):
    """The image as an (H, W, 3) uint8 array (Detectron2's reader: EXIF orientation applied); any failure is an
    ``OSError`` with a one-line reason."""
    if not os.path.isfile(path):
        raise OSError("no such file")
    try:
        return _d2_read_image(path, format=format)
    except Exception as e:  # PIL raises several kinds for unreadable files
        raise OSError(" ".join(str(e).split()) or type(e).__name__) from None


def video_frames(path):
    """Yield ``(index, BGR frame)`` of a video; ``OSError`` when it cannot be opened or holds no frame. The capture
    is released when the generator ends or is closed."""
    if not os.path.isfile(path):
        raise OSError("no such file")
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise OSError("not a readable video")
    try:
        index = 0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            yield index, frame
            index += 1
        if index == 0:
            raise OSError("no frame could be read")
    finally:
        video.release()


def video_info(path):
    """(frames per second, frame count or None, (width, height)) of a readable video."""
    video = cv2.VideoCapture(path)
    try:
        count = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
        size = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
        return video.get(cv2.CAP_PROP_FPS) or 25, count or None, size
    finally:
        video.release()


def output_path(output_dir, path, used, ext=None):
    """``output_dir/<name of path>`` (``ext`` replaces the suffix; non-PNG/JPG suffixes become .png), made unique
    against ``used`` (a set, updated) with ``_1``, ``_2`` ... when two inputs share a name."""
    stem, suffix = os.path.splitext(os.path.basename(path))
    suffix = ext if ext is not None else (suffix if suffix.lower() in {".png", ".jpg", ".jpeg"} else ".png")
    name, k = stem + suffix, 1
    while name in used:
        name, k = f"{stem}_{k}{suffix}", k + 1
    used.add(name)
    return os.path.join(output_dir, name)


def for_each_input(paths, process, tool, desc, output):
    """Call ``process(path)`` for every path under a progress bar; an ``OSError`` (unreadable input) is reported on
    stderr as ``<tool>: skipped <path>: <reason>`` and the path skipped; the tally is logged (``output``: where the
    results went). Returns the paths done; a ``UserError`` when none was."""
    done, skipped = [], []
    for path in tqdm.tqdm(paths, disable=len(paths) < 2, desc=desc):
        try:
            process(path)
        except OSError as e:
            tqdm.tqdm.write(f"{tool}: skipped {path}: {e}", file=sys.stderr)
            skipped.append(path)
            continue
        done.append(path)
    if not done:
        raise UserError(f"none of the {len(paths)} inputs could be read")
    logger.info(f"{desc}: {len(done)} of {len(paths)} inputs done, into {output}"
                + (f"; skipped {skipped}" if skipped else ""))
    return done
