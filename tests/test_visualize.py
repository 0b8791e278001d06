"""focalnet_det.visualize and tools/visualize_modulation.py: the maps are the real block's modulator and gates,
computing them leaves the model as it was, and the tool draws what the API computes."""
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_backbone, build_model

import focalnet_det  # noqa: F401
from focalnet_det import add_focalnet_config
from focalnet_det.visualize import find_focalnet, modulation_maps, modulation_parts

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "visualize_modulation.py"
TINY = REPO / "configs" / "Tiny"
SLIM = ["MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,2,1]", "MODEL.DEVICE", "cpu"]

# one config per head family, each with a different variant's switches (T/S/B, L-FL4, H)
VARIANTS = {
    "upernet-T": ("upernet_focalnet_tiny_shapes.yaml", []),
    "maskrcnn-L-FL4": (
        "mask_rcnn_focalnet_tiny_shapes.yaml",
        ["MODEL.FOCALNET.USE_CONV_EMBED", "True", "MODEL.FOCALNET.USE_POSTLN", "True",
         "MODEL.FOCALNET.USE_LAYERSCALE", "True", "MODEL.FOCALNET.LAYERSCALE_VALUE", "0.5",
         "MODEL.FOCALNET.NORMALIZE_MODULATOR", "True",
         "MODEL.FOCALNET.FOCAL_LEVELS", "[4,4,4,4]", "MODEL.FOCALNET.FOCAL_WINDOWS", "[3,3,3,3]"],
    ),
    "mask2former-H-FL3": (
        "maskformer2_focalnet_tiny_shapes.yaml",
        ["MODEL.FOCALNET.USE_CONV_EMBED", "True", "MODEL.FOCALNET.USE_POSTLN", "True",
         "MODEL.FOCALNET.USE_POSTLN_IN_MODULATION", "True", "MODEL.FOCALNET.USE_LAYERSCALE", "True",
         "MODEL.FOCALNET.FOCAL_LEVELS", "[3,3,3,3]", "MODEL.FOCALNET.FOCAL_WINDOWS", "[13,13,13,13]"],
    ),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors, one thread


def make_cfg(config, opts=()):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(str(TINY / config))
    cfg.merge_from_list(SLIM + list(opts))
    return cfg


def randomise(module, seed=0):
    """Weights of order one everywhere (the default init makes every block's output ~1e-3: a weak comparison)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                one = isinstance(m, torch.nn.LayerNorm) and name == "weight"
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if one else 0.0))
    return module


def image_tensor(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_modulator_and_gates_are_the_blocks_own(variant):
    """The recomputed modulator, times the query, through proj (and the post-LN in modulation), is what the real
    modulation module returned in the backbone's own forward (its CPU fast path); and the maps the API returns at
    feature resolution are the L2 norm of that modulator and those gates, for every stage."""
    config, opts = VARIANTS[variant]
    cfg = make_cfg(config, opts)
    backbone = randomise(build_backbone(cfg)).eval()
    net = find_focalnet(backbone)
    image = image_tensor(70, 90)
    mean, std = cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD

    captured, handles = {}, []
    for i, layer in enumerate(net.layers):
        hook = lambda m, args, out, i=i: captured.__setitem__(i, (args[0], out))  # noqa: E731
        handles.append(layer.blocks[-1].modulation.register_forward_hook(hook))
    x = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    x = torch.nn.functional.pad(x, (0, 96 - 90, 0, 96 - 70))[None]  # as Detectron2 pads, to a multiple of 32
    with torch.no_grad():
        backbone(x)
    for h in handles:
        h.remove()

    maps = modulation_maps(backbone, image, mean, std, upsample=False)
    assert list(maps) == ["res2", "res3", "res4", "res5"]
    for i, (inp, out) in captured.items():
        mod = net.layers[i].blocks[-1].modulation
        with torch.no_grad():
            parts = modulation_parts(mod, inp)
            y = (parts["q"] * parts["modulator"]).permute(0, 2, 3, 1)
            y = mod.proj(mod.ln(y) if mod.ln is not None else y)
        scale = out.abs().max().item()
        assert scale > 0.1  # a meaningful comparison
        assert (y - out).abs().max().item() <= 1e-5 * max(scale, 1.0), f"stage {i}"
        m = maps[f"res{i + 2}"]
        expected = parts["modulator"].norm(dim=1)[0].numpy()
        np.testing.assert_allclose(m["modulator"], expected, rtol=1e-5, atol=1e-5 * expected.max())
        np.testing.assert_allclose(m["gates"], parts["gates"][0].numpy(), rtol=1e-5, atol=1e-5)
        assert m["gates"].shape[0] == mod.focal_level + 1
        assert m["stride"] == 4 * 2**i and m["modulator"].shape == (96 // m["stride"], 96 // m["stride"])


def test_upsampled_maps_cover_the_image_and_stay_in_range():
    cfg = make_cfg("upernet_focalnet_tiny_shapes.yaml")
    backbone = randomise(build_backbone(cfg)).eval()
    image = image_tensor(70, 90, seed=1).numpy().transpose(1, 2, 0)  # (H, W, 3) array input too
    low = modulation_maps(backbone, image, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, upsample=False)
    high = modulation_maps(backbone, image, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    for stage in low:
        assert high[stage]["modulator"].shape == (70, 90)
        assert high[stage]["gates"].shape == (low[stage]["gates"].shape[0], 70, 90)
        for name in ("modulator", "gates"):  # bilinear: convex combinations of the grid's values
            assert high[stage][name].min() >= low[stage][name].min() - 1e-5
            assert high[stage][name].max() <= low[stage][name].max() + 1e-5
    # the top-left pixel lies in the first cell: close to that cell's value (bilinear, 1/8 cell away at stride 4)
    assert abs(high["res5"]["modulator"][0, 0] - low["res5"]["modulator"][0, 0]) < 1e-5


def test_computing_maps_leaves_the_model_unchanged():
    """Same outputs, no hook left, no attribute added, same parameters, whole model accepted."""
    cfg = make_cfg("upernet_focalnet_tiny_shapes.yaml")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": image_tensor(64, 64, seed=2)}]
    before_attrs = {name: set(vars(m)) for name, m in model.named_modules()}
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(inputs)[0]["sem_seg"]
    modulation_maps(model, inputs[0]["image"], cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    with torch.no_grad():
        after = model(inputs)[0]["sem_seg"]
    assert torch.equal(before, after)
    assert {name: set(vars(m)) for name, m in model.named_modules()} == before_attrs
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_tool_draws_what_the_api_computes_with_weights(tmp_path, capsys):
    """A whole-model Detectron2 checkpoint as MODEL.WEIGHTS; a good PNG and JPEG, an unreadable file skipped."""
    import visualize_modulation

    config = "maskformer2_focalnet_tiny_shapes.yaml"
    opts = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]
    cfg = make_cfg(config, opts)
    model = randomise(build_model(cfg), seed=3).eval()
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "b.jpg"), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    (images / "c.jpg").write_text("not a JPEG\n")
    out = tmp_path / "out"
    # KEY VALUE overrides both after the inputs and after --opts
    code = visualize_modulation.main(["--config-file", str(TINY / config), "--output", str(out), "--save-arrays",
                                      "--input", str(images), *SLIM, *opts, "--opts", "MODEL.WEIGHTS", str(weights)])
    assert code == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("visualize_modulation.py: skip")]
    assert len(skipped) == 1 and "c.jpg" in skipped[0]
    assert sorted(p.name for p in out.iterdir()) == ["a.npz", "a.png", "b.npz", "b.png"]
    assert cv2.imread(str(out / "a.png")) is not None

    for name in ("a.png", "b.jpg"):
        image = read_image(str(images / name), format=cfg.INPUT.FORMAT)  # 64 px short side: not resized
        expected = modulation_maps(model.backbone, torch.as_tensor(image.transpose(2, 0, 1).copy()),
                                   cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
        saved = np.load(out / (name.split(".")[0] + ".npz"))
        for stage, m in expected.items():
            assert saved[f"{stage}_modulator"].shape == image.shape[:2]
            np.testing.assert_allclose(saved[f"{stage}_modulator"], m["modulator"], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(saved[f"{stage}_gates"], m["gates"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "config, extra, words",
    [
        ("missing.yaml", [], "config file not found: missing.yaml"),
        ("upernet_focalnet_tiny_shapes.yaml", ["MODEL.NO_SUCH_KEY", "1"], "MODEL.NO_SUCH_KEY"),
        ("upernet_focalnet_tiny_shapes.yaml", ["MODEL.WEIGHTS", "nowhere.pth"], "MODEL.WEIGHTS file not found"),
        ("upernet_focalnet_tiny_shapes.yaml", ["MODEL.BACKBONE.NAME", "build_resnet_backbone"], "contains no FocalNet"),
    ],
)
def test_tool_user_errors(tmp_path, config, extra, words):
    import visualize_modulation
    from focalnet_det.errors import UserError

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    config = config if config == "missing.yaml" else str(TINY / config)
    with pytest.raises(UserError, match=words):
        visualize_modulation.main(["--config-file", config, "--input", str(image), "--output", str(tmp_path / "o"),
                                   *SLIM, *extra])
    assert not (tmp_path / "o").exists()


def test_tool_with_no_readable_input_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Run as a script (its __main__ block, in this process: the imports are already paid for)."""
    bad = tmp_path / "bad.png"
    bad.write_text("text")
    monkeypatch.setattr(sys, "argv", [str(TOOL), "--config-file", str(TINY / "upernet_focalnet_tiny_shapes.yaml"),
                                      "--input", str(bad), "--output", str(tmp_path / "o"), *SLIM])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(TOOL), run_name="__main__")
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert any("skipped" in line and "bad.png" in line for line in lines)
    assert lines[-1] == "visualize_modulation.py: error: none of the 1 inputs could be read", lines
