"""Gradient clipping of build_optimizer against Detectron2's per-parameter clipper and torch's full-model one."""
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.solver.build import maybe_add_gradient_clipping

from focalnet_det import add_focalnet_config
from focalnet_det.solver import build_optimizer


def _cfg(clip_type, clip_value, norm_type=2.0):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = norm_type
    return cfg


def _model_with_gradients():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))
    model.unused = torch.nn.Parameter(torch.ones(2))  # no gradient: left alone
    for scale, p in zip([0.01, 3.0, 0.2, 5.0, 0.5, 0.05], [p for p in model.parameters() if p is not model.unused]):
        p.grad = torch.randn_like(p) * scale  # norms on both sides of the clip value
    return model


def _step(model, optimizer):
    optimizer.step()
    params = [p.detach().clone() for p in model.parameters()]
    return params, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    "clip_type,clip_value,norm_type", [("norm", 1.0, 2.0), ("norm", 0.3, float("inf")), ("value", 0.1, 2.0)]
)
def test_per_parameter_clipping_equals_detectron2s(clip_type, clip_value, norm_type):
    cfg = _cfg(clip_type, clip_value, norm_type)
    ours = _model_with_gradients()
    theirs = _model_with_gradients()  # the same weights and gradients
    opt = build_optimizer(cfg, ours)
    # Detectron2's optimizer class with its Python loop of clip_grad_norm_ / clip_grad_value_ per parameter,
    # on the same parameter groups of the twin, less the parameter without a gradient (clip_grad_value_ fails on it)
    by_id = {id(p): n for n, p in ours.named_parameters()}
    twin = dict(theirs.named_parameters())
    groups = [{**g, "params": [twin[by_id[id(p)]] for p in g["params"] if p.grad is not None]}
              for g in opt.param_groups]
    reference = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(groups, lr=cfg.SOLVER.BASE_LR, fused=True)
    (p1, g1), (p2, g2) = _step(ours, opt), _step(theirs, reference)
    unclipped = [p.grad for p in _model_with_gradients().parameters() if p.grad is not None]
    clipped = sum(not torch.equal(a, b) for a, b in zip(g1, unclipped))
    assert len(g1) == len(g2) == len(unclipped) == 6 and clipped >= 2  # the clip changed some gradients ...
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))  # ... exactly as Detectron2's
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_full_model_clipping_bounds_the_global_norm():
    model = _model_with_gradients()
    opt = build_optimizer(_cfg("full_model", 0.5), model)
    before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    opt.step()
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert before > 1.0 and after == pytest.approx(0.5, rel=1e-5)


def test_unknown_clip_type_is_named():
    with pytest.raises(ValueError, match="CLIP_TYPE.*'nrom'"):
        build_optimizer(_cfg("nrom", 1.0), _model_with_gradients())
