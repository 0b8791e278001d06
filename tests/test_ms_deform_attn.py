"""The compiled CPU kernel of the multi-scale deformable attention against the plain grid_sample path: values and
gradients on the configs' layouts (padding masks, samples outside the map), gradcheck, bf16, fallback, export."""
import logging
import shutil
import sys

import pytest
import torch

from focalnet_det.modeling.layers import MSDeformAttn, cpu_kernel, ms_deform_attn, ms_deform_attn_core_pytorch
from focalnet_det.modeling.layers import set_cpu_kernel

MSDA = sys.modules[MSDeformAttn.__module__]

# (levels, heads, points) of the configs: Mask2Former's pixel decoder, DINO 4- and 5-scale (encoder and decoder)
LAYOUTS = {"mask2former": [(6, 7), (3, 4), (2, 2)], "dino4": [(8, 10), (4, 5), (2, 3), (1, 2)],
           "dino5": [(9, 11), (5, 6), (3, 3), (2, 2), (1, 1)]}


@pytest.fixture(scope="module")
def kernel():
    """The kernel must build wherever a compiler is (the plain path would make every comparison trivial)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the plain path is the one in use")
    assert cpu_kernel() is not None, "the CPU kernel failed to build (see the log)"
    previous = set_cpu_kernel(True)
    yield
    set_cpu_kernel(previous)


def inputs(shapes, n=2, heads=8, d=4, lq=5, points=4, dtype=torch.float32, seed=0):
    """value, shapes, starts, locations (about a fifth outside [0, 1]), softmax weights."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, heads, d, generator=g, dtype=dtype)
    loc = torch.rand(n, lq, heads, len(shapes), points, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    attn = torch.rand(n, lq, heads, len(shapes), points, generator=g, dtype=dtype)
    attn = (attn.flatten(-2).softmax(-1)).view_as(attn)
    sh = torch.tensor(shapes)
    starts = torch.cat([sh.new_zeros(1), (sh[:, 0] * sh[:, 1]).cumsum(0)[:-1]])
    return value, sh, starts, loc, attn


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_kernel_equals_plain_path_values_and_gradients(kernel, layout):
    value, sh, starts, loc, attn = inputs(LAYOUTS[layout])
    plain_args = [t.clone().requires_grad_() for t in (value, loc, attn)]
    fast_args = [t.clone().requires_grad_() for t in (value, loc, attn)]
    want = ms_deform_attn_core_pytorch(plain_args[0], sh, plain_args[1], plain_args[2])
    got = ms_deform_attn(fast_args[0], sh, starts, fast_args[1], fast_args[2])
    assert "CPUMSDeformAttn" in type(got.grad_fn).__name__  # the kernel ran, not the plain path
    assert relative(got, want) < 1e-5
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    for name, p, f in zip(("value", "locations", "weights"), plain_args, fast_args):
        assert relative(f.grad, p.grad) < 1e-5, name


def test_samples_outside_the_map_and_on_its_edges(kernel):
    """Locations far outside, exactly on the outer edges and half a pixel out: zero padding as grid_sample's."""
    value, sh, starts, loc, attn = inputs([(3, 4), (2, 2)], n=1, heads=2, lq=6, points=3)
    edges = torch.tensor([-1.0, -0.25, 0.0, 1.0, 1.125, 2.0])
    loc[0, :, :, :, :, 0] = edges[:, None, None, None]
    loc[0, :, :, :, 0, 1] = 0.0
    loc[0, :, :, :, 1, 1] = 1.0
    out = ms_deform_attn(value, sh, starts, loc, attn)
    assert relative(out, ms_deform_attn_core_pytorch(value, sh, loc, attn)) < 1e-6
    assert out[0, 0].abs().max() == 0 and out[0, -1].abs().max() == 0  # wholly outside: nothing sampled


@pytest.mark.parametrize("refs", [2, 4])
def test_module_with_padding_mask_equals_plain_path(kernel, refs):
    """DINO's encoder (2-d reference points) and decoder (4-d boxes) with padded maps."""
    torch.manual_seed(0)
    shapes = LAYOUTS["dino4"]
    attn = MSDeformAttn(d_model=32, n_levels=4, n_heads=8, n_points=4)
    for lin in (attn.sampling_offsets, attn.attention_weights):  # not the degenerate initial zeros
        torch.nn.init.normal_(lin.weight, std=0.5)
    s = sum(h * w for h, w in shapes)
    query, src = torch.randn(2, 7, 32), torch.randn(2, s, 32)
    ref = torch.rand(2, 7, 4, refs)
    mask = torch.zeros(2, s, dtype=torch.bool)
    mask[1, s // 2:] = True
    sh = torch.tensor(shapes)
    starts = torch.cat([sh.new_zeros(1), (sh[:, 0] * sh[:, 1]).cumsum(0)[:-1]])
    got = attn(query, ref, src, sh, starts, mask)
    set_cpu_kernel(False)
    try:
        want = attn(query, ref, src, sh, starts, mask)
    finally:
        set_cpu_kernel(True)
    assert relative(got, want) < 1e-5


def test_levels_outside_value_are_refused(kernel):
    value, sh, starts, loc, attn = inputs(LAYOUTS["mask2former"], n=1)
    with pytest.raises(RuntimeError, match="level 2 .* lies outside value"):
        ms_deform_attn(value, sh, starts + 2, loc, attn)


def test_gradcheck_float64(kernel):
    value, sh, starts, loc, attn = inputs([(3, 4), (2, 3)], n=1, heads=2, d=3, lq=3, points=2, dtype=torch.float64)
    loc = loc * 0.8 + 0.1  # inside the maps; bilinear sampling is smooth except on pixel centres (almost never hit)
    args = [t.requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, sh, starts, l, a), args)


def test_bf16_inputs(kernel):
    value, sh, starts, loc, attn = inputs(LAYOUTS["mask2former"])
    want = ms_deform_attn(value, sh, starts, loc, attn)
    bf = [t.bfloat16().requires_grad_() for t in (value, loc, attn)]
    got = ms_deform_attn(bf[0], sh, starts, bf[1], bf[2])
    assert got.dtype == torch.bfloat16
    assert relative(got.float(), want) < 3e-2
    got.float().square().sum().backward()
    assert all(t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all() for t in bf)


def test_plain_path_without_kernel_is_logged_once(monkeypatch, caplog):
    """No compiler (the build failed): the plain path runs, and says so once."""
    monkeypatch.setattr(MSDA, "_CPU_KERNEL", None)
    monkeypatch.setattr(MSDA, "_LOGGED", set())
    value, sh, starts, loc, attn = inputs(LAYOUTS["dino5"], n=1)
    with caplog.at_level(logging.INFO, logger=MSDA.__name__):
        out1 = ms_deform_attn(value, sh, starts, loc, attn)
        out2 = ms_deform_attn(value, sh, starts, loc, attn)
    assert torch.equal(out1, ms_deform_attn_core_pytorch(value, sh, loc, attn)) and torch.equal(out1, out2)
    assert [r.getMessage() for r in caplog.records].count(
        "multi-scale deformable attention: using the plain grid_sample path on the CPU") == 1


def test_failed_build_falls_back(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("g++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with caplog.at_level(logging.WARNING, logger=MSDA.__name__):
        assert MSDA._build_cpu_kernel() is None
    assert "cannot build the CPU kernel (g++: command not found)" in caplog.text


def test_tracing_records_grid_sample(kernel):
    """Export (tracing, ONNX) records the plain path: GridSample, not an opaque kernel call."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2).eval()
    sh = torch.tensor([(4, 5), (2, 3)])
    args = (torch.randn(1, 3, 16), torch.rand(1, 3, 2, 2), torch.randn(1, 26, 16), sh, torch.tensor([0, 20]))
    traced = torch.jit.trace(attn, args)
    assert "grid_sampler" in str(traced.graph)
    assert relative(traced(*args), attn(*args)) < 1e-5
