"""Checkpoint reading, conversion and focal kernel adaptation (design contracts 1-3)."""
import functools
import http.server
import importlib.util
import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model

from focalnet_det import add_focalnet_config
from focalnet_det.checkpoint import FocalNetCheckpointer, adapt_focal_kernels, timm_to_official
from focalnet_det.errors import UserError
from focalnet_det.modeling.backbone.focalnet import FocalNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_checkpoint.py")
_spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)  # tools/ is not a package
convert_checkpoint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_checkpoint)

DIM, DEPTHS = 16, (1, 1, 2, 1)  # tiny FocalNet-T shape: fast on CPU
SMALL = dict(embed_dim=DIM, depths=DEPTHS, drop_path_rate=0.0)


def randomize(model, seed=0):
    """Perturb every parameter, so that biases, norms and layerscale carry information."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


class Wrapper(nn.Module):
    """A detector stand-in: the FocalNet under ``backbone`` plus a head."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(4, 2)


def cfg_for(backbone_name, windows=9, levels=2, meta="GeneralizedRCNN"):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = meta
    cfg.MODEL.BACKBONE.NAME = backbone_name
    cfg.MODEL.FOCALNET.EMBED_DIM = DIM
    cfg.MODEL.FOCALNET.DEPTHS = list(DEPTHS)
    cfg.MODEL.FOCALNET.FOCAL_WINDOWS = [windows] * 4
    cfg.MODEL.FOCALNET.FOCAL_LEVELS = [levels] * 4
    cfg.MODEL.FOCALNET.DROP_PATH_RATE = 0.0
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    return cfg


def backbone_model(fpn, windows=9, levels=2):
    """Wrapper around a cfg-built plain or FPN backbone: FocalNet at ``backbone.`` or ``backbone.bottom_up.``."""
    cfg = cfg_for("build_focalnet_fpn_backbone" if fpn else "build_focalnet_backbone", windows, levels)
    return Wrapper(build_backbone(cfg)).eval()


def official_checkpoint(path, windows=3, levels=2, seed=0):
    """Write an official classification checkpoint of a random FocalNet; returns that FocalNet."""
    net = randomize(FocalNet(focal_windows=(windows,) * 4, focal_levels=(levels,) * 4, **SMALL), seed)
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("norm")}  # no output norms in cls
    sd.update({"norm.weight": torch.ones(8 * DIM), "norm.bias": torch.zeros(8 * DIM)})
    sd.update({"head.weight": torch.randn(10, 8 * DIM), "head.bias": torch.zeros(10)})
    torch.save({"model": sd}, path)
    return net


def assert_backbone_equal(net, ref):
    """Every checkpoint tensor of ``ref`` (a FocalNet) is in ``net`` (a FocalNet) unchanged where shapes agree."""
    got = net.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("norm") and got[k].shape == v.shape:
            assert torch.equal(got[k], v), k


X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------------------------
# official classification checkpoint -> detection model (contract 2 + 3)


def test_official_checkpoint_into_rcnn_is_function_preserving(tmp_path, caplog):
    """Window-3 classification weights in a window-9 Faster R-CNN (FPN): no missing backbone key, same features."""
    path = str(tmp_path / "focalnet_cls.pth")
    cls_net = official_checkpoint(path, windows=3)
    model = build_model(cfg_for("build_focalnet_fpn_backbone", windows=9)).eval()
    head_before = model.roi_heads.box_predictor.cls_score.weight.clone()
    with caplog.at_level("INFO"):
        FocalNetCheckpointer(model).load(path)
    assert "focal kernels padded" in caplog.text and "keep their initialisation" in caplog.text
    det_net = model.backbone.bottom_up
    assert det_net.layers[0].blocks[0].modulation.focal_layers[0][0].weight.shape[-1] == 9
    assert_backbone_equal(det_net, cls_net)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, head_before)  # heads untouched
    for i, (want, got) in enumerate(zip(stage_features(cls_net, X), stage_features(det_net, X))):
        assert (want - got).abs().max().item() < 1e-5, i


def test_official_variants_wrappers(tmp_path):
    """Bare state dict, ``state_dict`` wrapper with ``module.``, and mmdet layout all load into the backbone."""
    net = randomize(FocalNet(focal_windows=(9,) * 4, **SMALL))
    sd = net.state_dict()
    files = {
        "bare.pth": {k: v for k, v in sd.items() if not k.startswith("norm")},
        "ddp.pth": {"state_dict": {"module." + k: v for k, v in sd.items()}},
        "mmdet.pth": {
            "meta": {"epoch": 12},
            "state_dict": {**{"backbone." + k: v for k, v in sd.items()}, "neck.lateral.weight": torch.ones(2),
                           "roi_head.bbox_head.fc_cls.weight": torch.ones(3, 2)},
        },
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        model = backbone_model(fpn=False)
        FocalNetCheckpointer(model).load(str(tmp_path / name))
        assert_backbone_equal(model.backbone, net)
    assert torch.equal(model.backbone.norm0.weight, net.norm0.weight)  # mmdet carries trained output norms


# ----------------------------------------------------------------------------------------------------------
# kernel / level adaptation, value for value


def test_kernel_pad_and_clip_values():
    key = "layers.0.blocks.0.modulation.focal_layers.0.0.weight"
    k3 = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 1, 3, 3) + 1
    out = adapt_focal_kernels({key: k3}, {key: (2, 1, 7, 7)})[key]
    expected = torch.zeros(2, 1, 7, 7)
    expected[:, :, 2:5, 2:5] = k3
    assert torch.equal(out, expected)
    assert out[:, :, 3, 3].tolist() == [[5.0], [14.0]]  # centre stays the centre

    k7 = torch.arange(2 * 49, dtype=torch.float32).reshape(2, 1, 7, 7)
    out = adapt_focal_kernels({key: k7}, {key: (2, 1, 3, 3)})[key]
    assert torch.equal(out, k7[:, :, 2:5, 2:5])
    assert out[0, 0].tolist() == [[16.0, 17.0, 18.0], [23.0, 24.0, 25.0], [30.0, 31.0, 32.0]]


def test_focal_level_expansion_rows():
    C = 2  # rows: q (2), ctx (2), level gates, global gate
    w = torch.arange(7 * C, dtype=torch.float32).reshape(7, C) + 1  # 2 levels: 2C + 2 + 1 = 7 rows
    b = torch.arange(7, dtype=torch.float32) + 100
    sd = {"layers.1.blocks.0.modulation.f.weight": w, "layers.1.blocks.0.modulation.f.bias": b}
    out = adapt_focal_kernels(sd, {"layers.1.blocks.0.modulation.f.weight": (9, C),
                                   "layers.1.blocks.0.modulation.f.bias": (9,)})  # 4 levels
    expected_w = torch.stack([w[0], w[1], w[2], w[3], w[4], w[5], torch.zeros(C), torch.zeros(C), w[6]])
    expected_b = torch.tensor([b[0], b[1], b[2], b[3], b[4], b[5], 0.0, 0.0, b[6]])
    assert torch.equal(out["layers.1.blocks.0.modulation.f.weight"], expected_w)
    assert torch.equal(out["layers.1.blocks.0.modulation.f.bias"], expected_b)

    with pytest.raises(UserError, match="fewer focal levels"):
        adapt_focal_kernels(sd, {"layers.1.blocks.0.modulation.f.weight": (6, C)})


def test_more_levels_in_model_loads(tmp_path):
    """A 2-level checkpoint loads into a 3-level model: level gates as the rule says, level-3 kernels fresh."""
    path = str(tmp_path / "srf.pth")
    cls_net = official_checkpoint(path, windows=3, levels=2)
    model = backbone_model(fpn=False, windows=3, levels=3)
    fresh = model.backbone.layers[2].blocks[0].modulation.focal_layers[2][0].weight.clone()
    FocalNetCheckpointer(model).load(path)
    mod, ref = model.backbone.layers[2].blocks[0].modulation, cls_net.layers[2].blocks[0].modulation
    C = 4 * DIM
    assert torch.equal(mod.f.weight[: 2 * C + 2], ref.f.weight[: 2 * C + 2])
    assert torch.equal(mod.f.weight[2 * C + 2], torch.zeros(C))
    assert torch.equal(mod.f.weight[-1], ref.f.weight[-1])
    assert mod.f.bias[2 * C + 2] == 0 and mod.f.bias[-1] == ref.f.bias[-1]
    assert torch.equal(mod.focal_layers[2][0].weight, fresh)

    with pytest.raises(UserError, match="fewer focal levels"):
        FocalNetCheckpointer(backbone_model(fpn=False, windows=3, levels=1)).load(path)


# ----------------------------------------------------------------------------------------------------------
# timm checkpoints


def timm_variants():
    """(timm model, our FocalNet kwargs with the same configuration)."""
    from timm.models.focalnet import FocalNet as TimmFocalNet

    small = dict(embed_dim=DIM, depths=DEPTHS, drop_path_rate=0.0, num_classes=5)
    return {
        "srf": (TimmFocalNet(**small), {}),
        "large_fl4": (
            TimmFocalNet(**small, focal_levels=(4,) * 4, use_overlap_down=True, use_post_norm=True,
                         layerscale_value=1e-4, normalize_modulator=True),
            dict(focal_levels=(4,) * 4, use_conv_embed=True, use_postln=True, use_layerscale=True,
                 normalize_modulator=True),
        ),
        "huge_fl3": (
            TimmFocalNet(**small, focal_levels=(3,) * 4, use_overlap_down=True, use_post_norm=True,
                         use_post_norm_in_modulation=True, layerscale_value=1e-4),
            dict(focal_levels=(3,) * 4, use_conv_embed=True, use_postln=True, use_layerscale=True,
                 use_postln_in_modulation=True),
        ),
    }


def stage_features(net, x):
    """Our pre-``norm{i}`` stage outputs (NCHW), captured from each stage's forward."""
    feats = []
    grab = lambda module, inputs, output: feats.append(output[0].permute(0, 3, 1, 2))  # noqa: E731
    hooks = [layer.register_forward_hook(grab) for layer in net.layers]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return feats


@pytest.mark.parametrize("variant", ["srf", "large_fl4", "huge_fl3"])
def test_timm_checkpoint_matches_timm_features(tmp_path, variant):
    from safetensors.torch import save_file

    timm_net, ours_kwargs = timm_variants()[variant]
    timm_net = randomize(timm_net, seed=3)
    sd = timm_net.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "timm.safetensors"))
    torch.save(sd, tmp_path / "timm.pth")
    with torch.no_grad():
        want = timm_net.forward_intermediates(X, intermediates_only=True)
    for name in ("timm.safetensors", "timm.pth"):
        model = Wrapper(FocalNet(focal_windows=(3,) * 4, **SMALL, **ours_kwargs)).eval()
        FocalNetCheckpointer(model).load(str(tmp_path / name))
        got = stage_features(model.backbone, X)
        for i, (w, g) in enumerate(zip(want, got)):
            assert w.shape == g.shape and (w - g).abs().max().item() <= 1e-5, (name, i)


def test_timm_create_model_keys_convert():
    """The registered timm T-SRF converts to exactly our T-SRF's backbone keys and shapes."""
    import timm

    with torch.device("meta"):  # shapes only: skips timm's slow weight init
        sd = timm_to_official(timm.create_model("focalnet_tiny_srf", pretrained=False).state_dict())
    ours = {k: v.shape for k, v in FocalNet(focal_windows=(3,) * 4).state_dict().items() if not k.startswith("norm")}
    assert {k: v.shape for k, v in sd.items()} == ours


# ----------------------------------------------------------------------------------------------------------
# Detectron2 checkpoints, URLs


def test_detectron2_checkpoint_resume_and_prefix_remap(tmp_path):
    """Saved by the checkpointer (FPN model): resumes optimizer and iteration, and loads into a plain model."""
    model = randomize(backbone_model(fpn=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.backbone(X)["p2"].sum().backward()
    opt.step()
    FocalNetCheckpointer(model, str(tmp_path), optimizer=opt).save("model_0000009", iteration=9)

    model2 = backbone_model(fpn=True)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    extra = FocalNetCheckpointer(model2, str(tmp_path), optimizer=opt2).resume_or_load("", resume=True)
    assert extra["iteration"] == 9 and len(opt2.state_dict()["state"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))

    plain = backbone_model(fpn=False)
    FocalNetCheckpointer(plain).load(str(tmp_path / "model_0000009.pth"))  # backbone.bottom_up. -> backbone.
    assert_backbone_equal(plain.backbone, model.backbone.bottom_up)
    assert torch.equal(plain.backbone.norm3.weight, model.backbone.bottom_up.norm3.weight)


def test_load_from_http_url(tmp_path, monkeypatch):
    """An http URL is downloaded into $FOCALNET_DET_CACHE/weights, then converted as a local file."""
    (tmp_path / "srv").mkdir()
    cls_net = official_checkpoint(str(tmp_path / "srv" / "focalnet_url.pth"))
    monkeypatch.setenv("FOCALNET_DET_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "srv"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        model = backbone_model(fpn=False, windows=3)
        FocalNetCheckpointer(model).load(f"http://127.0.0.1:{server.server_address[1]}/focalnet_url.pth")
    finally:
        server.shutdown()
    assert_backbone_equal(model.backbone, cls_net)
    assert (tmp_path / "cache" / "weights" / "focalnet_url.pth").is_file()


# ----------------------------------------------------------------------------------------------------------
# tools/convert_checkpoint.py


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_convert_tool_round_trip(tmp_path):
    src, out = tmp_path / "cls.pth", tmp_path / "d2.pth"
    cls_net = official_checkpoint(str(src), windows=3)
    res = run_tool(src, out, "--focal-windows", 9, 9, 9, 9)
    assert res.returncode == 0, res.stderr
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["__author__"] == "focalnet_det" and ckpt["matching_heuristics"] is False
    assert all(k.startswith("backbone.") for k in ckpt["model"]) and "backbone.head.weight" not in ckpt["model"]
    assert ckpt["model"]["backbone.layers.0.blocks.0.modulation.focal_layers.1.0.weight"].shape[-1] == 11
    for fpn in (False, True):
        model = backbone_model(fpn=fpn, windows=9)
        FocalNetCheckpointer(model).load(str(out))
        net = model.backbone.bottom_up if fpn else model.backbone
        assert_backbone_equal(net, cls_net)
        for want, got in zip(stage_features(cls_net, X), stage_features(net, X)):
            assert (want - got).abs().max().item() < 1e-5


def test_convert_tool_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_checkpoint.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(f in out for f in ("official", "timm", "mmdet", "detectron2"))


# ----------------------------------------------------------------------------------------------------------
# errors


@pytest.fixture
def bad_files(tmp_path):
    import torchvision

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(4096))
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    return {
        "missing": (tmp_path / "nope.pth", "weights file not found: .*nope.pth"),
        "corrupt": (corrupt, "cannot read weights file .*corrupt.pth"),
        "resnet": (resnet, "(?s)resnet18.pth.*conv1.weight"),
    }


def test_errors_in_checkpointer(bad_files):
    for path, message in bad_files.values():
        with pytest.raises(UserError, match=message):
            FocalNetCheckpointer(backbone_model(fpn=False)).load(str(path))


def test_wrong_variant_names_keys(tmp_path):
    """A checkpoint of another variant names the MODEL.FOCALNET key (tests/test_inspect.py has every key); a damaged
    one (a key missing, a shape changed) names the keys. Errors, not warnings."""
    path = str(tmp_path / "cls.pth")
    official_checkpoint(path)
    wider = Wrapper(FocalNet(embed_dim=2 * DIM, depths=DEPTHS))
    with pytest.raises(UserError, match=r"^MODEL\.FOCALNET\.EMBED_DIM: the checkpoint has 16, the config says 32"):
        FocalNetCheckpointer(wider).load(path)
    deeper = Wrapper(FocalNet(embed_dim=DIM, depths=(1, 1, 3, 1)))
    with pytest.raises(UserError, match=r"^MODEL\.FOCALNET\.DEPTHS: the checkpoint has \[1, 1, 2, 1\], the config says"):
        FocalNetCheckpointer(deeper).load(path)
    sd = torch.load(path, weights_only=True)["model"]
    norm1 = sd.pop("layers.2.blocks.1.norm1.weight")
    torch.save({"model": sd}, path)
    with pytest.raises(UserError, match=r"lacks FocalNet backbone keys.*backbone\.layers\.2\.blocks\.1\.norm1\.weight"):
        FocalNetCheckpointer(Wrapper(FocalNet(embed_dim=DIM, depths=DEPTHS))).load(path)
    sd["layers.2.blocks.1.norm1.weight"] = norm1
    sd["layers.1.blocks.0.mlp.fc1.weight"] = sd["layers.1.blocks.0.mlp.fc1.weight"][:-1]
    torch.save({"model": sd}, path)
    with pytest.raises(UserError, match=r"shapes differ.*layers\.1\.blocks\.0\.mlp\.fc1\.weight \(127, 32\) vs model"):
        FocalNetCheckpointer(Wrapper(FocalNet(embed_dim=DIM, depths=DEPTHS))).load(path)


def test_errors_in_tool(bad_files, tmp_path, capsys):
    """Exit code 2 and one line on stderr naming the file; one case as a real process (imports included)."""
    res = run_tool(bad_files["corrupt"][0], tmp_path / "out.pth")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and str(bad_files["corrupt"][0]) in res.stderr, res.stderr
    for path, _ in bad_files.values():
        assert convert_checkpoint.main([str(path), str(tmp_path / "out.pth")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err, err
    assert not (tmp_path / "out.pth").exists()
