#!/usr/bin/env python
"""Pictures of what FocalNet's focal modulation looks at: per stage, the modulator and each focal level's gate.

    python tools/visualize_modulation.py --config-file configs/X.yaml --input img.jpg folder/ 'dir/*.png' \
        --output out/ [--block -1] [--opts] MODEL.WEIGHTS model.pth

For each image, one PNG grid in --output (same name as the image, .png): one row per stage (res2..res5), first the
L2 norm over channels of the modulator h(ctx_all), bilinearly upsampled and overlaid on the image, then the gate of
each focal level and the global gate. Each picture is scaled to its own range, written above it (the modulator
from its min, blue, to its max, red; a gate from -max|gate|, blue, through zero, white, to max|gate|, red).
--save-arrays also writes the maps (full resolution) as <name>.npz.

Any config of any head family works (only its backbone is built), with or without MODEL.WEIGHTS (an official,
timm or Detectron2 checkpoint; without, a randomly initialised backbone). Images are resized as at test time
(INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) and normalised by MODEL.PIXEL_MEAN / PIXEL_STD, as the model sees them.
Unreadable inputs are reported on stderr and skipped. Exit status: 0 if at least one picture was written, 2 if
none was or the configuration is wrong. The same maps in a notebook: focalnet_det.visualize.modulation_maps.
"""
import argparse
import os
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")  # raised by Detectron2's import

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from detectron2.modeling import build_backbone  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import focalnet_det  # noqa: E402,F401  (registers the backbones)
from focalnet_det.errors import UserError, run_tool  # noqa: E402
from focalnet_det.fileio import atomic_path  # noqa: E402
from focalnet_det.inference import (  # noqa: E402
    add_inference_arguments, expand_inputs, for_each_input, load_tool_config, load_weights, output_path, read_image,
    split_overrides,
)
from focalnet_det.visualize import find_focalnet, image_modulation_grid  # noqa: E402


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(p, output_help="folder for the pictures (created if missing)",
                            inputs_help="images, folders of images or glob patterns")
    p.add_argument("--block", type=int, default=-1, help="which block of each stage (Python index; default the last)")
    p.add_argument("--save-arrays", action="store_true", help="also write the maps as <name>.npz")
    return p


def build_focalnet(cfg):
    """The config's backbone (FPN included, as the checkpoints name it), with MODEL.WEIGHTS loaded, in eval mode.

    It sits under ``backbone.`` of a holder module, as in a whole model, so that whole-model checkpoints (their heads
    left unused), backbone-only ones and official/timm files all load by the project's checkpointer."""
    holder = nn.Module()
    try:
        holder.backbone = build_backbone(cfg)
        find_focalnet(holder)
    except (KeyError, ValueError) as e:  # unknown registry name, bad MODEL.FOCALNET values, no FocalNet in it
        raise UserError(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME}: {' '.join(str(e).split())}") from None
    holder.to(cfg.MODEL.DEVICE).eval()
    load_weights(holder, cfg.MODEL.WEIGHTS, "the maps")
    return holder.backbone


def visualize(backbone, cfg, path, out_path, block=-1, save_arrays=False):
    image = read_image(path, format=cfg.INPUT.FORMAT)
    fig, maps, _ = image_modulation_grid(backbone, cfg, image, title=os.path.basename(path), block=block)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    if save_arrays:
        arrays = {f"{stage}_{name}": m[name] for stage, m in maps.items() for name in ("modulator", "gates")}
        with atomic_path(os.path.splitext(out_path)[0] + ".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="focalnet_det")
    setup_logger()
    cfg = load_tool_config(args, split_overrides(args))
    paths = expand_inputs(args.input, videos=False)
    backbone = build_focalnet(cfg)
    os.makedirs(args.output, exist_ok=True)
    used = set()
    for_each_input(
        paths, lambda path: visualize(backbone, cfg, path, output_path(args.output, path, used, ".png"), args.block,
                                      args.save_arrays),
        "visualize_modulation.py", "modulation maps", args.output)
    return 0


if __name__ == "__main__":
    run_tool(main)
