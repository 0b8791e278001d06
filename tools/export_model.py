#!/usr/bin/env python
"""Export a model to TorchScript or ONNX, run the export on a sample image and compare it with the eager model.

    python tools/export_model.py --config-file configs/X.yaml --format torchscript --output DIR \
        [--sample-image IMG] [--backbone-only] [--opts] MODEL.WEIGHTS model.pth

What can be exported:

  model (META_ARCHITECTURE)        torchscript (DIR/model.ts)              onnx (DIR/model.onnx, opset 17)
  Mask R-CNN (GeneralizedRCNN)     yes: Detectron2's TracingAdapter        no (needs custom ops): torchscript
  UPerNet (SemanticSegmentor)      yes: TracingAdapter                     yes: image -> semantic logits
  Mask2Former (MaskFormer)         semantic inference, TracingAdapter      no: torchscript
  --backbone-only (the FocalNet)   yes: image -> feature maps              yes: image -> feature maps

TorchScript through TracingAdapter (the three whole models): the traced module takes one image, a float (3, H, W)
tensor in the config's INPUT.FORMAT with values 0-255 (what Detectron2 models read from {"image": ...}), and
returns the flattened outputs, in the order of Detectron2's flatten_to_tuple (sorted keys):
  Mask R-CNN    pred_boxes (N, 4), pred_classes (N,), pred_masks (N, 1, M, M) mask probabilities before pasting,
                scores (N,), image_size: model.inference(..., do_postprocess=False), boxes in input pixels
                (Detectron2's detector_postprocess rescales boxes and pastes masks)
  UPerNet       sem_seg (C, H, W) logits
  Mask2Former   sem_seg (C, H, W) scores (MODEL.MASK_FORMER.TEST.SEMANTIC_ON forced on, panoptic/instance off)
The backbone and every ONNX graph take a float (1, 3, H, W) tensor "image" in INPUT.FORMAT with values 0-255:
MODEL.PIXEL_MEAN / PIXEL_STD normalisation (and, for UPerNet, the padding to the backbone's size divisibility)
happen inside. ONNX outputs: "sem_seg" (1, C, H, W) logits for UPerNet; "res2".."res5" (1, C_i, H_i, W_i) for the
backbone (MODEL.FOCALNET.OUT_FEATURES). Shapes are those of the sample image: export at the size you deploy at
(the sample image is used as it is, not resized). DIR/model.json records inputs, outputs and the check.

The check: the exported file is loaded again (torch.jit.load / onnxruntime on the CPU), run on the sample image
(default: a seeded random INPUT.MIN_SIZE_TEST square), and compared with the eager model on the same input. The
largest absolute difference is printed; exit status 1 when it exceeds 1e-3 of the eager output's largest absolute
value, 2 for a configuration or combination that cannot be exported (one line saying why and what to use instead).
"""
import argparse
import json
import logging
import os
import re
import sys
import warnings

# torch.jit's deprecation notices (Detectron2's import calls torch.jit.script; tracing is what this tool does)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.export import TracingAdapter  # noqa: E402
from detectron2.modeling import build_backbone, build_model  # noqa: E402
from detectron2.structures import ImageList, Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import focalnet_det  # noqa: E402,F401  (registers the models)
from focalnet_det.config import check_weights_file, load_config  # noqa: E402
from focalnet_det.errors import UserError  # noqa: E402

from focalnet_det.checkpoint import FocalNetCheckpointer as Checkpointer  # noqa: E402

CFG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")
OPSET = 17
TOLERANCE = 1e-3  # of the eager output's largest absolute value
logger = logging.getLogger("focalnet_det.export_model")

# what each META_ARCHITECTURE is called in messages, and the formats it exports to
MODELS = {"GeneralizedRCNN": "Mask R-CNN", "SemanticSegmentor": "UPerNet", "MaskFormer": "Mask2Former"}
ONNX_REFUSED = {
    "GeneralizedRCNN": "Mask R-CNN cannot be exported to ONNX without custom ops (Detectron2's RoIAlign, box decoding "
    "with data-dependent NMS and mask pasting have no standard ONNX operators): use --format torchscript, or "
    "--backbone-only for an ONNX backbone",
    "MaskFormer": "Mask2Former is not exported to ONNX here (its multi-scale deformable attention and masked "
    "attention are checked only under TorchScript): use --format torchscript (semantic inference), or "
    "--backbone-only for an ONNX backbone",
}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--output", required=True, metavar="DIR", help="folder for model.ts / model.onnx (created)")
    p.add_argument("--sample-image", metavar="IMG", help="image to trace with and check on (default: random)")
    p.add_argument("--backbone-only", action="store_true", help="export the FocalNet backbone alone")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def setup_cfg(config_file, opts, fmt, backbone_only):
    cfg = load_config(config_file, opts)
    arch = cfg.MODEL.META_ARCHITECTURE
    if not backbone_only:
        if arch not in MODELS:
            raise UserError(
                f"META_ARCHITECTURE {arch} cannot be exported: this tool exports Mask R-CNN (GeneralizedRCNN), UPerNet "
                "(SemanticSegmentor), Mask2Former (MaskFormer) and, with --backbone-only, the FocalNet backbone"
            )
        if fmt == "onnx" and arch in ONNX_REFUSED:
            raise UserError(ONNX_REFUSED[arch])
        if arch == "MaskFormer":
            test = cfg.MODEL.MASK_FORMER.TEST
            if not test.SEMANTIC_ON or test.PANOPTIC_ON or test.INSTANCE_ON:
                logger.info("Mask2Former: exporting semantic inference "
                            "(TEST.SEMANTIC_ON on, PANOPTIC_ON/INSTANCE_ON off)")
            test.SEMANTIC_ON, test.PANOPTIC_ON, test.INSTANCE_ON = True, False, False
    if fmt == "onnx":
        cfg.MODEL.DEVICE = "cpu"  # onnxruntime is checked on the CPU
    check_weights_file(cfg)
    cfg.freeze()
    return cfg


def split_overrides(args):
    """Trailing KEY VALUE pairs may land after --sample-image's value: argparse keeps them in ``overrides``."""
    opts = list(args.opts) + list(args.overrides)
    bad = [o for o in opts[::2] if not CFG_KEY.match(o)]
    if bad:
        raise UserError(f"not a config key: {bad[0]} (overrides are KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth)")
    return opts


def build(cfg, backbone_only):
    """The model (or the bare FocalNet) in eval mode with MODEL.WEIGHTS loaded."""
    holder = nn.Module()  # the backbone alone sits under backbone., as in a whole model's checkpoint
    try:
        if backbone_only:
            bare = cfg.clone()
            bare.defrost()
            bare.MODEL.BACKBONE.NAME = "build_focalnet_backbone"
            holder.backbone = build_backbone(bare)
            model = holder.backbone
        else:
            model = holder = build_model(cfg)
    except (KeyError, ValueError) as e:
        raise UserError(f"{' '.join(str(e).split())}") from None
    holder.to(cfg.MODEL.DEVICE).eval()
    if cfg.MODEL.WEIGHTS:
        Checkpointer(holder).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialised model")
    return model


def sample_image(cfg, path):
    """(3, H, W) float tensor, values 0-255, in INPUT.FORMAT."""
    if path:
        try:
            image = read_image(path, format=cfg.INPUT.FORMAT)
        except Exception as e:  # PIL raises several kinds for unreadable files
            why = " ".join(str(e).split()) or type(e).__name__
            raise UserError(f"cannot read --sample-image {path}: {why}") from None
        return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), dtype=torch.float32)
    side = cfg.INPUT.MIN_SIZE_TEST
    logger.info(f"no --sample-image: a random {side}x{side} image (seed 0)")
    return torch.rand(3, side, side, generator=torch.Generator().manual_seed(0)) * 255


class RawImageBackbone(nn.Module):
    """(1, 3, H, W) image, values 0-255 in INPUT.FORMAT -> the backbone's features, as a tuple in ``names`` order."""

    def __init__(self, backbone, pixel_mean, pixel_std):
        super().__init__()
        self.backbone = backbone
        self.names = list(backbone.output_shape())
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)

    def forward(self, image):
        features = self.backbone((image - self.pixel_mean) / self.pixel_std)
        return tuple(features[name] for name in self.names)


class RawImageSemSeg(nn.Module):
    """(1, 3, H, W) image, values 0-255 in INPUT.FORMAT -> (1, C, H, W) logits of a ``SemanticSegmentor``: normalised,
    zero-padded as ``ImageList`` pads (to the size fixed at construction), cropped back, as the model does."""

    def __init__(self, model, height, width):
        super().__init__()
        self.model = model
        probe = ImageList.from_tensors(
            [torch.zeros(3, height, width)], model.backbone.size_divisibility,
            padding_constraints=getattr(model.backbone, "padding_constraints", None),
        )
        self.height, self.width = height, width
        self.pad = (0, probe.tensor.shape[-1] - width, 0, probe.tensor.shape[-2] - height)

    def forward(self, image):
        m = self.model
        x = F.pad((image - m.pixel_mean) / m.pixel_std, self.pad)
        logits, _ = m.sem_seg_head(m.backbone(x), None)
        return logits[:, :, : self.height, : self.width]


def leaf_names(obj, prefix=""):
    """Names of the tensors of a model output, in the order of Detectron2's ``flatten_to_tuple``."""
    if isinstance(obj, (list, tuple)):
        many = len(obj) > 1
        return [n for i, x in enumerate(obj) for n in leaf_names(x, f"{prefix}{i}." if many else prefix)]
    if isinstance(obj, dict):
        return [n for k in sorted(obj) for n in leaf_names(obj[k], f"{prefix}{k}.")]
    if isinstance(obj, Instances):
        fields = obj.get_fields()
        return [n for k in sorted(fields) for n in leaf_names(fields[k], f"{prefix}{k}.")] + [prefix + "image_size"]
    return [prefix.rstrip(".")]


def adapter_for(model, image):
    """TracingAdapter of a Detectron2 model on one image; Mask R-CNN without postprocessing, as Detectron2 exports."""
    inputs = [{"image": image}]
    if model.__class__.__name__ == "GeneralizedRCNN":

        def inference(model, inputs):
            return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

        return TracingAdapter(model, inputs, inference)
    return TracingAdapter(model, inputs)


def compare(names, eager, exported):
    """Per output (name, shape, exported shape, largest |difference|); the largest difference; the eager outputs'
    largest |value| (Instances' image_size left out)."""
    rows, worst, scale = [], 0.0, 0.0
    if len(eager) != len(exported):
        raise RuntimeError(f"the export returns {len(exported)} outputs, the eager model {len(eager)}")
    for name, a, b in zip(names, eager, exported):
        a = torch.as_tensor(a).detach().cpu().double()
        b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).detach().cpu().double()
        if a.shape != b.shape:
            diff = float("inf")
        else:
            diff = (a - b).abs().max().item() if a.numel() else 0.0
        if not name.endswith("image_size"):  # metadata (Instances' size), not a prediction
            scale = max(scale, a.abs().max().item() if a.numel() else 0.0)
        worst = max(worst, diff)
        rows.append((name, tuple(a.shape), tuple(b.shape), diff))
    return rows, worst, scale


@torch.no_grad()
def export_torchscript(model, cfg, image, out_dir, backbone_only):
    path = os.path.join(out_dir, "model.ts")
    if backbone_only:
        wrapper = RawImageBackbone(model, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD).eval()
        inputs = (image[None].to(cfg.MODEL.DEVICE),)
        eager = wrapper(*inputs)
        names = wrapper.names
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
        input_spec = {"name": "image", "shape": list(inputs[0].shape), "layout": "NCHW"}
    else:
        adapter = adapter_for(model, image.to(cfg.MODEL.DEVICE))
        inputs = adapter.flattened_inputs
        eager = adapter(*inputs)  # the eager model, flattened
        names = leaf_names(adapter.outputs_schema(eager))
        traced = torch.jit.trace(adapter, inputs, check_trace=False)
        input_spec = {"name": "image", "shape": list(inputs[0].shape), "layout": "CHW"}
    traced.save(path)
    loaded = torch.jit.load(path, map_location=cfg.MODEL.DEVICE)
    exported = loaded(*inputs)
    exported = exported if isinstance(exported, (tuple, list)) else (exported,)
    return path, names, eager, exported, input_spec


@torch.no_grad()
def export_onnx(model, cfg, image, out_dir, backbone_only):
    import onnxruntime as ort

    path = os.path.join(out_dir, "model.onnx")
    x = image[None].cpu()
    if backbone_only:
        wrapper = RawImageBackbone(model, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD).eval()
        names = wrapper.names
        eager = wrapper(x)  # the eager backbone on the normalised image
    else:
        wrapper = RawImageSemSeg(model, *x.shape[-2:]).eval()
        names = ["sem_seg"]
        eager = (model([{"image": image}])[0]["sem_seg"][None],)  # the eager SemanticSegmentor itself
    with warnings.catch_warnings(), _adaptive_pool_as_matmul():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
        torch.onnx.export(
            wrapper, (x,), path, dynamo=False, opset_version=OPSET, input_names=["image"], output_names=names,
            do_constant_folding=True,
        )
    import onnx

    onnx.checker.check_model(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    exported = session.run(names, {"image": x.numpy()})
    return path, names, eager, exported, {"name": "image", "shape": list(x.shape), "layout": "NCHW"}


class _adaptive_pool_as_matmul:
    """While exporting: ``adaptive_avg_pool2d`` as two matrix products with averaging matrices built in the graph.

    The TorchScript-based exporter turns adaptive pooling into an AvgPool only when the output size divides the input
    size; UPerNet's pyramid pooling (1, 2, 3, 6 bins) on a small stride-32 map rarely does. Bin ``i`` of ``n`` over
    ``L`` positions averages ``[floor(i L / n), ceil((i + 1) L / n))``, PyTorch's rule, so the result is the same.
    ``L`` is read from the input's shape in the graph (constant-folded when the shape is static)."""

    @staticmethod
    def _averaging_matrix(g, x, axis, bins):
        """(bins, L) float matrix of the ``axis`` of ``x`` (L = its length)."""
        def const(values):
            return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

        length = g.op("Gather", g.op("Shape", x), const(axis), axis_i=0)  # 0-d int64
        i = const(list(range(bins)))
        start = g.op("Div", g.op("Mul", i, length), const(bins))  # non-negative: integer division is floor
        stop = g.op("Mul", const(list(range(1, bins + 1))), length)
        end = g.op("Div", g.op("Add", stop, const(bins - 1)), const(bins))  # ceil
        pos = g.op("Range", const(0), length, const(1))  # (L,)
        start, end = (g.op("Unsqueeze", t, const([1])) for t in (start, end))  # (bins, 1)
        inside = g.op("And", g.op("GreaterOrEqual", pos, start), g.op("Less", pos, end))  # (bins, L)
        count = g.op("Cast", g.op("Sub", end, start), to_i=1)  # 1 = FLOAT
        return g.op("Div", g.op("Cast", inside, to_i=1), count)

    @classmethod
    def symbolic(cls, g, x, output_size):
        from torch.onnx import symbolic_helper as sh

        bins = sh._maybe_get_const(output_size, "is")
        if not isinstance(bins, (list, tuple)) or len(bins) != 2 or any(not isinstance(b, int) for b in bins):
            raise RuntimeError(f"adaptive_avg_pool2d: the output size must be two constant ints to export, got {bins}")
        rows = cls._averaging_matrix(g, x, -2, bins[0])  # (bh, H)
        cols = g.op("Transpose", cls._averaging_matrix(g, x, -1, bins[1]), perm_i=[1, 0])  # (W, bw)
        return g.op("MatMul", g.op("MatMul", rows, x), cols)

    def __enter__(self):
        torch.onnx.register_custom_op_symbolic("aten::adaptive_avg_pool2d", self.symbolic, OPSET)

    def __exit__(self, *exc):
        torch.onnx.unregister_custom_op_symbolic("aten::adaptive_avg_pool2d", OPSET)
        return False


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="focalnet_det")
    setup_logger()
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release")  # Detectron2's anchors
    cfg = setup_cfg(args.config_file, split_overrides(args), args.format, args.backbone_only)
    image = sample_image(cfg, args.sample_image)
    model = build(cfg, args.backbone_only)
    os.makedirs(args.output, exist_ok=True)
    export = export_onnx if args.format == "onnx" else export_torchscript
    what = "backbone" if args.backbone_only else MODELS[cfg.MODEL.META_ARCHITECTURE]
    path, names, eager, exported, input_spec = export(model, cfg, image, args.output, args.backbone_only)

    rows, worst, scale = compare(names, eager, exported)
    for name, shape, exported_shape, diff in rows:
        note = "" if shape == exported_shape else f" (exported shape {exported_shape})"
        logger.info(f"  {name:<28} {str(shape):<22} max |eager - exported| {diff:.3g}{note}")
    if all(0 in exported_shape for name, _, exported_shape, _ in rows if not name.endswith("image_size")):
        logger.warning("the model returned nothing on the sample image (no detections?): the check compared nothing. "
                       "Give a --sample-image with objects and trained MODEL.WEIGHTS, or set "
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 to keep every box")
    ok = worst <= TOLERANCE * scale
    summary = {
        "format": args.format, "model": what, "config": args.config_file, "file": os.path.basename(path),
        "input": {**input_spec, "dtype": "float32", "range": "0-255", "channels": cfg.INPUT.FORMAT},
        "outputs": [{"name": n, "shape": list(s)} for n, s, _, _ in rows],
        "check": {"max_abs_diff": worst, "max_abs_eager": scale, "tolerance": TOLERANCE * scale, "passed": ok},
    }
    with open(os.path.join(args.output, "model.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{what} -> {path}: max |eager - exported| = {worst:.3g} (largest eager |value| {scale:.3g}, "
          f"tolerance {TOLERANCE * scale:.3g}): {'ok' if ok else 'FAILED'}")
    if not ok:
        print(f"export_model.py: error: the exported {what} differs from the eager model by {worst:.3g} "
              f"> {TOLERANCE:g} x {scale:.3g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"export_model.py: error: {e}", file=sys.stderr)
        sys.exit(2)
