"""What the focal modulation looks at: per stage, the modulator and the gates of each focal level.

A focal modulation block computes ``q * h(ctx_all)`` with ``ctx_all = sum_l gate_l * ctx_l + gate_L * global_ctx``
(the paper's notation). The picture the authors draw of it is the L2 norm over channels of the *modulator*
``h(ctx_all)``, bilinearly upsampled to the image; the gates show which focal level (ever larger context, then the
global one) each position draws on.

    from focalnet_det.visualize import modulation_maps, draw_modulation_grid
    maps = modulation_maps(backbone, image, pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD)
    maps["res4"]["modulator"]          # (H, W) float32, the image's size
    maps["res4"]["gates"]              # (focal levels + 1, H, W): level 1 .. L, then the global gate
    draw_modulation_grid(rgb_image, maps, "grid.png")

The maps are computed by a pass of their own over the backbone's modules (``torch.no_grad``, fp32): the stem, then
every block and downsample as the backbone runs them; at the block chosen in each stage (the last by default) the
modulation's query, contexts, gates and modulator are recomputed from its input with that block's own layers. No
hook is registered and nothing is stored on a module, so the model's outputs are unchanged. The blocks run as in the
backbone's forward (its CPU fast paths included); the recomputation calls the modulation's layers as plain modules
(``f``, the focal convolutions, ``h``), so it does not depend on those paths.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .modeling.backbone.focalnet import FocalNet

__all__ = [
    "find_focalnet", "modulation_parts", "modulation_maps", "overlay", "draw_modulation_grid", "image_modulation_grid",
    "draw_predictions",
]


def find_focalnet(model):
    """The FocalNet inside ``model`` (itself, an FPN's ``bottom_up``, a whole detector's ``backbone`` ...)."""
    for module in model.modules():
        if isinstance(module, FocalNet):
            return module
    raise ValueError(f"{type(model).__name__} contains no FocalNet backbone")


def modulation_parts(modulation, x):
    """Recompute one ``FocalModulation``'s intermediate tensors from its input ``x`` (B, H, W, C).

    Returns a dict of NCHW tensors: ``q`` (the query), ``contexts`` (list, one per focal level, after its GELU),
    ``global_context`` (B, C, 1, 1), ``gates`` (B, L + 1, H, W), ``context`` (the gated sum ``ctx_all``, divided by
    L + 1 when the block normalises the modulator) and ``modulator`` (``h(ctx_all)``). The block's output is
    ``proj(ln(q * modulator))`` (``ln`` only with post-LN in modulation).
    """
    C, L = modulation.dim, modulation.focal_level
    q, ctx, gates = torch.split(modulation.f(x), (C, C, L + 1), dim=-1)
    q, ctx, gates = (t.permute(0, 3, 1, 2) for t in (q, ctx, gates))
    contexts, ctx_all = [], 0
    for level, layer in enumerate(modulation.focal_layers):  # Sequential(depthwise conv, GELU)
        ctx = layer(ctx)
        contexts.append(ctx)
        ctx_all = ctx_all + ctx * gates[:, level : level + 1]
    global_context = modulation.act(ctx.mean((2, 3), keepdim=True))
    ctx_all = ctx_all + global_context * gates[:, L:]
    if modulation.normalize_modulator:
        ctx_all = ctx_all / (L + 1)
    return {
        "q": q,
        "contexts": contexts,
        "global_context": global_context,
        "gates": gates,
        "context": ctx_all,
        "modulator": modulation.h(ctx_all),
    }


def _as_batch(image, pixel_mean, pixel_std, device):
    """(3, H, W) / (1, 3, H, W) tensor or (H, W, 3) array -> normalised float (1, 3, H, W) on ``device``."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"one image: (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    x = x.to(device=device, dtype=torch.float32)
    if pixel_mean is not None:
        x = x - torch.as_tensor(pixel_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if pixel_std is not None:
        x = x / torch.as_tensor(pixel_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return x


def _upsample(maps, stride, size):
    """(N, h, w) maps of a stride-``stride`` grid -> (N, H, W): bilinear to the grid's pixel extent, then cropped
    to the image (the grid covers the image padded to a multiple of the stride)."""
    h, w = maps.shape[-2:]
    up = F.interpolate(maps[None], size=(h * stride, w * stride), mode="bilinear", align_corners=False)[0]
    return up[:, : size[0], : size[1]]


@torch.no_grad()
def modulation_maps(backbone, image, pixel_mean=None, pixel_std=None, block=-1, upsample=True, size_divisibility=None):
    """Per stage, the modulator's L2 norm over channels and the gates of block ``block`` (default: the last).

    Args:
        backbone: a FocalNet, or any module holding one (an FPN backbone, a whole Detectron2 model), in eval mode
            (in training mode stochastic depth would drop blocks at random).
        image: one image as the backbone takes it, (3, H, W) or (1, 3, H, W) tensor or (H, W, 3) array; normalised
            here by ``pixel_mean`` / ``pixel_std`` (e.g. ``cfg.MODEL.PIXEL_MEAN`` / ``PIXEL_STD``) when given.
        block: index of the block in each stage (Python indexing, clipped to the stage's depth).
        upsample: bilinearly upsample the maps to the image's (H, W); False: the stage's own grid.
        size_divisibility: zero-pad the normalised image to this multiple first, as Detectron2's models do
            (default: the FocalNet's, 32); the maps are cropped back to the image.

    Returns:
        ``{"res2": {"modulator": (H, W), "gates": (L + 1, H, W), "stride": 4}, ...}`` (float32 numpy arrays) for
        every stage, whatever the backbone's out_features.
    """
    net = find_focalnet(backbone)
    device = next(net.parameters()).device
    x = _as_batch(image, pixel_mean, pixel_std, device)
    H, W = x.shape[-2:]
    div = net.size_divisibility if size_divisibility is None else size_divisibility
    if div and div > 1:
        x = F.pad(x, (0, -W % div, 0, -H % div))
    maps = {}
    with torch.autocast(device.type, enabled=False):
        x = net.patch_embed(x.to(next(net.parameters()).dtype))
        for i, layer in enumerate(net.layers):
            depth = len(layer.blocks)
            chosen = min(max(block if block >= 0 else depth + block, 0), depth - 1)
            for j, blk in enumerate(layer.blocks):
                if j == chosen:
                    parts = modulation_parts(blk.modulation, x if blk.use_postln else blk.norm1(x))
                    norm = parts["modulator"].float().norm(dim=1)  # (1, h, w)
                    gates = parts["gates"][0].float()
                    stride = net.patch_embed.patch_size * 2**i
                    if upsample:
                        norm, gates = _upsample(norm, stride, (H, W)), _upsample(gates, stride, (H, W))
                    maps[f"res{i + 2}"] = {
                        "modulator": norm[0].cpu().numpy(),
                        "gates": gates.cpu().numpy(),
                        "stride": stride,
                    }
                x = blk(x)
            if layer.downsample is not None:
                x = layer.downsample(x.permute(0, 3, 1, 2))
    return maps


def _normalise(heat, symmetric=False):
    """To 0..1: min..max, or -m..m with m = max |heat| (zero in the middle) when ``symmetric``."""
    lo, hi = float(heat.min()), float(heat.max())
    if symmetric:
        hi = max(abs(lo), abs(hi))
        lo = -hi
    return (heat - lo) / (hi - lo) if hi > lo else np.full_like(heat, 0.5 if symmetric else 0.0)


def overlay(image_rgb, heat, cmap="jet", alpha=0.5, symmetric=False):
    """``heat`` (H, W), scaled to its own min..max (``symmetric``: to -max|heat|..max|heat|, so that zero takes the
    colour map's middle), coloured by ``cmap`` and blended over ``image_rgb`` (H, W, 3) uint8; returns (H, W, 3)
    uint8."""
    from matplotlib import colormaps

    colour = colormaps[cmap](_normalise(np.asarray(heat, dtype=np.float32), symmetric))[..., :3] * 255
    return (alpha * colour + (1 - alpha) * np.asarray(image_rgb, dtype=np.float32)).clip(0, 255).astype(np.uint8)


def draw_modulation_grid(image_rgb, maps, path=None, title=None, cell_inches=2.0, dpi=80):
    """One row per stage: the modulator over the image, then each focal level's gate and the global gate.

    ``maps``: what :func:`modulation_maps` returns (upsampled). Each picture is scaled to its own range (written
    above it): the modulator's norm from its min (blue) to its max (red); a gate from -max|gate| (blue) through
    zero (white) to max|gate| (red). Saves to ``path`` when given; returns the matplotlib ``Figure``."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) is left alone

    stages = list(maps)
    cols = 1 + max(m["gates"].shape[0] for m in maps.values())
    h, w = image_rgb.shape[:2]
    fig = Figure(figsize=(cols * cell_inches, len(stages) * cell_inches * h / w + (0.4 if title else 0)))
    axes = fig.subplots(len(stages), cols, squeeze=False)
    for row, stage in zip(axes, stages):
        m = maps[stage]
        num_gates = m["gates"].shape[0]
        panels = [(m["modulator"], "jet", False, f"{stage} |h(ctx)|")]
        panels += [
            (g, "coolwarm", True, f"{stage} gate {'global' if k == num_gates - 1 else f'level {k + 1}'}")
            for k, g in enumerate(m["gates"])
        ]
        for ax in row:
            ax.axis("off")
        for ax, (heat, cmap, symmetric, name) in zip(row, panels):
            ax.imshow(overlay(image_rgb, heat, cmap, symmetric=symmetric))
            ax.set_title(f"{name}\n[{heat.min():.2g}, {heat.max():.2g}]", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def image_modulation_grid(backbone, cfg, image, title=None, block=-1):
    """The modulation grid of one ``image`` ((H, W, 3) in ``cfg.INPUT.FORMAT``) as the model sees it: resized as at
    test time (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), normalised by ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``.
    Returns ``(figure, maps, resized RGB image)``."""
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import convert_image_to_rgb

    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    maps = modulation_maps(backbone, tensor, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, block=block)
    rgb = convert_image_to_rgb(image, cfg.INPUT.FORMAT)
    h, w = rgb.shape[:2]
    fig = draw_modulation_grid(rgb, maps, title=f"{title} ({w}x{h})" if title else None)
    return fig, maps, rgb


def draw_predictions(visualizer, predictions, threshold=0.0, classes=None, frame=None):
    """Draw a model's outputs with a Detectron2 ``Visualizer`` (or, with ``frame``, the RGB frame, a
    ``VideoVisualizer``): the panoptic segmentation if present, else the semantic one and/or the instances scoring at
    least ``threshold`` (and, if given, of contiguous ``classes`` only). Reads tiled outputs too (label maps,
    cropped masks). Returns the ``VisImage`` (None when there is nothing drawable)."""
    from .inference.predictor import sem_seg_labels
    from .inference.tiling import CroppedMasks

    args = () if frame is None else (frame,)
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        if classes is not None:
            segments_info = [s for s in segments_info if s["category_id"] in classes]
        fn = visualizer.draw_panoptic_seg if frame is None else visualizer.draw_panoptic_seg_predictions
        return fn(*args, panoptic_seg.to("cpu"), segments_info)
    vis = None
    if "sem_seg" in predictions or "sem_seg_labels" in predictions:
        labels = sem_seg_labels(predictions)
        if classes is not None:  # other classes are not drawn (255: ignored by the visualizer)
            labels = torch.where(torch.isin(labels.long(), torch.as_tensor(sorted(classes))), labels.long(), 255)
        vis = visualizer.draw_sem_seg(*args, labels.to("cpu"))
        args = () if frame is None else (vis.get_image(),)
    if "instances" in predictions:
        instances = predictions["instances"].to("cpu")
        if instances.has("scores"):
            instances = instances[instances.scores >= threshold]
        if classes is not None:
            instances = instances[torch.isin(instances.pred_classes, torch.as_tensor(sorted(classes)))]
        if instances.has("pred_masks") and isinstance(instances.pred_masks, CroppedMasks):
            instances.pred_masks = instances.pred_masks.to_tensor()  # the drawn ones only
        vis = visualizer.draw_instance_predictions(*args, instances)
    return vis
