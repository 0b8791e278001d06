#!/usr/bin/env python
"""Export a model to TorchScript or ONNX, run the export on a sample image and compare it with the eager model.

    python tools/export_model.py --config-file configs/X.yaml --format torchscript --output DIR \
        [--sample-image IMG] [--backbone-only] [--time N] [--opts] MODEL.WEIGHTS model.pth

What can be exported (focalnet_det/export/; README "Pictures and export" has the table of inputs and outputs):

  model (META_ARCHITECTURE)        torchscript (DIR/model.ts)              onnx (DIR/model.onnx, opset 17)
  Mask R-CNN (GeneralizedRCNN)     yes: Detectron2's TracingAdapter        no (needs custom ops): torchscript
  UPerNet (SemanticSegmentor)      yes: TracingAdapter                     yes: image -> semantic logits
  Mask2Former (MaskFormer)         yes: image -> class and mask logits (+ semantic scores when SEMANTIC_ON)
  DINO                             yes: image -> top-k boxes, scores, labels (post-processing in the graph)
  --backbone-only (the FocalNet)   yes: image -> feature maps              yes: image -> feature maps

Shapes are those of the sample image: export at the size you deploy at (the sample image is used as it is, not
resized). DIR/model.json records the input, the outputs, what loading the file needs and the check.

The check: the exported file is loaded again (torch.jit.load / onnxruntime on the CPU), run on the sample image
(default: a seeded random INPUT.MIN_SIZE_TEST square), and compared with the eager model on the same input. The
largest absolute difference is printed; exit status 1 when it exceeds 1e-3 of the eager output's largest absolute
value, 2 for a configuration or combination that cannot be exported (one line saying why and what to use instead).
--time N also times the eager model and the exported file, alternating, N runs each (medians in model.json).
"""
import argparse
import re
import sys
import warnings

# torch.jit's deprecation notices (Detectron2's import calls torch.jit.script; tracing is what this tool does)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated")

import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import focalnet_det  # noqa: E402,F401  (registers the models)
from focalnet_det.errors import UserError, run_tool  # noqa: E402
from focalnet_det.export import TOLERANCE, build_export_model, export_config, export_model, sample_image  # noqa: E402

CFG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--output", required=True, metavar="DIR", help="folder for model.ts / model.onnx (created)")
    p.add_argument("--sample-image", metavar="IMG", help="image to trace with and check on (default: random)")
    p.add_argument("--backbone-only", action="store_true", help="export the FocalNet backbone alone")
    p.add_argument("--time", type=int, default=0, metavar="N",
                   help="also time the eager model and the exported file, alternating, N runs each")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def split_overrides(args):
    """Trailing KEY VALUE pairs may land after --sample-image's value: argparse keeps them in ``overrides``."""
    opts = list(args.opts) + list(args.overrides)
    bad = [o for o in opts[::2] if not CFG_KEY.match(o)]
    if bad:
        raise UserError(f"not a config key: {bad[0]} (overrides are KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth)")
    return opts


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.time < 0:
        raise UserError(f"--time must be 0 or more, got {args.time}")
    setup_logger(name="fvcore")
    setup_logger(name="focalnet_det")
    setup_logger()
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release")  # Detectron2's anchors
    cfg = export_config(args.config_file, split_overrides(args), args.format, args.backbone_only)
    image = sample_image(cfg, args.sample_image)
    model = build_export_model(cfg, args.backbone_only)
    summary = export_model(cfg, model, image, args.output, args.format, args.backbone_only, args.time,
                           args.config_file)
    check, what = summary["check"], summary["model"]
    worst, scale = check["max_abs_diff"], check["max_abs_eager"]
    print(f"{what} -> {args.output}/{summary['file']}: max |eager - exported| = {worst:.3g} (largest eager |value| "
          f"{scale:.3g}, tolerance {check['tolerance']:.3g}): {'ok' if check['passed'] else 'FAILED'}")
    if "latency" in summary:
        lat = summary["latency"]
        print(f"latency (median of {args.time}, {lat['threads']} thread(s)): eager {lat['eager']['median_s']:.4g} s, "
              f"{args.format} {lat[args.format]['median_s']:.4g} s")
    if not check["passed"]:
        print(f"export_model.py: error: the exported {what} differs from the eager model by {worst:.3g} "
              f"> {TOLERANCE:g} x {scale:.3g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_tool(main)
