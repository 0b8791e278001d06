"""What a checkpoint holds (focalnet_det/checkpoint/inspect.py, ``tools/convert_checkpoint.py --inspect``) and the
one-line structure errors FocalNetCheckpointer gives for a config that does not fit the checkpoint."""
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

from focalnet_det.checkpoint import FocalNetCheckpointer
from focalnet_det.checkpoint.inspect import (
    check_backbone_structure,
    fitting_configs,
    format_report,
    infer_focalnet_config,
    inspect_checkpoint,
    official_flags,
    variant_name,
)
from focalnet_det.errors import UserError
from focalnet_det.modeling.backbone.focalnet import FocalNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_checkpoint.py")
TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), drop_path_rate=0.0)
L_FLAGS = dict(use_conv_embed=True, use_postln=True, use_layerscale=True)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models on shared cores (conftest's fixture)."""


def expected_config(embed_dim=96, depths=(2, 2, 6, 2), mlp_ratio=4.0, focal_levels=(2,) * 4, focal_windows=(9,) * 4,
                    use_conv_embed=False, use_layerscale=False, use_postln_in_modulation=False, **_):
    """The MODEL.FOCALNET values a FocalNet built with these arguments has (FocalNet's defaults otherwise)."""
    return {"EMBED_DIM": embed_dim, "DEPTHS": list(depths), "MLP_RATIO": mlp_ratio, "FOCAL_LEVELS": list(focal_levels),
            "FOCAL_WINDOWS": list(focal_windows), "USE_CONV_EMBED": use_conv_embed, "USE_LAYERSCALE": use_layerscale,
            "USE_POSTLN_IN_MODULATION": use_postln_in_modulation}


BUILDS = {
    "srf": dict(focal_windows=(3,) * 4),
    "large_fl4": dict(focal_levels=(4,) * 4, focal_windows=(3,) * 4, normalize_modulator=True, **L_FLAGS),
    "huge_fl3": dict(focal_levels=(3,) * 4, focal_windows=(3,) * 4, use_postln_in_modulation=True, **L_FLAGS),
    "per_stage": dict(focal_levels=(2, 3, 2, 4), focal_windows=(11, 9, 9, 7), mlp_ratio=2.0),
}


@pytest.mark.parametrize("name", BUILDS)
def test_inferred_values_are_those_the_model_was_built_with(name):
    net = FocalNet(**TINY, **BUILDS[name])
    assert infer_focalnet_config(net.state_dict()) == expected_config(**TINY, **BUILDS[name])


def meta_state_dict(**kwargs):
    with torch.device("meta"):  # shapes only: full-size variants in no time and no memory
        return FocalNet(**kwargs).state_dict()


def test_full_size_variants_are_named_and_their_configs_found():
    t_lrf = infer_focalnet_config(meta_state_dict(focal_levels=(3,) * 4, focal_windows=(3,) * 4))
    assert variant_name(t_lrf) == "FocalNet-T LRF"
    assert variant_name({**t_lrf, "FOCAL_WINDOWS": [9] * 4}) == "FocalNet-T LRF"  # detection windows: same variant
    assert variant_name(infer_focalnet_config(meta_state_dict(**TINY))) is None
    l_fl4 = meta_state_dict(embed_dim=192, depths=(2, 2, 18, 2), focal_levels=(4,) * 4, focal_windows=(3,) * 4,
                            **L_FLAGS)
    assert variant_name(infer_focalnet_config(l_fl4)) == "FocalNet-L FL4"
    h_fl3 = meta_state_dict(embed_dim=352, depths=(2, 2, 18, 2), focal_levels=(3,) * 4, focal_windows=(3,) * 4,
                            use_postln_in_modulation=True, **L_FLAGS)
    assert variant_name(infer_focalnet_config(h_fl3)) == "FocalNet-H FL3"

    fits, unreadable = fitting_configs({**t_lrf, **official_flags("FocalNet-T LRF")})
    names = {os.path.basename(path) for path, _ in fits}
    assert not unreadable
    assert {"mask_rcnn_focalnet_tiny_lrf_1x.yaml", "mask_rcnn_focalnet_tiny_lrf_3x.yaml",
            "cascade_mask_rcnn_focalnet_tiny_lrf_3x.yaml", "upernet_focalnet_tiny_lrf_160k.yaml"} <= names
    assert all("tiny_lrf" in n for n in names), names  # no SRF, no other size, no Tiny/ config (T-SRF)
    notes = dict(fits)
    assert notes["configs/COCO-InstanceSegmentation/cascade_mask_rcnn_focalnet_tiny_lrf_3x.yaml"] == \
        "focal windows [3, 3, 3, 3] -> [11, 9, 9, 7] (adapted at load)"


def test_official_variant_flags_warn_where_the_config_differs(caplog):
    """The flags no weight shows: a released L-FL4 / L-FL3 with the official values missing -> a warning each."""
    big = dict(embed_dim=192, depths=(2, 2, 18, 2), focal_windows=(3,) * 4)
    fl4 = meta_state_dict(**big, focal_levels=(4,) * 4, **L_FLAGS)
    with torch.device("meta"):
        plain_fl4 = FocalNet(**big, focal_levels=(4,) * 4, **L_FLAGS)  # NORMALIZE_MODULATOR False (timm's trap)
        pre_ln = FocalNet(**big, focal_levels=(4,) * 4, **{**L_FLAGS, "use_postln": False}, normalize_modulator=True)
        right = FocalNet(**big, focal_levels=(4,) * 4, **L_FLAGS, normalize_modulator=True)
    with caplog.at_level(logging.WARNING):
        check_backbone_structure(fl4, plain_fl4, "l_fl4.pth")
        check_backbone_structure(fl4, pre_ln, "l_fl4.pth")
        check_backbone_structure(fl4, right, "l_fl4.pth")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "FocalNet-L FL4" in warnings[0] and "MODEL.FOCALNET.NORMALIZE_MODULATOR True" in warnings[0]
    assert "MODEL.FOCALNET.USE_POSTLN True" in warnings[1]


# ------------------------------------------------------------------------------------------------------------------
# files of every format


def official_file(path, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = FocalNet(**{**TINY, "focal_windows": (3,) * 4, **kwargs})
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("norm")}
    sd.update({"norm.weight": torch.ones(128), "norm.bias": torch.zeros(128), "head.weight": torch.zeros(10, 128),
               "head.bias": torch.zeros(10)})
    torch.save({"model": sd}, path)
    return net


def write_configs(folder):
    """Configs of the tiny FocalNet (T-SRF layout at width 16), based on the real ones: only the structure fits."""
    folder.mkdir()
    mask_rcnn = "COCO-InstanceSegmentation/mask_rcnn_focalnet_tiny_srf_1x.yaml"
    bases = {  # name: (base, MODEL.FOCALNET)
        "a_mask_rcnn.yaml": (mask_rcnn, "{EMBED_DIM: 16, DEPTHS: [1, 1, 2, 1]}"),
        "b_cascade.yaml": ("COCO-InstanceSegmentation/cascade_mask_rcnn_focalnet_tiny_lrf_3x.yaml",
                           "{EMBED_DIM: 16, DEPTHS: [1, 1, 2, 1], FOCAL_LEVELS: [2, 2, 2, 2]}"),
        "c_upernet.yaml": ("ADE20K-SemanticSegmentation/upernet_focalnet_tiny_srf_160k.yaml",
                           "{EMBED_DIM: 16, DEPTHS: [1, 1, 2, 1]}"),
        "d_deeper.yaml": (mask_rcnn, "{EMBED_DIM: 16, DEPTHS: [1, 1, 3, 1]}"),
        "Base-ignored.yaml": (mask_rcnn, "{EMBED_DIM: 16, DEPTHS: [1, 1, 2, 1]}"),
    }
    for name, (base, focalnet) in bases.items():
        (folder / name).write_text(f'_BASE_: "{os.path.join(ROOT, "configs", base)}"\nMODEL:\n  FOCALNET: {focalnet}\n')
    return folder


def fitting(report):
    return [os.path.basename(path) for path, _ in report["configs"]]


def test_official_file(tmp_path):
    path = tmp_path / "cls.pth"
    official_file(path)
    configs = write_configs(tmp_path / "configs")
    report = inspect_checkpoint(str(path), configs)
    assert report["format"] == "official" and report["variant"] is None
    assert report["inferred"] == expected_config(**TINY, focal_windows=(3,) * 4)
    assert report["heads"] == ["classifier head (10 classes)"] and report["family"] is None
    assert fitting(report) == ["a_mask_rcnn.yaml", "b_cascade.yaml", "c_upernet.yaml"]  # any head family
    assert dict(report["configs"])[os.path.join("configs", "b_cascade.yaml")] == \
        "focal windows [3, 3, 3, 3] -> [11, 9, 9, 7] (adapted at load)"
    text = format_report(report)
    for line in ("format: official", "  EMBED_DIM: 16  (stem output channels)", "  DEPTHS: [1, 1, 2, 1]",
                 "  USE_CONV_EMBED: False  (a 4x4 stem)", "  USE_LAYERSCALE: False  (no gamma_1)",
                 "  NORMALIZE_MODULATOR: cannot be seen in the weights", "  configs/a_mask_rcnn.yaml"):
        assert line in text, text


@pytest.fixture(scope="module")
def mask_rcnn():
    from test_mmdet_checkpoints import random_model, tiny_cfg

    return random_model(tiny_cfg("mask_rcnn_focalnet_tiny_srf_1x.yaml"))


def test_detectron2_and_mmdet_mask_rcnn_files(tmp_path, mask_rcnn):
    """One tiny Mask R-CNN saved by the checkpointer and as mmdet's runner saves it: the same report but the format."""
    from test_mmdet_checkpoints import write_mmdet_file

    FocalNetCheckpointer(mask_rcnn, str(tmp_path)).save("model_final")
    write_mmdet_file(mask_rcnn, tmp_path / "mmdet.pth")
    configs = write_configs(tmp_path / "configs")
    for name, fmt in (("model_final.pth", "Detectron2"), ("mmdet.pth", "mmdet")):
        report = inspect_checkpoint(str(tmp_path / name), configs)
        assert report["format"] == fmt
        assert report["inferred"] == expected_config(**TINY)  # the config's windows 9, levels 2
        assert report["heads"] == ["FPN", "RPN", "box head (80 classes)", "mask head"], report["heads"]
        assert report["family"] == {"family": "rcnn", "cascade": False, "mask": True}
        assert fitting(report) == ["a_mask_rcnn.yaml"]  # not the Cascade, the UPerNet or the deeper one


def test_cascade_mmdet_file(tmp_path):
    from test_mmdet_checkpoints import random_model, tiny_cfg, write_mmdet_file

    model = random_model(tiny_cfg("cascade_mask_rcnn_focalnet_tiny_lrf_3x.yaml",
                                  "MODEL.FOCALNET.FOCAL_LEVELS", [2, 2, 2, 2]))
    write_mmdet_file(model, tmp_path / "cascade.pth")
    report = inspect_checkpoint(str(tmp_path / "cascade.pth"), write_configs(tmp_path / "configs"))
    assert "Cascade R-CNN box heads (3 stages, 80 classes)" in report["heads"]
    assert report["inferred"]["FOCAL_WINDOWS"] == [11, 9, 9, 7]
    assert fitting(report) == ["b_cascade.yaml"]


def test_mmseg_upernet_file(tmp_path):
    from test_upernet import mmseg_upernet_state_dict

    net = FocalNet(**TINY, focal_windows=(9,) * 4)
    sd = mmseg_upernet_state_dict(net.state_dict(), [16, 32, 64, 128], 32, 7, 16)
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "upernet.pth")
    report = inspect_checkpoint(str(tmp_path / "upernet.pth"), write_configs(tmp_path / "configs"))
    assert report["format"] == "mmseg" and report["inferred"] == expected_config(**TINY)
    assert report["heads"] == ["UPerNet head (7 classes)", "auxiliary FCN head"]
    assert fitting(report) == ["c_upernet.yaml"]


def test_official_dino_file(tmp_path):
    from test_dino import official_layout, randomize, tiny_cfg

    cfg = tiny_cfg()
    torch.save({"model": official_layout(randomize(build_model(cfg))), "epoch": 11}, tmp_path / "dino.pth")
    report = inspect_checkpoint(str(tmp_path / "dino.pth"), write_configs(tmp_path / "configs"))
    f = cfg.MODEL.FOCALNET
    assert report["format"] == "DINO (official)"
    assert report["inferred"] == expected_config(embed_dim=f.EMBED_DIM, depths=f.DEPTHS, focal_levels=f.FOCAL_LEVELS,
                                                 focal_windows=f.FOCAL_WINDOWS)
    d = cfg.MODEL.DINO
    assert report["heads"] == [f"DINO transformer ({d.ENC_LAYERS} encoder and {d.DEC_LAYERS} decoder layers, "
                               f"{d.NUM_FEATURE_LEVELS} feature levels, {d.NUM_CLASSES} classes)"]
    assert report["family"] == {"family": "dino", "levels": d.NUM_FEATURE_LEVELS} and fitting(report) == []


def test_timm_file_states_post_ln(tmp_path):
    from timm.models.focalnet import FocalNet as TimmFocalNet

    timm_net = TimmFocalNet(embed_dim=16, depths=(1, 1, 2, 1), focal_levels=(3,) * 4, use_overlap_down=True,
                            use_post_norm=True, layerscale_value=1e-4, num_classes=5)
    torch.save(timm_net.state_dict(), tmp_path / "timm.pth")
    report = inspect_checkpoint(str(tmp_path / "timm.pth"), write_configs(tmp_path / "configs"))
    assert report["format"] == "timm" and report["stated"] == {"USE_POSTLN": True}
    assert report["inferred"] == expected_config(**TINY, focal_levels=(3,) * 4, focal_windows=(3,) * 4, **L_FLAGS)
    assert report["heads"] == ["classifier head.fc (5 classes)"]
    assert "  USE_POSTLN: True  (timm's norm1_post keys)" in format_report(report)


def test_huggingface_folder_states_its_flags(tmp_path):
    from transformers import FocalNetConfig, FocalNetForImageClassification

    hf = FocalNetForImageClassification(FocalNetConfig(
        embed_dim=16, depths=[1, 1, 2, 1], hidden_sizes=[32, 64, 128, 128], focal_levels=[4] * 4,
        focal_windows=[3] * 4, use_conv_embed=True, use_post_layernorm=True, use_layerscale=True,
        normalize_modulator=True, num_labels=7))
    hf.save_pretrained(tmp_path / "hf")
    report = inspect_checkpoint(str(tmp_path / "hf"), write_configs(tmp_path / "configs"))
    assert report["format"] == "Hugging Face"
    assert report["inferred"] == expected_config(**TINY, focal_levels=(4,) * 4, focal_windows=(3,) * 4, **L_FLAGS)
    assert report["stated"] == {"USE_POSTLN": True, "NORMALIZE_MODULATOR": True}
    assert report["heads"] == ["classifier classifier (7 classes)"]
    assert "  NORMALIZE_MODULATOR: True  (config.json)" in format_report(report)


# ------------------------------------------------------------------------------------------------------------------
# structure errors when loading


class Holder(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


MISMATCHES = {
    "conv_embed_in_checkpoint": (dict(use_conv_embed=True), {},
                                 "USE_CONV_EMBED: the checkpoint has a 7x7 stem, the config says False"),
    "conv_embed_in_config": ({}, dict(use_conv_embed=True),
                             "USE_CONV_EMBED: the checkpoint has a 4x4 stem, the config says True"),
    "depths": ({}, dict(depths=(1, 1, 3, 1)), "DEPTHS: the checkpoint has [1, 1, 2, 1], the config says [1, 1, 3, 1]"),
    "embed_dim": ({}, dict(embed_dim=24), "EMBED_DIM: the checkpoint has 16, the config says 24"),
    "layerscale_in_checkpoint": (dict(use_layerscale=True), {}, "USE_LAYERSCALE: the checkpoint has layerscale "
                                 "(gamma_1, gamma_2), the config says False"),
    "layerscale_in_config": ({}, dict(use_layerscale=True), "USE_LAYERSCALE: the checkpoint has no layerscale "
                             "(no gamma_1, gamma_2), the config says True"),
    "postln_in_modulation": (dict(use_postln_in_modulation=True), {}, "USE_POSTLN_IN_MODULATION: the checkpoint has "
                             "a post-LN in the modulation (modulation.ln), the config says False"),
    "mlp_ratio": (dict(mlp_ratio=2.0), {}, "MLP_RATIO: the checkpoint has 2.0, the config says 4.0"),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_structure_mismatch_is_one_line_naming_key_and_values(tmp_path, case):
    ckpt_kwargs, model_kwargs, message = MISMATCHES[case]
    path = tmp_path / "cls.pth"
    official_file(path, **ckpt_kwargs)
    model = Holder(FocalNet(**{**TINY, "focal_windows": (3,) * 4, **model_kwargs}))
    with pytest.raises(UserError) as info:
        FocalNetCheckpointer(model).load(str(path))
    assert str(info.value) == f"MODEL.FOCALNET.{message} ({path})"


def test_focal_windows_and_levels_are_adapted_not_errors(tmp_path):
    path = tmp_path / "cls.pth"
    net = official_file(path)  # windows 3, levels 2
    model = Holder(FocalNet(**TINY, focal_windows=(11, 9, 9, 7), focal_levels=(3,) * 4))
    FocalNetCheckpointer(model).load(str(path))
    assert torch.equal(model.backbone.patch_embed.proj.weight, net.patch_embed.proj.weight)


@pytest.mark.parametrize("checkpoint_postln", [True, False])
def test_timm_post_ln_mismatch(tmp_path, checkpoint_postln):
    from timm.models.focalnet import FocalNet as TimmFocalNet

    timm_net = TimmFocalNet(embed_dim=16, depths=(1, 1, 2, 1), use_post_norm=checkpoint_postln)
    torch.save(timm_net.state_dict(), tmp_path / "timm.pth")
    model = Holder(FocalNet(**TINY, focal_windows=(3,) * 4, use_postln=not checkpoint_postln))
    with pytest.raises(UserError) as info:
        FocalNetCheckpointer(model).load(str(tmp_path / "timm.pth"))
    ln = "post" if checkpoint_postln else "pre"
    assert str(info.value) == (f"MODEL.FOCALNET.USE_POSTLN: the checkpoint has {ln}-LN blocks, the config says "
                               f"{not checkpoint_postln} ({tmp_path / 'timm.pth'})")
    FocalNetCheckpointer(Holder(FocalNet(**TINY, focal_windows=(3,) * 4, use_postln=checkpoint_postln))).load(
        str(tmp_path / "timm.pth"))


def test_whole_model_checkpoint_structure_mismatch(tmp_path):
    """An official DINO file into a DINO config of another width: the key, not a list of shapes."""
    from test_dino import official_layout, tiny_cfg

    torch.save({"model": official_layout(build_model(tiny_cfg()))}, tmp_path / "dino.pth")
    cfg = tiny_cfg()
    cfg.MODEL.FOCALNET.EMBED_DIM = 24
    message = "MODEL.FOCALNET.EMBED_DIM: the checkpoint has 16, the config says 24"
    with pytest.raises(UserError, match=re.escape(message)):
        FocalNetCheckpointer(build_model(cfg)).load(str(tmp_path / "dino.pth"))


# ------------------------------------------------------------------------------------------------------------------
# the tool


def test_tool_inspect_exit_codes(tmp_path, capsys):
    path = tmp_path / "cls.pth"
    official_file(path)
    res = subprocess.run([sys.executable, TOOL, "--inspect", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "format: official" in res.stdout and "DEPTHS: [1, 1, 2, 1]" in res.stdout and res.stderr == ""

    import convert_checkpoint

    assert convert_checkpoint.main(["--inspect", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope.pth" in err
    with pytest.raises(SystemExit) as info:  # neither --inspect nor IN OUT
        convert_checkpoint.main([])
    assert info.value.code == 2
