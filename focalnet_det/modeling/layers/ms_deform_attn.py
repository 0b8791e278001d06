"""Multi-scale deformable attention (Zhu et al., Deformable DETR).

Each query looks at ``n_points`` places per head and feature level, around its reference point, and
sums what it finds there (bilinear interpolation, zero outside the map) with softmax weights over
levels x points. Three paths compute the same thing:

- on the CPU, a compiled C++ kernel (``csrc/ms_deform_attn_cpu.cpp``: forward and a hand-written backward,
  parallel over queries / (batch, head), no atomics) built once with ``torch.utils.cpp_extension`` by
  ``make setup`` or lazily at first use. It reads each sample's four pixels in place, where the plain path
  materialises every sample of every level and point (``grid_sample``'s output) before weighting them;
- the plain path, ``F.grid_sample`` per level: runs on any device, trains by autograd, and is what TorchScript
  and ONNX export record (``GridSample``, opset >= 16). It is the fallback when the kernel cannot be built (no
  compiler), when exporting, scripting, tracing or compiling (``torch.compile`` / ``torch.export``), and on other
  devices;
- the compiled CUDA op of the official code (the ``MultiScaleDeformableAttention`` extension), for CUDA tensors
  when it is importable; it is never required.

``FOCALNET_DET_DEFORM_ATTN=pytorch`` (or ``set_cpu_kernel(False)``) keeps the CPU on the plain path. Which CPU path
ran is logged once.

Parameter names are those of the official module: ``sampling_offsets``, ``attention_weights``,
``value_proj``, ``output_proj``.
"""
import logging
import math
import os
import sys
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["MSDeformAttn", "MSDeformAttnTransformerEncoderLayer", "init_deformable_transformer", "ms_deform_attn",
           "ms_deform_attn_core_pytorch", "compiled_op_available", "cpu_kernel", "set_cpu_kernel"]

logger = logging.getLogger(__name__)

_COMPILED = "unset"


def _compiled_op():
    """The official compiled extension, or None (imported once, lazily)."""
    global _COMPILED
    if _COMPILED == "unset":
        try:
            import MultiScaleDeformableAttention as op  # noqa: N813  (built from the official sources)

            _COMPILED = op
            logger.info("multi-scale deformable attention: using the compiled CUDA op for CUDA tensors")
        except ImportError:
            _COMPILED = None
    return _COMPILED


def compiled_op_available():
    return _compiled_op() is not None


_CPU_SOURCE = Path(__file__).resolve().parent / "csrc" / "ms_deform_attn_cpu.cpp"
_CPU_KERNEL = "unset"  # the loaded extension, None when it cannot be built, "unset" before the first try
_CPU_LOCK = threading.Lock()
_CPU_ENABLED = os.environ.get("FOCALNET_DET_DEFORM_ATTN", "auto").lower() not in ("pytorch", "plain", "0")
_LOGGED = set()


def _log_once(path, message):
    if path not in _LOGGED:
        _LOGGED.add(path)
        logger.info(message)


def cpu_kernel(build=True):
    """The compiled CPU kernel (a module with ``forward`` and ``backward``), or None where it cannot be built.

    Built once per machine with ``torch.utils.cpp_extension.load`` (g++ with OpenMP, ninja; cached under
    ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``); ``make setup`` builds it ahead. A failed
    build is logged and leaves the plain path in use. With ``build=False`` only an already loaded kernel is returned.
    """
    global _CPU_KERNEL
    if _CPU_KERNEL != "unset" or not build:
        return None if _CPU_KERNEL == "unset" else _CPU_KERNEL
    with _CPU_LOCK:
        if _CPU_KERNEL == "unset":
            _CPU_KERNEL = _build_cpu_kernel()
    return _CPU_KERNEL


def _cpu_build_flags():
    """(extra compiler flags, name tag). On x86-64 Linux: ``-march=native`` (AVX2 / AVX-512 where the CPU has them:
    1.6x faster forward, 1.25x backward than the baseline x86-64 build, measured on an AMD EPYC) and a tag from the
    CPU's feature flags, so a build cache shared by different machines never loads a build made for another CPU."""
    import hashlib
    import platform

    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        return [], "generic"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return [], "generic"
    return ["-march=native"], hashlib.sha1(flags.encode()).hexdigest()[:8]


def _build_cpu_kernel():
    import warnings

    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)  # its import warns "no CUDA runtime found": irrelevant to a CPU build
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)

    # ninja from the environment's bin (the pip package), found even when the environment is not activated
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), path])
    logger.info("multi-scale deformable attention: loading the CPU kernel (compiled on first use: ~1 min, once per "
                "machine) ...")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arch, tag = _cpu_build_flags()
            return cpp_extension.load(
                name=f"focalnet_det_ms_deform_attn_cpu_{tag}", sources=[str(_CPU_SOURCE)],
                extra_cflags=["-O3", "-fopenmp", *arch], extra_ldflags=["-fopenmp"], verbose=False,
            )
    except Exception as e:  # no compiler, no ninja, no headers: the plain path works everywhere
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        logger.warning(f"multi-scale deformable attention: cannot build the CPU kernel ({first}); using the plain "
                       "grid_sample path")
        return None
    finally:
        os.environ["PATH"] = path


def set_cpu_kernel(enabled):
    """Use the compiled CPU kernel (when it can be built) or keep the CPU on the plain path; returns the previous
    setting. ``FOCALNET_DET_DEFORM_ATTN=pytorch`` sets False at import."""
    global _CPU_ENABLED
    previous, _CPU_ENABLED = _CPU_ENABLED, bool(enabled)
    return previous


class _CPUMSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of the compiled CPU kernel (float32 / float64)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return cpu_kernel().forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = cpu_kernel().backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output.contiguous()
        )
        return grad_value, None, None, grad_loc, grad_attn


def _cpu_kernel_applies(value, sampling_locations, attention_weights):
    if not (_CPU_ENABLED and value.device.type == "cpu" and sampling_locations.device.type == "cpu"):
        return False
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False  # export and torch.compile / torch.export record the plain path (GridSample)
    dtypes = (value.dtype, sampling_locations.dtype, attention_weights.dtype)
    if not all(t in (torch.float32, torch.float64, torch.bfloat16, torch.float16) for t in dtypes):
        return False
    return cpu_kernel() is not None


@torch.jit.unused
def _ms_deform_attn_cpu(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The CPU kernel; reduced-precision inputs (bf16, fp16) are computed in float32 and returned in value's dtype."""
    _log_once("cpu", "multi-scale deformable attention: using the compiled CPU kernel")
    dtype = torch.float64 if value.dtype == sampling_locations.dtype == attention_weights.dtype == torch.float64 \
        else torch.float32
    args = [t.to(dtype).contiguous() for t in (value, sampling_locations, attention_weights)]
    shapes = spatial_shapes.to(device="cpu", dtype=torch.long).contiguous()
    if level_start_index is None:
        level_start_index = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    starts = level_start_index.to(device="cpu", dtype=torch.long).contiguous()
    out = _CPUMSDeformAttnFunction.apply(args[0], shapes, starts, args[1], args[2])
    return out.to(value.dtype)


def ms_deform_attn_core_pytorch(value, spatial_shapes, sampling_locations, attention_weights):
    """The attention itself.

    Args:
        value: (N, S, M, D) values of all levels, flattened level after level (S = sum H_l W_l).
        spatial_shapes: (L, 2) long, (H_l, W_l) per level.
        sampling_locations: (N, Lq, M, L, P, 2), (x, y) in [0, 1] of each level's map
            (0 and 1 are the outer edges of the border pixels).
        attention_weights: (N, Lq, M, L, P), weights of the samples.
    Returns:
        (N, Lq, M * D)
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    grids = sampling_locations * 2 - 1  # grid_sample's [-1, 1]
    out = value.new_zeros(n * m, d, lq)
    for lvl, (v, (h, w)) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes.tolist())):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = v.permute(0, 2, 3, 1).reshape(n * m, d, int(h), int(w))
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, p, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N*M, D, Lq, P)
        wts = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(n * m, 1, lq, p)
        out = out + (sampled * wts).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


class _CompiledMSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper of the official compiled op (forward/backward kernels)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        op = _compiled_op()
        ctx.im2col_step = im2col_step
        output = op.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
        )
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        op = _compiled_op()
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = op.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous(), ctx.im2col_step,
        )
        return grad_value, None, None, grad_loc, grad_attn, None


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step=128):
    """Dispatch: the compiled CPU kernel for CPU tensors (not while exporting), the official compiled op for CUDA
    tensors when it is importable, else the plain path. Shapes as in ``ms_deform_attn_core_pytorch``."""
    if not torch.jit.is_scripting():
        if _cpu_kernel_applies(value, sampling_locations, attention_weights):
            return _ms_deform_attn_cpu(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights)
        if value.is_cuda and _compiled_op() is not None:
            return _CompiledMSDeformAttnFunction.apply(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
            )
    if value.device.type == "cpu":
        _log_once("plain", "multi-scale deformable attention: using the plain grid_sample path on the CPU")
    return ms_deform_attn_core_pytorch(value, spatial_shapes, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (``d_model`` split over ``n_heads``)."""

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.im2col_step = 128
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        # offsets start as a star of head directions (on the square, not the circle), k-th point k steps out
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * steps  # (heads, 1, points, 2)
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                input_padding_mask=None):
        """
        Args:
            query: (N, Lq, C)
            reference_points: (N, Lq, L, 2) normalised (x, y) in [0, 1], or (N, Lq, L, 4) boxes (cx, cy, w, h)
            input_flatten: (N, S, C), all levels flattened
            input_spatial_shapes: (L, 2) long, (H_l, W_l)
            input_level_start_index: (L,) long, where each level starts in S
            input_padding_mask: (N, S) bool, True at padding (its values are zeroed)
        Returns:
            (N, Lq, C)
        """
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        if int((input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum()) != s:
            raise ValueError("input_spatial_shapes do not add up to the length of input_flatten")
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W_l, H_l)
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points must end in 2 or 4, got {reference_points.shape[-1]}")
        output = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights,
                                self.im2col_step)
        return self.output_proj(output)


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU feed-forward, each + residual + LayerNorm
    (Deformable DETR's; the encoders of Mask2Former's pixel decoder and of DINO, with their official names)."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


def init_deformable_transformer(module):
    """Deformable DETR's initialisation of a transformer: Xavier for every matrix, then each ``MSDeformAttn``'s own
    (sampling offsets on rings around the reference point, uniform attention)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for m in module.modules():
        if isinstance(m, MSDeformAttn):
            m._reset_parameters()
