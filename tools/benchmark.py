#!/usr/bin/env python
"""Cost of a model: parameters, FLOPs (fvcore), latency (median after warm-up) and peak memory.

Modes (--modes): fp32, bf16 (autocast), compiled (torch.compile, fp32). Latency is the median of --runs
timed runs after --warmup untimed ones; peak memory is what one forward pass needs beyond the memory in use
before it (the GPU's max allocated, or on the CPU the growth of the peak resident set).

  # a whole model from its config, at the paper's input size (1280x800 detection, 2048x512 segmentation)
  python tools/benchmark.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_focalnet_tiny_srf_1x.yaml
  # the same next to Detectron2's own R50-FPN Mask R-CNN, timed alternately on the same input, in the same mode;
  # both keep every box up to TEST.DETECTIONS_PER_IMAGE, so their heads do equal work whatever the random weights
  python tools/benchmark.py --config-file CONFIG --compare-r50 --size 800 1216
  # the backbone alone against timm's focalnet built with the same configuration (alternating runs)
  python tools/benchmark.py --config-file CONFIG --backbone-only --size 640 960
  # time per megapixel at several sizes (linear growth)
  python tools/benchmark.py --config-file CONFIG --sizes 512 1024 2048
  # ... as a picture: latency against megapixels (with --backbone-only or --compare-r50, the reference too)
  python tools/benchmark.py --config-file CONFIG --backbone-only --sizes 256 512 768 --plot latency.png
  # DINO / Mask2Former: the compiled CPU deformable-attention kernel against the plain grid_sample path, alternately,
  # with each path's peak memory and where the time goes (torch.profiler, per part of the model)
  python tools/benchmark.py --config-file CONFIG --size 512 683 --compare-plain --profile
  # Mask2Former's head alone (pixel decoder + masked-attention decoder) on random backbone features of the input size
  python tools/benchmark.py --config-file CONFIG --head-only --size 768 768 --compare-plain
  # training iterations (forward, backward, optimizer step) on the config's training data instead of inference
  python tools/benchmark.py --config-file configs/Tiny/dino_focalnet_tiny_shapes.yaml --train-step --compare-plain
"""
import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import time

import torch
from tabulate import tabulate
from tqdm import tqdm

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.analysis import FlopCountAnalysis

import focalnet_det  # noqa: F401
from focalnet_det import add_focalnet_config
from focalnet_det.config import load_config
from focalnet_det.allocator import release_freed_memory, reuse_freed_memory
from focalnet_det.errors import UserError, run_tool
from focalnet_det.modeling import layers as deform_layers

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def load_cfg(config_file, opts=()):
    cfg = load_config(config_file, opts) if config_file else get_cfg()
    if not config_file:
        add_focalnet_config(cfg)
    cfg.MODEL.DEVICE = DEVICE
    cfg.MODEL.WEIGHTS = ""
    return cfg


def paper_size(cfg, backbone_only):
    """(H, W) the published FLOPs use: 224 for backbones, 800x1280 Mask R-CNN, 800x1333 DINO, 512x2048 segmentation."""
    if backbone_only:
        return 224, 224
    return {"GeneralizedRCNN": (800, 1280), "DINO": (800, 1333)}.get(cfg.MODEL.META_ARCHITECTURE, (512, 2048))


def as_model_input(backbone_only, h, w):
    image = torch.rand(3, h, w, device=DEVICE) * 255
    return image[None] if backbone_only else [{"image": image, "height": h, "width": w}]


def peak_rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def peak_memory_mib(fn):
    """Memory that one call of ``fn`` needs beyond what was in use before it: the GPU's peak allocation, or on the CPU
    the growth of the peak resident set, measured after the heap's freed memory went back to the system (the tools
    keep it for reuse, which would hide the peak)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:  # resets the peak resident set to the current one (Linux)
            f.write("5")
        start = peak_rss_kib()
    except OSError:
        return None
    fn()
    return (peak_rss_kib() - start) / 1024


@contextlib.contextmanager
def deform_attn_path(path):
    """Run the multi-scale deformable attention on ``path``: "kernel" (the compiled CPU kernel where it applies, the
    default) or "plain" (F.grid_sample); None leaves the setting alone."""
    if path is None:
        yield
        return
    previous = deform_layers.set_cpu_kernel(path == "kernel")
    try:
        yield
    finally:
        deform_layers.set_cpu_kernel(previous)


def runner(model, inputs, mode, deform_attn=None):
    """A no-argument callable running ``model`` once in ``mode`` (inference), on the deformable-attention path
    ``deform_attn`` (see ``deform_attn_path``)."""
    if mode == "compiled":
        model = torch.compile(model)

    def run():
        with deform_attn_path(deform_attn), torch.inference_mode(), \
                torch.autocast(DEVICE, torch.bfloat16, enabled=mode == "bf16"):
            out = model(inputs)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def train_step_runner(model, optimizer, batches, deform_attn=None):
    """A no-argument callable running one training iteration (forward, backward, optimizer step) on the next of
    ``batches``; each runner walks the same batches in the same order."""
    batches = itertools.cycle(batches)

    def run():
        with deform_attn_path(deform_attn):
            losses = model(next(batches))
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    return run


def training_batches(cfg, n):
    """The first ``n`` batches of the config's training loader (its mapper and augmentations)."""
    from focalnet_det.data import build_resumable_train_loader, build_train_mapper

    return list(itertools.islice(iter(build_resumable_train_loader(cfg, build_train_mapper(cfg))), n))


class HeadOnly(torch.nn.Module):
    """Mask2Former's head (pixel decoder + transformer decoder) on fixed backbone features."""

    def __init__(self, model):
        super().__init__()
        if not hasattr(model, "sem_seg_head"):
            raise UserError(f"--head-only: {type(model).__name__} has no sem_seg_head (a Mask2Former config is needed)")
        self.head = model.sem_seg_head

    def forward(self, features):
        return self.head(features)


def head_inputs(model, h, w):
    """Random backbone features of an (h, w) image, shaped as ``model``'s backbone gives them."""
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(1, s.channels, -(-h // s.stride), -(-w // s.stride), generator=g).to(DEVICE)
            for name, s in model.backbone.output_shape().items()}


def _profiled_parts(model):
    """{label: modules} of the parts of a DINO or Mask2Former model the profile reports (missing ones skipped)."""
    model = getattr(model, "head", model)
    transformer = getattr(model, "transformer", None)
    pixel_decoder = getattr(getattr(model, "pixel_decoder", None), "transformer", None)
    encoder = getattr(transformer, "encoder", None) or getattr(pixel_decoder, "encoder", None)
    decoder = getattr(transformer, "decoder", None) or getattr(model, "predictor", None)
    parts = {"backbone": [getattr(model, "backbone", None)], "encoder": [encoder], "decoder": [decoder]}
    if encoder is not None:
        parts["encoder FFN"] = [m for layer in encoder.layers for m in (layer.linear1, layer.linear2)]
    return {k: [m for m in v if m is not None] for k, v in parts.items() if any(m is not None for m in v)}


def profile_parts(model, run):
    """Where one call of ``run`` spends its time, by torch.profiler: {part: ms} for the backbone, the encoder (its
    sampling and feed-forward), the decoder (its sampling), post-processing, and the whole call."""
    from torch.autograd.profiler import record_function

    from focalnet_det.modeling.dino import dino as dino_module

    layers_module = sys.modules[deform_layers.MSDeformAttn.__module__]
    parts = _profiled_parts(model)
    inside = []  # the parts being run, to label the sampling calls by the part that makes them
    handles, patched = [], []

    def enter(label):
        rf = record_function(label)
        rf.__enter__()
        inside.append((label, rf))

    def leave():
        inside.pop()[1].__exit__(None, None, None)

    for label, modules in parts.items():
        if label == "encoder FFN":  # from linear1's input to linear2's output
            for first, second in zip(modules[::2], modules[1::2]):
                handles.append(first.register_forward_pre_hook(lambda m, a, label=label: enter(label)))
                handles.append(second.register_forward_hook(lambda m, a, o: leave()))
            continue
        for m in modules:
            handles.append(m.register_forward_pre_hook(lambda m, a, label=label: enter(label)))
            handles.append(m.register_forward_hook(lambda m, a, o: leave()))

    def labelled(fn, label_of):
        def wrapper(*args, **kwargs):
            with record_function(label_of()):
                return fn(*args, **kwargs)
        return wrapper

    def sampling_label():
        owner = next((lbl for lbl, _ in reversed(inside) if lbl in ("encoder", "decoder")), "other")
        return f"{owner} sampling"

    for module, name, label_of in ((layers_module, "ms_deform_attn", sampling_label),
                                   (dino_module, "dino_postprocess", lambda: "post-processing")):
        original = getattr(module, name)
        patched.append((module, name, original))
        setattr(module, name, labelled(original, label_of))
    try:
        start = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        total = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()
        for module, name, original in patched:
            setattr(module, name, original)
    labels = list(parts) + ["encoder sampling", "decoder sampling", "post-processing"]
    found = {e.key: e.cpu_time_total / 1e3 for e in prof.key_averages() if e.key in labels}
    result = {label: found[label] for label in labels if label in found}
    result["total (wall, profiled)"] = 1e3 * total
    return result


def time_alternating(runs, warmup, n, desc, every=None):
    """Median seconds of each callable in ``runs`` (dict), timed alternately so load affects all alike; ``every``
    (a dict), when given, receives each callable's list of times."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runs}
    for _ in tqdm(range(n), desc=desc, leave=False):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    if every is not None:
        every.update(times)
    return {name: statistics.median(t) for name, t in times.items()}


def count_flops(model, inputs):
    model.eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analysis.total() / 1e9


def timm_backbone(cfg):
    """timm's focalnet with the same configuration, as a feature extractor (NCHW reference layout)."""
    from timm.models.focalnet import _create_focalnet

    c = cfg.MODEL.FOCALNET
    return _create_focalnet(
        "focalnet_tiny_srf", pretrained=False, features_only=True, embed_dim=c.EMBED_DIM, depths=tuple(c.DEPTHS),
        focal_levels=tuple(c.FOCAL_LEVELS), focal_windows=tuple(c.FOCAL_WINDOWS), use_overlap_down=c.USE_CONV_EMBED,
        use_post_norm=c.USE_POSTLN, use_post_norm_in_modulation=c.USE_POSTLN_IN_MODULATION,
        layerscale_value=c.LAYERSCALE_VALUE if c.USE_LAYERSCALE else None,
        normalize_modulator=c.NORMALIZE_MODULATOR, drop_path_rate=0.0,
    )


def r50_fpn_mask_rcnn(ours):
    """Detectron2's R50-FPN Mask R-CNN with the test-time settings of ``ours`` (score threshold, NMS, detections
    per image): with random weights the number of boxes reaching the mask head is otherwise arbitrary."""
    from detectron2 import model_zoo

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = DEVICE, ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = ours.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = ours.MODEL.ROI_HEADS.NMS_THRESH_TEST
    cfg.TEST.DETECTIONS_PER_IMAGE = ours.TEST.DETECTIONS_PER_IMAGE
    return build_model(cfg).eval()


def calibrate_frozen_bn(model, inputs):
    """Set every FrozenBatchNorm2d's statistics from one forward pass on ``inputs``, as training would have.

    With random weights and the identity statistics it is built with, Detectron2's R50 does not normalise: its
    features reach 1e4, nearly every proposal degenerates to an empty box, and its heads run on a handful of
    boxes where FocalNet's (LayerNorm) run on a thousand. Calibrated, both models do the same work after the
    backbone."""
    from detectron2.layers import FrozenBatchNorm2d

    def set_statistics(module, args):
        x = args[0].float()
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))
        module.weight.fill_(1.0)
        module.bias.zero_()

    handles = [m.register_forward_pre_hook(set_statistics) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        model(inputs)
    for h in handles:
        h.remove()
    return model


def plot_latency(rows, path, title):
    """Latency (ms) against input megapixels, one line per model and mode, from the rows ``main`` prints; returns the
    lines drawn, {label: [(megapixels, ms)]}."""
    from matplotlib.figure import Figure  # no pyplot: no display backend needed

    def megapixels(row):
        h, w = (int(v) for v in row["input"].split("x"))
        return h * w / 1e6

    lines = {}  # label -> [(MP, ms)]
    for row in rows:
        mp = megapixels(row)
        lines.setdefault(f"focalnet_det {row['mode']}", []).append((mp, row["ms"]))
        for key, value in row.items():
            if key.endswith(" ms") and value is not None:
                lines.setdefault(key[: -len(" ms")], []).append((mp, value))
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for label, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("input megapixels")
    ax.set_ylabel("latency (ms, median)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=80)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return lines


def print_every_run(title, every):
    """Each timed run, in the order they ran (the medians hide how noisy the machine was)."""
    for name, times in every.items():
        print(f"runs ({title}) {name}: " + ", ".join(f"{1e3 * t:.0f}" for t in times) + " ms")


def report_profile(title, parts):
    total = parts["total (wall, profiled)"]
    print(f"where the time goes ({title}):")
    print(tabulate([(k, v, 100 * v / total) for k, v in parts.items()], headers=("part", "ms", "%"), floatfmt=".1f"))


def time_training(cfg, model, args):
    """One row: the median time of a training iteration, with the compiled kernel and (--compare-plain) without."""
    from focalnet_det.solver import build_optimizer

    model.train()
    optimizer = build_optimizer(cfg, model)
    batches = training_batches(cfg, max(args.runs, 1))
    paths = ["kernel", "plain"] if args.compare_plain else [None]
    names = ["focalnet_det", "plain grid_sample"][: len(paths)]
    runs = {name: train_step_runner(model, optimizer, batches, path) for name, path in zip(names, paths)}
    every = {}
    times = time_alternating(runs, args.warmup, args.runs, "train step", every)
    print_every_run("train step", every)
    image = batches[0][0]["image"]
    row = {"input": f"{len(batches[0])}x{image.shape[-2]}x{image.shape[-1]}", "mode": "train fp32",
           "ms": 1e3 * times.pop("focalnet_det")}
    for name, t in times.items():
        row[f"{name} ms"] = 1e3 * t
        row[f"ratio vs {name}"] = row["ms"] / row[f"{name} ms"]
    return row


def build(cfg, backbone_only):
    if backbone_only:  # the bare FocalNet, without the FPN of a detection config
        cfg = cfg.clone()
        cfg.MODEL.BACKBONE.NAME = "build_focalnet_backbone"
        return build_backbone(cfg).to(DEVICE).eval()
    return build_model(cfg).to(DEVICE).eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE")
    parser.add_argument("--backbone-only", action="store_true", help="time the backbone against timm's focalnet")
    parser.add_argument("--compare-r50", action="store_true", help="also time Detectron2's R50-FPN Mask R-CNN")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the paper's)")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="S", help="square sizes: time per megapixel")
    parser.add_argument("--modes", nargs="+", default=["fp32"], choices=["fp32", "bf16", "compiled"])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count")
    parser.add_argument("--compare-plain", action="store_true", help="also time the same model with the plain "
                        "grid_sample deformable attention instead of the compiled CPU kernel (alternating runs)")
    parser.add_argument("--head-only", action="store_true", help="Mask2Former: time the head (pixel decoder + "
                        "transformer decoder) on random backbone features of the input size")
    parser.add_argument("--train-step", action="store_true", help="time training iterations (forward, backward, "
                        "optimizer step) on the config's training data instead of inference")
    parser.add_argument("--profile", action="store_true", help="also print where one run spends its time "
                        "(torch.profiler, per part of a DINO / Mask2Former model), per deformable-attention path")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--plot", metavar="FILE", help="also draw latency against megapixels (PNG), one line per "
                        "model (with --backbone-only / --compare-r50: the reference too); best with --sizes")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    reuse_freed_memory()  # large CPU buffers: reused instead of page-faulted anew (focalnet_det/allocator.py)

    if DEVICE == "cpu" and "bf16" in args.modes and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("note: this CPU has no native bf16 (oneDNN needs AVX-512 or AVX-NE-CONVERT): bf16 autocast runs "
              "PyTorch's reference kernels and is slower than fp32 here", file=sys.stderr)
    cfg = load_cfg(args.config_file, args.opts)
    if args.compare_r50:
        # random weights make the number of detections arbitrary (0 for one model, 100 for the other): keep every
        # box, up to TEST.DETECTIONS_PER_IMAGE, so both mask heads do the work a trained model's would
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build(cfg, args.backbone_only)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rows = []
    if args.sizes:
        mode = args.modes[0]
        timm = timm_backbone(cfg).to(DEVICE).eval() if args.backbone_only else None
        r50 = None
        for s in args.sizes:
            x = as_model_input(args.backbone_only, s, s)
            runs = {"ours": runner(model, x, mode)}
            if timm is not None:
                runs["timm fp32"] = runner(timm, x, "fp32")
            if args.compare_r50:  # calibrated once, on the first size
                r50 = r50 if r50 is not None else calibrate_frozen_bn(r50_fpn_mask_rcnn(cfg), x)
                runs[f"R50-FPN {mode}"] = runner(r50, x, mode)
            times = time_alternating(runs, args.warmup, args.runs, f"{s}x{s}")
            t, mp = times.pop("ours"), s * s / 1e6
            row = {"input": f"{s}x{s}", "mode": mode, "ms": 1e3 * t, "ms_per_MP": 1e3 * t / mp}
            row.update({f"{name} ms": 1e3 * ref for name, ref in times.items()})
            rows.append(row)
    elif args.train_step:
        rows.append(time_training(cfg, model, args))
    else:
        h, w = args.size or paper_size(cfg, args.backbone_only)
        if args.head_only:
            model, x = HeadOnly(model).eval(), head_inputs(model, h, w)
            params = sum(p.numel() for p in model.parameters()) / 1e6
        else:
            x = as_model_input(args.backbone_only, h, w)
        gflops = None if args.no_flops else count_flops(model, x)
        timm = timm_backbone(cfg).to(DEVICE).eval() if args.backbone_only else None
        r50 = calibrate_frozen_bn(r50_fpn_mask_rcnn(cfg), x) if args.compare_r50 else None
        for mode in args.modes:
            runs = {"focalnet_det": runner(model, x, mode, "kernel" if args.compare_plain else None)}
            if timm is not None:
                runs["timm fp32"] = runner(timm, x, "fp32")
            if r50 is not None:  # in the same mode as ours
                runs[f"R50-FPN {mode}"] = runner(r50, x, mode)
            if args.compare_plain:
                runs["plain grid_sample"] = runner(model, x, mode, "plain")
            peaks = {name: peak_memory_mib(fn) for name, fn in runs.items()
                     if name == "focalnet_det" or name == "plain grid_sample"}
            if args.profile:
                for name in peaks:
                    report_profile(f"{name}, {mode}, {h}x{w}", profile_parts(model, runs[name]))
            every = {}
            times = time_alternating(runs, args.warmup, args.runs, mode, every)
            print_every_run(f"{h}x{w} {mode}", every)
            ours = times.pop("focalnet_det")
            row = {"input": f"{h}x{w}", "mode": mode, "params_M": params, "GFLOPs": gflops, "ms": 1e3 * ours,
                   "peak_MiB": peaks["focalnet_det"]}
            for name, t in times.items():
                row[f"{name} ms"] = 1e3 * t
                row[f"ratio vs {name}"] = ours / t
                if name in peaks:
                    row[f"{name} peak_MiB"] = peaks[name]
            rows.append(row)
    print(tabulate(rows, headers="keys", floatfmt=".3g"))
    if args.plot:
        threads = torch.get_num_threads()
        plot_latency(rows, args.plot, f"{os.path.basename(args.config_file) or 'default config'}"
                     f"{' (backbone)' if args.backbone_only else ''}, {DEVICE}, {threads} thread{'s' * (threads > 1)}")
        print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config_file, "device": DEVICE, "threads": torch.get_num_threads(),
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    run_tool(main)
