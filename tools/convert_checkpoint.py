#!/usr/bin/env python
"""Convert a FocalNet checkpoint to a Detectron2 checkpoint of the backbone (MODEL.WEIGHTS-ready).

Converting is optional: FocalNetCheckpointer (used by tools/train_net.py) reads all these inputs directly.
--inspect FILE prints what a checkpoint holds (format, variant, MODEL.FOCALNET, heads, fitting configs) instead.
"""
import argparse
import logging
import pickle
import sys
import warnings

# fvcore (imported by Detectron2) calls the deprecated torch.jit.script at import: keep stderr for errors
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

import torch  # noqa: E402

from focalnet_det.checkpoint import WHOLE_MODELS, convert_checkpoint  # noqa: E402
from focalnet_det.checkpoint.download import download, is_url  # noqa: E402
from focalnet_det.checkpoint.inspect import format_report, inspect_checkpoint  # noqa: E402
from focalnet_det.errors import UserError  # noqa: E402
from focalnet_det.fileio import atomic_open, atomic_path  # noqa: E402

logger = logging.getLogger("convert_checkpoint")

DESCRIPTION = __doc__ + """
Input formats, detected from the keys (not from the file name):
  official     the authors' FocalNet classification .pth ({"model": state_dict}; bare, "state_dict"-wrapped
               and "module."-prefixed ones too); the classification head and final norm are dropped
  timm         a timm FocalNet state dict, .safetensors or .pth (stem.*, downsample at stage start, 1x1-conv
               linears); renamed to the official layout
  huggingface  a Hugging Face transformers FocalNet (the Hub's microsoft/focalnet-*): its model.safetensors or
               pytorch_model.bin, or the folder holding it (sharded: its *.index.json); embeddings.*,
               encoder.stages.* renamed to the official layout, classifier and final layernorm dropped. The
               weights do not show use_post_layernorm or normalize_modulator: the model's MODEL.FOCALNET
               decides (the loader warns where it disagrees with the folder's config.json)
  mmdet/mmseg  an official FocalNet detection/segmentation checkpoint ("state_dict" with backbone.* and
               heads); the backbone part is kept, except for a released mmseg UPerNet (decode_head.*,
               auxiliary_head.*), which is converted whole for configs/ADE20K-SemanticSegmentation:
               backbone.*, sem_seg_head.*, sem_seg_head.auxiliary_head.* (--prefix does not apply), and a
               released mmdet Mask R-CNN / Cascade Mask R-CNN (neck.*, rpn_head.*, roi_head.*), converted whole
               for configs/COCO-InstanceSegmentation: backbone.bottom_up.*, backbone.fpn_*,
               proposal_generator.*, roi_heads.* (--prefix does not apply); other mmdet detectors (ATSS,
               Sparse R-CNN) give their backbone
  DINO         an official DINO / FocalNet-DINO checkpoint ({"model": ...} with transformer.*, label_enc,
               backbone.0.*): converted whole for the DINO configs (backbone.0. -> backbone., the decoder's
               shared class/box heads kept once); --prefix does not apply
  detectron2   a Detectron2 checkpoint ({"model": ...}) holding a FocalNet (e.g. backbone.bottom_up.*);
               the backbone part is kept

Output: {"model": {PREFIX + key: tensor}, "__author__": "focalnet_det", "matching_heuristics": False},
saved with torch.save (a .pkl OUT: pickled numpy arrays, as in Detectron2's model zoo), under a temporary
name renamed when complete. The backbone's output norms norm0..3 are not in classification weights and
start fresh in the model.

Reading runs nothing from IN: tensors, numbers, strings, containers, argparse.Namespace and numpy values are
read; entries of other classes are left unread; a file that would have to call a function is refused (exit
2). Only a file named in $FOCALNET_DET_TRUSTED_FILES is unpickled fully.

Focal kernels keep the checkpoint's sizes unless --focal-windows/--focal-levels are given (the loader
adapts them to the model at load time anyway): smaller kernels are zero-padded about the centre (which
preserves the function), larger ones centre-clipped; extra focal levels start with zero gates.
"""


def get_parser():
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", metavar="IN", nargs="?", help="checkpoint to convert (.pth, .pkl, .safetensors, "
                        "or a Hugging Face model folder), or its http(s) URL (downloaded into "
                        "$FOCALNET_DET_CACHE/weights)")
    parser.add_argument("output", metavar="OUT", nargs="?", help="Detectron2 checkpoint to write (.pth or .pkl)")
    parser.add_argument(
        "--inspect", metavar="FILE",
        help="print what FILE (a checkpoint, folder or URL) holds instead of converting: its format, FocalNet variant, "
        "the MODEL.FOCALNET values its weights imply, its heads and the configs in configs/ that fit it",
    )
    parser.add_argument(
        "--prefix",
        default="backbone.",
        help="key prefix of the backbone in the model (default: backbone.; FocalNetCheckpointer also maps "
        "it onto backbone.bottom_up. for FPN models)",
    )
    parser.add_argument(
        "--focal-windows", type=int, nargs="+", metavar="W",
        help="adapt focal kernels to these windows: one value, or one per stage (e.g. 9 9 9 9)",
    )
    parser.add_argument(
        "--focal-levels", type=int, nargs="+", metavar="L",
        help="adapt modulation.f to this many focal levels: one value, or one per stage",
    )
    return parser


convert = convert_checkpoint  # the package's pipeline: read safely, recognise, map, adapt


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if not args.inspect and not (args.input and args.output):
        parser.error("IN and OUT are required (unless --inspect FILE is given)")
    # information on stdout, for this call only (main may run in-process): stderr carries only the error line
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        return run(args)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def run(args):
    try:
        if args.inspect:
            print(format_report(inspect_checkpoint(download(args.inspect) if is_url(args.inspect) else args.inspect)))
            return 0
        source = download(args.input) if is_url(args.input) else args.input
        backbone, fmt = convert_checkpoint(source, args.focal_windows, args.focal_levels)
        prefix = "" if fmt in WHOLE_MODELS else args.prefix
        model = {prefix + k: v.contiguous() for k, v in backbone.items()}
        out = {"model": model, "__author__": "focalnet_det", "matching_heuristics": False}
        try:  # written under a temporary name, renamed when complete
            if args.output.endswith(".pkl"):  # Detectron2's model-zoo form: numpy arrays, which read back safely
                out["model"] = {k: v.numpy() for k, v in model.items()}
                with atomic_open(args.output, "wb") as f:
                    pickle.dump(out, f)
            else:
                with atomic_path(args.output) as tmp:
                    torch.save(out, tmp)
        except OSError as e:
            raise UserError(f"cannot write {args.output}: {e.strerror or e}") from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(v.numel() for v in model.values())
    logger.info(f"{args.input} ({fmt}) -> {args.output}: {len(model)} tensors, {n / 1e6:.2f} M parameters, "
                f"prefix '{prefix}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
