"""FocalNet (Yang et al., "Focal Modulation Networks", NeurIPS 2022) as a Detectron2 backbone.

Parameter names follow the official dense-prediction backbone (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``, output norms ``norm{i}``), so official checkpoints map by name. The L/XL/H
switches (post-LN, layerscale, normalize-modulator, post-LN in modulation, conv stem with padding 2)
follow the classification model the 22K checkpoints were trained with.

Activations stay channels-last (B, H, W, C) from the stem to the outputs. Every linear layer runs as a
1x1 convolution on a channels-last NCHW *view* of that memory (oneDNN's kernel is up to 1.5x faster than the
BLAS matmul behind ``nn.Linear`` on CPUs), and so do the depthwise focal convolutions: no layout copies.
In CPU inference under bf16 autocast, weights and activations stay bf16 end to end, but for the focal
convolutions, which run in fp32 (oneDNN's bf16 depthwise kernels are slower than its fp32 ones).
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn
from torch.func import functional_call

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from timm.layers import DropPath, trunc_normal_

from ...errors import UserError

__all__ = ["FocalNet", "build_focalnet_backbone", "build_focalnet_fpn_backbone"]


# oneDNN convolution with a fused element-wise epilogue (what torch.compile emits on CPUs); optional
_CONV_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
# its bf16 kernels need AVX-512 (or AVX-NE-CONVERT); on other CPUs it raises where F.conv2d falls back
_CONV_POINTWISE_BF16 = _CONV_POINTWISE is not None and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _cpu_inference(x):
    """Whether ``x`` is CPU inference that the CPU-only paths may take: no autograd, and not traced by FLOP
    counters (fvcore, which must see ops it knows) nor compiled (inductor fuses on its own, and mis-strides the
    raw oneDNN ops)."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def _cpu_bf16_inference(x):
    """Whether ``x`` is CPU inference under bf16 autocast."""
    return _cpu_inference(x) and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class DepthwiseConv2d(torch.autograd.Function):
    """Depthwise "same" convolution (stride 1, odd kernel, no bias) with a faster weight gradient on CPUs.

    oneDNN's depthwise weight gradient takes 5-30x the forward's time for the focal kernels (worst when the
    kernel is larger than the feature map, as at stride 32 on small images). The weight gradient is itself
    a depthwise correlation of the padded input with the output gradient, one (channel, image) pair per
    group: computed as a convolution with groups = C * B and summed over the batch, it runs at forward speed.
    """

    @staticmethod
    def forward(ctx, x, weight, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        p, (B, C, H, W) = ctx.padding, x.shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], C, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            x_pad = F.pad(x, (p, p, p, p)).transpose(0, 1).reshape(1, C * B, H + 2 * p, W + 2 * p)
            kernels = grad_out.transpose(0, 1).reshape(C * B, 1, H, W)
            grad_w = F.conv2d(x_pad, kernels, groups=C * B).view(C, B, *weight.shape[2:]).sum(1, keepdim=True)
        return grad_x, grad_w, None


def depthwise_conv(x, weight, padding):
    """Depthwise "same" convolution; CPU fp32 training takes ``DepthwiseConv2d``'s weight gradient."""
    training = weight.requires_grad and torch.is_grad_enabled()
    if x.device.type == "cpu":
        if training and not torch.is_autocast_enabled("cpu"):
            return DepthwiseConv2d.apply(x, weight, padding)
        # the same kernel zero-padded to 15x15: oneDNN runs that 2.5x faster (not in ONNX: a computed kernel fails there)
        if weight.shape[-1] == 13 and not torch.onnx.is_in_onnx_export():
            weight, padding = F.pad(weight, (1, 1, 1, 1)), padding + 1
    return F.conv2d(x, weight, padding=padding, groups=weight.shape[0])


def conv_gelu(x, weight, bias):
    """``gelu(conv2d(x))`` for a 1x1 convolution. In CPU inference a single oneDNN call applies the GELU while the
    output is still in cache, instead of a second pass over memory."""
    if _CONV_POINTWISE is not None and _cpu_inference(x) and x.dtype in (torch.float32, torch.bfloat16):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype == torch.float32 or (dtype == torch.bfloat16 and _CONV_POINTWISE_BF16):
            # a raw op is not autocast: cast as F.conv2d would
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
            return _CONV_POINTWISE(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, "gelu", [None], "none")
    return F.gelu(F.conv2d(x, weight, bias))


def pointwise(x, layer, gelu=False):
    """``layer`` (an nn.Linear or 1x1 nn.Conv2d) on channels-last data (B, H, W, C), as a 1x1 convolution."""
    weight = layer.weight if layer.weight.dim() == 4 else layer.weight[:, :, None, None]
    x = x.permute(0, 3, 1, 2)
    y = conv_gelu(x, weight, layer.bias) if gelu else F.conv2d(x, weight, layer.bias)
    return y.permute(0, 2, 3, 1)


class Mlp(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return pointwise(pointwise(x, self.fc1, gelu=True), self.fc2)


class FocalModulation(nn.Module):
    """Focal modulation: ``q * h(sum_l gate_l * ctx_l + gate_L * global_ctx)``.

    ``f`` projects to the query, the context and L+1 gates; the context is aggregated by L stacked
    depthwise convolutions (kernel ``focal_window + 2 l``) plus a global average of the last level.
    """

    def __init__(self, dim, focal_level=2, focal_window=7, normalize_modulator=False, use_postln_in_modulation=False):
        super().__init__()
        self.dim = dim
        self.focal_level = focal_level
        self.normalize_modulator = normalize_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, kernel_size=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for k in range(focal_level):
            kernel = 2 * k + focal_window
            self.focal_layers.append(
                nn.Sequential(
                    nn.Conv2d(dim, dim, kernel, groups=dim, padding=kernel // 2, bias=False),
                    nn.GELU(),
                )
            )
        self.ln = nn.LayerNorm(dim) if use_postln_in_modulation else None

    def forward(self, x):
        """x: (B, H, W, C) -> (B, H, W, C)."""
        C, L = self.dim, self.focal_level
        q, ctx, gates = torch.split(pointwise(x, self.f), (C, C, L + 1), dim=-1)
        gates = gates.permute(0, 3, 1, 2)
        # Context aggregation on channels-last NCHW views; on the CPU in float32 whatever the autocast: oneDNN's
        # bf16 depthwise kernels are slower than its fp32 ones, so the fp32 chain (one cast each way) costs no
        # time, and it keeps the precision.
        low_precision_cpu = x.device.type == "cpu" and ctx.dtype in (torch.bfloat16, torch.float16)
        dtype = torch.float32 if low_precision_cpu else ctx.dtype
        ctx = ctx.permute(0, 3, 1, 2).to(dtype, memory_format=torch.channels_last)
        with torch.autocast("cpu", enabled=False):
            ctx_all = None
            for level, layer in enumerate(self.focal_layers):
                conv = layer[0]  # Sequential(depthwise conv, GELU): the official names
                # GELU apart: oneDNN's GELU epilogue on a channels-last depthwise conv is slower than a second pass
                ctx = F.gelu(depthwise_conv(ctx, conv.weight, conv.padding[0]))
                gate = gates[:, level : level + 1]
                ctx_all = ctx * gate if ctx_all is None else ctx_all.addcmul_(ctx, gate)
            ctx_all = ctx_all.addcmul_(self.act(ctx.mean((2, 3), keepdim=True)), gates[:, L:])
            if self.normalize_modulator:
                ctx_all = ctx_all.div_(L + 1)
        ctx_all = ctx_all.to(q.dtype, memory_format=torch.channels_last)
        x_out = q * F.conv2d(ctx_all, self.h.weight, self.h.bias).permute(0, 2, 3, 1)
        if self.ln is not None:
            x_out = self.ln(x_out)
        return pointwise(x_out, self.proj)


class FocalNetBlock(nn.Module):
    """Focal modulation + MLP, each residual; pre-LN (T/S/B) or res-post-LN (L/XL/H), optional layerscale."""

    def __init__(
        self,
        dim,
        mlp_ratio=4.0,
        drop_path=0.0,
        focal_level=2,
        focal_window=9,
        use_postln=False,
        use_postln_in_modulation=False,
        normalize_modulator=False,
        use_layerscale=False,
        layerscale_value=1e-4,
    ):
        super().__init__()
        self.use_postln = use_postln
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(
            dim, focal_level, focal_window, normalize_modulator, use_postln_in_modulation
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if use_layerscale:
            self.gamma_1 = nn.Parameter(layerscale_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layerscale_value * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x):
        if self.use_postln:
            x = self._residual(x, self.norm1(self.modulation(x)), self.gamma_1)
            return self._residual(x, self.norm2(self.mlp(x)), self.gamma_2)
        x = self._residual(x, self.modulation(self.norm1(x)), self.gamma_1)
        return self._residual(x, self.mlp(self.norm2(x)), self.gamma_2)

    def _residual(self, x, y, gamma):
        """``x + drop_path(gamma * y)``; without layerscale no multiply at all."""
        return x + self.drop_path(y if gamma is None else gamma * y)


class PatchEmbed(nn.Module):
    """Stem (patch 4) or downsample (patch 2): conv + LayerNorm; inputs are zero-padded to the patch grid."""

    def __init__(self, patch_size, in_chans, embed_dim, use_conv_embed=False, is_stem=False):
        super().__init__()
        self.patch_size = patch_size
        if use_conv_embed:
            # stem 7x7/4 with padding 2 (as the checkpoints were trained), downsample 3x3/2 padding 1
            kernel, stride, padding = (7, 4, 2) if is_stem else (3, 2, 1)
        else:
            kernel, stride, padding = patch_size, patch_size, 0
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim)
        # the patch-4 stem on the image: non-overlapping patches, one matrix multiply (below)
        self.patchify = is_stem and not use_conv_embed

    def forward(self, x):
        """x: NCHW (any memory format) -> (B, H', W', C) contiguous."""
        H, W = x.shape[-2:]
        pad_h, pad_w = -H % self.patch_size, -W % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        if self.patchify:
            # each output pixel is a linear map of its own p x p patch: gathered as (B, H', W', C*p*p), the conv is
            # a 1x1 conv whose output is already channels-last, 3x faster than oneDNN's conv on 3 input channels
            # followed by the layout copy
            (B, C, H, W), p = x.shape, self.patch_size
            patches = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, H // p, W // p, -1)
            weight = self.proj.weight.reshape(self.proj.out_channels, -1, 1, 1)
            x = F.conv2d(patches.permute(0, 3, 1, 2), weight, self.proj.bias).permute(0, 2, 3, 1)
        else:
            x = self.proj(x).permute(0, 2, 3, 1).contiguous()
        return self.norm(x)


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks, then the downsample that feeds the next stage (official placement)."""

    def __init__(self, dim, depth, drop_path, downsample, use_checkpoint=False, use_conv_embed=False, **block_kwargs):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([FocalNetBlock(dim, drop_path=drop_path[j], **block_kwargs) for j in range(depth)])
        self.downsample = PatchEmbed(2, dim, 2 * dim, use_conv_embed=use_conv_embed) if downsample else None

    def forward(self, x):
        """x: (B, H, W, C) -> (stage output before downsampling, input of the next stage or None)."""
        for blk in self.blocks:
            if self.use_checkpoint and self.training and x.requires_grad:
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x_down = self.downsample(x.permute(0, 3, 1, 2)) if self.downsample is not None else None
        return x, x_down


class FocalNet(Backbone):
    """The FocalNet backbone; outputs ``res2..res5`` (strides 4..32), each through its own LayerNorm."""

    def __init__(
        self,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        mlp_ratio=4.0,
        focal_levels=(2, 2, 2, 2),
        focal_windows=(9, 9, 9, 9),
        use_conv_embed=False,
        use_postln=False,
        use_postln_in_modulation=False,
        use_layerscale=False,
        layerscale_value=1e-4,
        normalize_modulator=False,
        drop_path_rate=0.2,
        patch_size=4,
        out_features=("res2", "res3", "res4", "res5"),
        frozen_stages=-1,
        use_checkpoint=False,
        in_chans=3,
    ):
        super().__init__()
        num_stages = len(depths)
        for name, value in (("FOCAL_LEVELS", focal_levels), ("FOCAL_WINDOWS", focal_windows)):
            if len(value) != num_stages:
                raise ValueError(f"MODEL.FOCALNET.{name} needs one value per stage ({num_stages}), got {list(value)}")
        names = [f"res{i + 2}" for i in range(num_stages)]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"MODEL.FOCALNET.OUT_FEATURES: unknown {unknown}; choose from {names}")
        self.num_features = [embed_dim * 2**i for i in range(num_stages)]
        self.frozen_stages = frozen_stages
        self._out_features = list(out_features)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, use_conv_embed, is_stem=True)
        total = sum(depths)  # stochastic depth rises linearly over all blocks
        dpr = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            start = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    self.num_features[i],
                    depths[i],
                    dpr[start : start + depths[i]],
                    downsample=i < num_stages - 1,
                    use_checkpoint=use_checkpoint,
                    use_conv_embed=use_conv_embed,
                    mlp_ratio=mlp_ratio,
                    focal_level=focal_levels[i],
                    focal_window=focal_windows[i],
                    use_postln=use_postln,
                    use_postln_in_modulation=use_postln_in_modulation,
                    normalize_modulator=normalize_modulator,
                    use_layerscale=use_layerscale,
                    layerscale_value=layerscale_value,
                )
            )
        self._out_indices = [names.index(f) for f in self._out_features]
        for i in self._out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._out_feature_channels = {names[i]: self.num_features[i] for i in range(num_stages)}
        self._out_feature_strides = {names[i]: patch_size * 2**i for i in range(num_stages)}

        self._cast_cache = None  # (key, parameters) of the bf16 inference path
        self.apply(self._init_weights)
        self._freeze_stages()

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _freeze_stages(self):
        """Official semantics: >= 0 freezes the stem; k >= 2 also freezes layers[0..k-2] (with their downsamples)."""
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 2:
            frozen.extend(self.layers[: self.frozen_stages - 1])
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self

    @property
    def size_divisibility(self):
        return 32

    def forward(self, x):
        if _cpu_bf16_inference(x):
            # weights (cast once, cached) and activations stay in bf16 from the stem to the outputs, where autocast
            # alone would run every LayerNorm and element-wise op in fp32 and cast around each layer. The focal
            # convolutions keep fp32 (see FocalModulation).
            with torch.autocast("cpu", enabled=False):
                return functional_call(self, self._parameters_in(torch.bfloat16), (x.to(torch.bfloat16),))
        outputs = {}
        x = self.patch_embed(x)
        for i, layer in enumerate(self.layers):
            x_out, x = layer(x)
            if i in self._out_indices:
                name = f"res{i + 2}"
                outputs[name] = getattr(self, f"norm{i}")(x_out).permute(0, 3, 1, 2).contiguous()
            if x is None or i >= max(self._out_indices):
                break
        return outputs

    def _parameters_in(self, dtype):
        """The parameters in ``dtype`` but the focal kernels, cast once and kept until one changes (in place,
        which bumps its version, or by a move to other storage)."""
        key = (dtype, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        if self._cast_cache is None or self._cast_cache[0] != key:
            cast = {n: p if ".focal_layers." in n else p.detach().to(dtype) for n, p in self.named_parameters()}
            self._cast_cache = (key, cast)
        return self._cast_cache[1]

    def output_shape(self):
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


def check_focalnet_config(cfg, out_features=None, out_features_key="MODEL.FOCALNET.OUT_FEATURES"):
    """UserError naming the key when ``MODEL.FOCALNET`` cannot describe a FocalNet (lengths against ``DEPTHS``,
    even or non-positive focal windows, non-positive depths, width or levels, unknown output names)."""
    c = cfg.MODEL.FOCALNET
    depths = list(c.DEPTHS)
    if not depths or any(int(d) < 1 for d in depths):
        raise UserError(f"MODEL.FOCALNET.DEPTHS: every stage needs a depth >= 1, got {depths}")
    if int(c.EMBED_DIM) < 1:
        raise UserError(f"MODEL.FOCALNET.EMBED_DIM: must be positive, got {c.EMBED_DIM}")
    for key in ("FOCAL_LEVELS", "FOCAL_WINDOWS"):
        values = list(c[key])
        if len(values) != len(depths):
            raise UserError(f"MODEL.FOCALNET.{key}: {values} has {len(values)} values, DEPTHS {depths} has "
                            f"{len(depths)} stages (one value per stage)")
        if any(int(v) < 1 for v in values):
            raise UserError(f"MODEL.FOCALNET.{key}: values must be >= 1, got {values}")
    even = [w for w in c.FOCAL_WINDOWS if int(w) % 2 == 0]
    if even:
        raise UserError(f"MODEL.FOCALNET.FOCAL_WINDOWS: focal windows must be odd (centred kernels), "
                        f"got {list(c.FOCAL_WINDOWS)}")
    names = [f"res{i + 2}" for i in range(len(depths))]
    unknown = [f for f in (c.OUT_FEATURES if out_features is None else out_features) if f not in names]
    if unknown:
        raise UserError(f"{out_features_key}: the FocalNet has no feature {unknown}; it produces {names}")


def _focalnet_from_cfg(cfg, out_features=None, out_features_key="MODEL.FOCALNET.OUT_FEATURES"):
    check_focalnet_config(cfg, out_features, out_features_key)
    c = cfg.MODEL.FOCALNET
    return FocalNet(
        embed_dim=c.EMBED_DIM,
        depths=tuple(c.DEPTHS),
        mlp_ratio=c.MLP_RATIO,
        focal_levels=tuple(c.FOCAL_LEVELS),
        focal_windows=tuple(c.FOCAL_WINDOWS),
        use_conv_embed=c.USE_CONV_EMBED,
        use_postln=c.USE_POSTLN,
        use_postln_in_modulation=c.USE_POSTLN_IN_MODULATION,
        use_layerscale=c.USE_LAYERSCALE,
        layerscale_value=c.LAYERSCALE_VALUE,
        normalize_modulator=c.NORMALIZE_MODULATOR,
        drop_path_rate=c.DROP_PATH_RATE,
        patch_size=c.PATCH_SIZE,
        out_features=tuple(out_features or c.OUT_FEATURES),
        frozen_stages=c.FROZEN_STAGES,
        use_checkpoint=c.USE_CHECKPOINT,
    )


@BACKBONE_REGISTRY.register()
def build_focalnet_backbone(cfg, input_shape):
    """FocalNet with outputs ``MODEL.FOCALNET.OUT_FEATURES`` (res2..res5)."""
    return _focalnet_from_cfg(cfg)


@BACKBONE_REGISTRY.register()
def build_focalnet_fpn_backbone(cfg, input_shape):
    """FocalNet + FPN (p2..p6, LastLevelMaxPool), as in Mask R-CNN."""
    bottom_up = _focalnet_from_cfg(cfg, cfg.MODEL.FPN.IN_FEATURES, "MODEL.FPN.IN_FEATURES")
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
