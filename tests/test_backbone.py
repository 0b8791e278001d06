"""The FocalNet backbone: every released variant from its config, shapes, sizes, numerics, training switches."""
import os

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model

from focalnet_det import add_focalnet_config
from focalnet_det.modeling.backbone.focalnet import DepthwiseConv2d, FocalNet, depthwise_conv
from reference_focalnet import reference_forward

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "COCO-InstanceSegmentation")

# backbone parameters (M), output norms included, from the official classes (DESIGN.md, contract 5)
BACKBONE_PARAMS = {
    "tiny_srf": 28.40, "tiny_lrf": 29.15, "small_srf": 50.64, "small_lrf": 52.17, "base_srf": 89.15,
    "base_lrf": 91.19, "large_fl3": 205.57, "large_fl4": 205.75, "xlarge_fl3": 364.04, "xlarge_fl4": 364.28,
    "huge_fl3": 683.75, "huge_fl4": 686.47,
}
# full Mask R-CNN (80 classes), published; T-LRF is the arithmetic of its [9, 11, 13] kernels
MASK_RCNN_PARAMS = {
    "tiny_srf": 48.6, "tiny_lrf": 49.43, "small_srf": 70.8, "small_lrf": 72.3, "base_srf": 109.4, "base_lrf": 111.4,
}


def load_cfg(name, *opts):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def variant_config(variant):
    schedule = "1x" if variant.split("_")[0] in ("tiny", "small", "base") else "3x"
    return f"mask_rcnn_focalnet_{variant}_{schedule}.yaml"


def count(module):
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize("variant", list(BACKBONE_PARAMS))
def test_variant_builds_with_official_size_and_shapes(variant):
    cfg = load_cfg(variant_config(variant), "MODEL.BACKBONE.NAME", "build_focalnet_backbone")
    backbone = build_backbone(cfg).eval()
    assert count(backbone) == pytest.approx(BACKBONE_PARAMS[variant], abs=0.006)
    dim = cfg.MODEL.FOCALNET.EMBED_DIM
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (dim, 4), "res3": (2 * dim, 8), "res4": (4 * dim, 16), "res5": (8 * dim, 32)
    }
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 67, 93))  # not a multiple of the patch grid
    for name, s in shapes.items():
        stride = s.stride
        assert out[name].shape == (1, s.channels, -(-67 // stride), -(-93 // stride)), name
        assert torch.isfinite(out[name]).all()
    del backbone


@pytest.mark.parametrize("variant", list(MASK_RCNN_PARAMS))
def test_mask_rcnn_parameter_count_matches_published(variant):
    model = build_model(load_cfg(variant_config(variant)))
    assert count(model) == pytest.approx(MASK_RCNN_PARAMS[variant], rel=0.004)


FLAGS = {
    "pre-ln": {},
    "conv-embed": dict(use_conv_embed=True),
    "post-ln+layerscale": dict(use_postln=True, use_layerscale=True),
    "normalize-modulator": dict(normalize_modulator=True),
    "post-ln-in-modulation": dict(use_postln_in_modulation=True),
    "large-fl4": dict(use_conv_embed=True, use_postln=True, use_layerscale=True, normalize_modulator=True),
    "huge": dict(use_conv_embed=True, use_postln=True, use_layerscale=True, use_postln_in_modulation=True),
}


@pytest.mark.parametrize("flags", list(FLAGS))
def test_fast_path_equals_reference_formulation(flags):
    torch.manual_seed(0)
    kw = FLAGS[flags]
    depths, levels = (2, 1, 2, 1), (2, 3, 2, 4)
    model = FocalNet(32, depths, focal_levels=levels, focal_windows=(3, 5, 9, 3), layerscale_value=0.5, **kw)
    model = model.double().eval()  # float64: the two formulations must agree to rounding, not to fp32 noise
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norms and gammas
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, 3, 70, 101, dtype=torch.float64)
        out = model(x)
        ref = reference_forward(
            model, x, depths, levels, conv_embed=kw.get("use_conv_embed", False), postln=kw.get("use_postln", False),
            layerscale=kw.get("use_layerscale", False), normalize=kw.get("normalize_modulator", False),
            postln_in_mod=kw.get("use_postln_in_modulation", False),
        )
    for name in ref:
        assert out[name].shape == ref[name].shape
        assert (out[name] - ref[name]).abs().max().item() <= 1e-9, name


def test_training_gradients_equal_reference_formulation():
    """Training takes other paths than inference (autograd, the depthwise weight gradient): same gradients."""
    torch.manual_seed(0)
    depths, levels = (1, 1, 2, 1), (2, 3, 2, 2)
    model = FocalNet(16, depths, focal_levels=levels, focal_windows=(3, 5, 9, 11), drop_path_rate=0.0)
    model = model.double().train()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    weights = {name: torch.randn_like(v) for name, v in reference_forward(model, x, depths, levels).items()}
    grads = []
    for forward in (model, lambda x: reference_forward(model, x, depths, levels)):
        out = forward(x)
        loss = sum((out[name] * w).sum() for name, w in weights.items())
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for (name, _), a, b in zip(model.named_parameters(), *grads):
        assert torch.allclose(a, b, atol=1e-9), name


@pytest.mark.parametrize("flags", list(FLAGS))
def test_fused_fp32_inference_equals_reference(flags):
    """fp32 inference takes the fused oneDNN path (conv + GELU in one call) where available."""
    torch.manual_seed(0)
    kw = FLAGS[flags]
    depths, levels = (2, 2, 2, 1), (2, 3, 2, 4)
    model = FocalNet(96, depths, focal_levels=levels, focal_windows=(9, 9, 7, 3), **kw).eval()
    x = torch.randn(1, 3, 96, 160)
    with torch.inference_mode():
        out = model(x)
        ref = reference_forward(
            model, x, depths, levels, conv_embed=kw.get("use_conv_embed", False), postln=kw.get("use_postln", False),
            layerscale=kw.get("use_layerscale", False), normalize=kw.get("normalize_modulator", False),
            postln_in_mod=kw.get("use_postln_in_modulation", False),
        )
    for name in ref:
        # fp32 rounding differs with the CPU's oneDNN kernels (AMD EPYC: up to 1.4e-5 on outputs of size ~4)
        scale = max(1.0, ref[name].abs().max().item())
        assert (out[name] - ref[name]).abs().max().item() <= 1e-5 * scale, name


def bf16_relative_errors(model, x):
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert all(v.dtype == torch.bfloat16 for v in out.values())  # the bf16 path, not autocast's fp32 LayerNorms
    return {name: ((out[name].float() - ref[name]).norm() / ref[name].norm()).item() for name in ref}


@pytest.mark.parametrize("flags", ["pre-ln", "large-fl4", "huge"])
def test_bf16_autocast_is_close_to_fp32(flags):
    torch.manual_seed(0)
    model = FocalNet(96, (2, 2, 2, 2), focal_levels=(2, 3, 2, 4), **FLAGS[flags]).eval()
    errors = bf16_relative_errors(model, torch.randn(1, 3, 128, 128))
    assert max(errors.values()) < 0.03, errors


def test_bf16_weights_follow_parameter_changes():
    """The bf16 path casts the weights once and caches them: a change to any parameter must reach it."""
    torch.manual_seed(0)
    model = FocalNet(32, (1, 1, 2, 1)).eval()
    x = torch.randn(1, 3, 64, 64)
    bf16_relative_errors(model, x)  # fills the cache
    other = FocalNet(32, (1, 1, 2, 1)).eval()
    model.load_state_dict(other.state_dict())  # in place: every parameter's version moves
    assert max(bf16_relative_errors(model, x).values()) < 0.03
    with torch.no_grad():
        model.layers[2].blocks[1].mlp.fc2.weight.mul_(3.0)  # one parameter, in place
    assert max(bf16_relative_errors(model, x).values()) < 0.03
    assert not any(p.dtype != torch.float32 for p in model.parameters())  # the model itself is untouched


@pytest.mark.parametrize("shape, kernel", [((2, 8, 5, 5), 11), ((3, 6, 12, 17), 9), ((1, 4, 20, 9), 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_conv_gradients_equal_autograd(shape, kernel, channels_last):
    """The CPU training path's own weight gradient (kernels larger than the map included) against autograd's."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(*shape, dtype=torch.float64).to(memory_format=fmt).requires_grad_()
    w = torch.randn(shape[1], 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(shape, dtype=torch.float64)
    out = DepthwiseConv2d.apply(x, w, kernel // 2)
    ours = torch.autograd.grad(out, (x, w), grad_out)
    ref_out = F.conv2d(x, w, padding=kernel // 2, groups=shape[1])
    ref = torch.autograd.grad(ref_out, (x, w), grad_out)
    assert torch.allclose(out, ref_out, atol=1e-12)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("kernel", [3, 5, 7, 9, 11, 13, 15])
def test_depthwise_inference_equals_plain_convolution(kernel):
    """Inference may run a kernel zero-padded to a size oneDNN computes faster (13 -> 15): same output."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 23, 30).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, kernel, kernel)
    with torch.inference_mode():
        out = depthwise_conv(x, w, kernel // 2)
    assert torch.allclose(out, F.conv2d(x, w, padding=kernel // 2, groups=8), atol=1e-4)


def test_input_padding_equals_explicit_zero_padding():
    model = FocalNet(16, (1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 61, 50)
    with torch.no_grad():
        a = model(x)
        b = model(F.pad(x, (0, 2, 0, 3)))
    assert torch.allclose(a["res2"], b["res2"], atol=1e-6)


def test_out_features_subset_and_bad_values():
    model = FocalNet(16, (1, 1, 1, 1), out_features=("res3", "res5"))
    assert set(model(torch.randn(1, 3, 64, 64))) == {"res3", "res5"}
    assert not hasattr(model, "norm0") and hasattr(model, "norm3")
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        FocalNet(16, (1, 1, 1, 1), out_features=("res6",))
    with pytest.raises(ValueError, match="FOCAL_WINDOWS"):
        FocalNet(16, (1, 1, 1, 1), focal_windows=(9, 9))


@pytest.mark.parametrize("frozen, expect_frozen", [(-1, []), (0, ["patch_embed"]), (2, ["patch_embed", "layers.0"]),
                                                  (3, ["patch_embed", "layers.0", "layers.1"])])
def test_frozen_stages(frozen, expect_frozen):
    model = FocalNet(16, (1, 1, 1, 1), frozen_stages=frozen).train()
    for name, p in model.named_parameters():
        frozen_param = any(name.startswith(prefix + ".") for prefix in expect_frozen)
        assert p.requires_grad != frozen_param, name
    for prefix in expect_frozen:
        assert not model.get_submodule(prefix).training  # train() keeps frozen parts in eval mode


def test_drop_path_is_stochastic_in_training_only():
    torch.manual_seed(0)
    model = FocalNet(16, (1, 1, 2, 1), drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    assert not torch.allclose(model(x)["res5"], model(x)["res5"])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)["res5"], model(x)["res5"])


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = FocalNet(16, (1, 2, 1, 1), drop_path_rate=0.0)
    ckpt = FocalNet(16, (1, 2, 1, 1), drop_path_rate=0.0, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for m in (plain, ckpt):
        m.train()
        sum(v.sum() for v in m(x).values()).backward()
        grads.append(m.layers[1].blocks[0].modulation.f.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
