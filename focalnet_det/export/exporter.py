"""Whole models (or the FocalNet backbone) to TorchScript and ONNX, each file loaded again and checked against the
eager model on the sample image; what ``tools/export_model.py`` runs.

What is traced (``traceable``):

- Mask R-CNN, UPerNet to TorchScript: Detectron2's ``TracingAdapter`` (a (3, H, W) image, as Detectron2 models read
  ``{"image": ...}``; outputs flattened in ``flatten_to_tuple``'s order); Mask R-CNN without post-processing.
- UPerNet to ONNX, DINO and Mask2Former to both, the backbone to both: the raw-image modules of ``wrappers.py``
  ((1, 3, H, W) image in, plain tensors out).

Every file is written under a temporary name and renamed when complete (``fileio.atomic_path``).
"""
import json
import logging
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, List, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Instances

from ..checkpoint import FocalNetCheckpointer
from ..config import check_weights_file, load_config
from ..errors import UserError
from ..fileio import atomic_open, atomic_path
from .onnx_ops import adaptive_pool_as_matmul
from .wrappers import RawImageBackbone, RawImageDINO, RawImageMaskFormer, RawImageSemSeg

__all__ = ["MODELS", "OPSET", "TOLERANCE", "export_config", "build_export_model", "sample_image", "traceable",
           "write_torchscript", "write_onnx", "compare", "export_model"]

OPSET = 17  # >= 16: GridSample (the deformable attention's sampling)
TOLERANCE = 1e-3  # of the eager output's largest absolute value
logger = logging.getLogger(__name__)

# what each META_ARCHITECTURE is called in messages
MODELS = {"GeneralizedRCNN": "Mask R-CNN", "SemanticSegmentor": "UPerNet", "MaskFormer": "Mask2Former", "DINO": "DINO"}
ONNX_REFUSED = {
    "GeneralizedRCNN": "Mask R-CNN cannot be exported to ONNX without custom ops (Detectron2's RoIAlign, box decoding "
    "with data-dependent NMS and mask pasting have no standard ONNX operators): use --format torchscript, or "
    "--backbone-only for an ONNX backbone",
}
DEFORMABLE = ("DINO", "MaskFormer")  # the models with multi-scale deformable attention


@dataclass
class Traceable:
    """A module to trace, its inputs, the names of its outputs, the eager model's outputs on those inputs (the
    reference of the check) and how the input is described in model.json."""

    module: nn.Module
    inputs: Tuple[torch.Tensor, ...]
    names: List[str]
    eager: Tuple[torch.Tensor, ...]
    input_spec: dict
    ranked: bool = False  # outputs are detections ranked by score (DINO): see align_ranked



def export_config(config_file, opts, fmt, backbone_only):
    """The frozen config; UserError for a model or combination that cannot be exported."""
    cfg = load_config(config_file, opts)
    arch = cfg.MODEL.META_ARCHITECTURE
    if not backbone_only:
        if arch not in MODELS:
            raise UserError(
                f"META_ARCHITECTURE {arch} cannot be exported: this tool exports Mask R-CNN (GeneralizedRCNN), UPerNet "
                "(SemanticSegmentor), Mask2Former (MaskFormer), DINO and, with --backbone-only, the FocalNet backbone"
            )
        if fmt == "onnx" and arch in ONNX_REFUSED:
            raise UserError(ONNX_REFUSED[arch])
    if fmt == "onnx":
        cfg.MODEL.DEVICE = "cpu"  # onnxruntime is checked on the CPU
    check_weights_file(cfg)
    cfg.freeze()
    return cfg


def build_export_model(cfg, backbone_only):
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
        FocalNetCheckpointer(holder).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialised model")
    return model


def sample_image(cfg, path=None):
    """(3, H, W) float tensor, values 0-255, in INPUT.FORMAT: the image at ``path``, else a seeded random
    INPUT.MIN_SIZE_TEST square."""
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


def _tracing_adapter(model, image):
    """TracingAdapter of a Detectron2 model on one image; Mask R-CNN without postprocessing, as Detectron2 exports."""
    inputs = [{"image": image}]
    if model.__class__.__name__ == "GeneralizedRCNN":

        def inference(model, inputs):
            return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

        return TracingAdapter(model, inputs, inference)
    return TracingAdapter(model, inputs)


@torch.no_grad()
def traceable(model, cfg, image, fmt, backbone_only=False):
    """What to trace for this model and format, with the eager model's outputs on ``image`` ((3, H, W), 0-255)."""
    image = image.to(cfg.MODEL.DEVICE)
    x = image[None]
    nchw = {"name": "image", "shape": list(x.shape), "layout": "NCHW"}
    arch = None if backbone_only else cfg.MODEL.META_ARCHITECTURE
    if backbone_only:
        wrapper = RawImageBackbone(model, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD).eval()
        return Traceable(wrapper, (x,), wrapper.names, wrapper(x), nchw)
    if arch == "DINO":
        wrapper = RawImageDINO(model, *x.shape[-2:]).eval()
        r = model([{"image": image}])[0]["instances"]  # the eager model, its own post-processing
        return Traceable(wrapper, (x,), wrapper.names, (r.pred_boxes.tensor, r.scores, r.pred_classes), nchw,
                         ranked=True)
    if arch == "MaskFormer":
        wrapper = RawImageMaskFormer(model, *x.shape[-2:]).eval()
        eager = wrapper(x)  # class and mask logits: the head's own outputs, upsampled and cropped as the model does
        if wrapper.semantic:
            eager = eager[:2] + (model([{"image": image}])[0]["sem_seg"][None],)  # the eager model's sem_seg
        return Traceable(wrapper, (x,), wrapper.names, eager, nchw)
    if fmt == "onnx":  # UPerNet (Mask R-CNN is refused in export_config)
        wrapper = RawImageSemSeg(model, *x.shape[-2:]).eval()
        return Traceable(wrapper, (x,), wrapper.names, (model([{"image": image}])[0]["sem_seg"][None],), nchw)
    adapter = _tracing_adapter(model, image)
    inputs = adapter.flattened_inputs
    eager = adapter(*inputs)  # the eager model, flattened
    return Traceable(adapter, inputs, leaf_names(adapter.outputs_schema(eager)), eager,
                     {"name": "image", "shape": list(inputs[0].shape), "layout": "CHW"})


def _as_tuple(outputs):
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


@torch.no_grad()
def write_torchscript(t: Traceable, path) -> Tuple[Callable, str]:
    """Trace ``t`` into ``path``; returns a function running the file loaded again on ``t``'s inputs, and the
    loaded graph as text."""
    traced = torch.jit.trace(t.module, t.inputs, check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(tmp)
    loaded = torch.jit.load(path, map_location=t.inputs[0].device)

    def run():
        with torch.no_grad():
            return _as_tuple(loaded(*t.inputs))

    return run, str(loaded.inlined_graph)


@torch.no_grad()
def write_onnx(t: Traceable, path) -> Tuple[Callable, str]:
    """Export ``t`` to ``path`` (opset ``OPSET``, checked by onnx); returns a function running it in onnxruntime on
    the CPU (as many threads as torch uses), and the graph's operator types."""
    import onnx
    import onnxruntime as ort

    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), adaptive_pool_as_matmul(OPSET):
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
            torch.onnx.export(t.module, t.inputs, tmp, dynamo=False, opset_version=OPSET, input_names=["image"],
                              output_names=t.names, do_constant_folding=True)
        onnx.checker.check_model(tmp)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"image": t.inputs[0].cpu().numpy()}
    ops = sorted({node.op_type for node in onnx.load(path).graph.node})

    def run():
        return tuple(session.run(t.names, feed))

    return run, " ".join(ops)


def align_ranked(eager, exported):
    """Exported (boxes, scores, labels), ranked by score, reordered to the eager rows they stand for.

    Top-k over thousands of (query, class) pairs: pairs whose scores differ by less than the rounding of either
    model come out in either order, and which of them make the k-th place is arbitrary. Each eager row takes the
    unused exported row of the same label whose score is within ``slack`` (``TOLERANCE`` x the top score) with the
    closest box; an eager row with none is compared as it is (a real difference). Rows whose score is within ``slack``
    of the k-th tie at the cut: not compared. Outputs of other lengths are returned as they are."""
    eb, es, el = (torch.as_tensor(np.asarray(v)) for v in eager)
    xb, xs, xl = (torch.as_tensor(np.asarray(v)) for v in exported)
    if len(xs) != len(es) or not len(es):
        return exported
    eb, es, xb, xs = eb.double(), es.double(), xb.double(), xs.double()
    slack = TOLERANCE * float(es.abs().max())
    free = torch.ones(len(xs), dtype=torch.bool)
    order = []
    cut = float(es.min()) + slack
    for j in range(len(es)):
        candidates = free & (xl == el[j]) & ((xs - es[j]).abs() <= slack)
        if float(es[j]) <= cut:
            order.append(None)  # tied with the k-th score: any of the tied pairs may be in the top k
            continue
        if candidates.any():
            distance = (xb - eb[j]).abs().amax(1).masked_fill(~candidates, float("inf"))
            order.append(int(distance.argmin()))
        else:
            order.append(int(free.nonzero()[0]))  # no counterpart: compared as it is, the difference shows
        free[order[-1]] = False
    rows = order
    if sum(i is None for i in rows) > len(rows) // 2:
        logger.warning(f"{sum(i is None for i in rows)} of the {len(rows)} detections tie with the k-th score "
                       "(random weights?): their boxes and labels are not compared")
    return (torch.stack([xb[i] if i is not None else eb[j] for j, i in enumerate(rows)]).to(eb.dtype),
            torch.stack([xs[i] if i is not None else es[j] for j, i in enumerate(rows)]),
            torch.stack([xl[i] if i is not None else el[j] for j, i in enumerate(rows)]))


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


def _alternating_seconds(fns, runs):
    """Median wall-clock seconds of each function in ``fns`` (name -> callable), run in turn ``runs`` times after
    one warm-up each, so that load on the machine hits all alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(ts), "runs_s": ts} for name, ts in times.items()}


def export_model(cfg, model, image, out_dir, fmt, backbone_only=False, time_runs=0, config_file=None):
    """Export ``model`` (built by ``build_export_model``) traced on ``image`` to ``out_dir/model.ts`` or
    ``model.onnx``, run the written file on ``image`` and compare it with the eager model; with ``time_runs``, time
    both (alternating, medians). Writes and returns the summary (``out_dir/model.json``); its ``check.passed`` says
    whether the largest difference is within ``TOLERANCE`` of the eager outputs' largest value."""
    what = "backbone" if backbone_only else MODELS[cfg.MODEL.META_ARCHITECTURE]
    t = traceable(model, cfg, image, fmt, backbone_only)
    path = os.path.join(out_dir, "model.onnx" if fmt == "onnx" else "model.ts")
    writer = write_onnx if fmt == "onnx" else write_torchscript
    run, graph = writer(t, path)
    exported = run()
    rows, worst, scale = compare(t.names, t.eager, align_ranked(t.eager, exported) if t.ranked else exported)
    for name, shape, exported_shape, diff in rows:
        note = "" if shape == exported_shape else f" (exported shape {exported_shape})"
        logger.info(f"  {name:<28} {str(shape):<22} max |eager - exported| {diff:.3g}{note}")
    if all(0 in s for name, _, s, _ in rows if not name.endswith("image_size")):
        logger.warning("the model returned nothing on the sample image (no detections?): the check compared nothing. "
                       "Give a --sample-image with objects and trained MODEL.WEIGHTS, or set "
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 to keep every box")
    summary = {
        "format": fmt, "model": what, "config": config_file, "file": os.path.basename(path),
        "input": {**t.input_spec, "dtype": "float32", "range": "0-255", "channels": cfg.INPUT.FORMAT},
        "outputs": [{"name": n, "shape": list(s)} for n, _, s, _ in rows],
        "needs": _runtime_needs(fmt, graph),
        "check": {"max_abs_diff": worst, "max_abs_eager": scale, "tolerance": TOLERANCE * scale,
                  "passed": worst <= TOLERANCE * scale},
    }
    if not backbone_only and cfg.MODEL.META_ARCHITECTURE in DEFORMABLE:
        # the deformable attention exports as the plain per-level grid_sample (the fast CPU sampling is eager-only)
        sampled = ("GridSample" if fmt == "onnx" else "aten::grid_sampler") in graph
        summary["deformable_attention"] = "grid_sample" if sampled else "unknown"
        logger.info(f"multi-scale deformable attention exported as: "
                    f"{'per-level grid_sample' if sampled else 'no grid_sample found in the graph'}")
    if time_runs:
        with torch.no_grad():
            timed = _alternating_seconds({"eager": lambda: t.module(*t.inputs), fmt: run}, time_runs)
        summary["latency"] = {"threads": torch.get_num_threads(), **timed}
        logger.info(f"latency, median of {time_runs} alternating runs on {torch.get_num_threads()} thread(s): "
                    f"eager {timed['eager']['median_s']:.3g} s, {fmt} {timed[fmt]['median_s']:.3g} s")
    with atomic_open(os.path.join(out_dir, "model.json")) as f:
        json.dump(summary, f, indent=2)
    return summary


def _runtime_needs(fmt, graph):
    """What loading the file needs beyond torch (TorchScript) or onnxruntime (ONNX)."""
    if fmt == "onnx":
        return "onnxruntime (opset %d)" % OPSET
    if "torchvision::" in graph:
        return "torch and torchvision, imported before torch.jit.load (the graph calls torchvision's ops)"
    return "torch"
