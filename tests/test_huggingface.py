"""Hugging Face ``transformers`` FocalNet checkpoints (the Hub's ``microsoft/focalnet-*`` layout) load into this
project's FocalNet and give the features of ``transformers.FocalNetModel`` with the same weights."""
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import FocalNetBackbone, FocalNetConfig, FocalNetForImageClassification, FocalNetModel

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

from focalnet_det import add_focalnet_config
from focalnet_det.config import check_weights_file
from focalnet_det.checkpoint import (
    FocalNetCheckpointer,
    detect_format,
    hf_config_to_focalnet,
    huggingface_to_official,
    read_checkpoint,
)
from focalnet_det.errors import UserError

import convert_checkpoint  # tools/, on the path (conftest)
from test_checkpoint import randomize

DIM, DEPTHS = 16, [1, 1, 2, 1]
# not multiples of 32: both implementations pad to the patch grid on the right and bottom (stage 0: 16x23)
X = torch.randn(1, 3, 62, 90, generator=torch.Generator().manual_seed(1))

# transformers FocalNetConfig flags -> MODEL.FOCALNET key
CFG_KEYS = {
    "use_conv_embed": "USE_CONV_EMBED",
    "use_post_layernorm": "USE_POSTLN",
    "use_layerscale": "USE_LAYERSCALE",
    "normalize_modulator": "NORMALIZE_MODULATOR",
    "use_post_layernorm_in_modulation": "USE_POSTLN_IN_MODULATION",
}
L_FLAGS = dict(use_conv_embed=True, use_post_layernorm=True, use_layerscale=True)
VARIANTS = {
    "srf": dict(focal_levels=[2] * 4, focal_windows=[3] * 4),  # T/S/B-SRF
    "lrf": dict(focal_levels=[3] * 4, focal_windows=[3] * 4),  # T/S/B-LRF
    "large_fl3": dict(focal_levels=[3] * 4, focal_windows=[5] * 4, **L_FLAGS),  # L/XL-FL3
    "large_fl4": dict(focal_levels=[4] * 4, focal_windows=[3] * 4, normalize_modulator=True, **L_FLAGS),  # L-FL4
    "huge_fl3": dict(focal_levels=[3] * 4, focal_windows=[3] * 4, use_post_layernorm_in_modulation=True, **L_FLAGS),
    "all_flags_fl4": dict(focal_levels=[4] * 4, focal_windows=[3] * 4, normalize_modulator=True,
                          use_post_layernorm_in_modulation=True, **L_FLAGS),
    "per_stage": dict(focal_levels=[2, 3, 2, 3], focal_windows=[3, 5, 3, 5]),
    **{flag: {flag: True} for flag in CFG_KEYS},  # each flag alone
}


def hf_config(**flags):
    return FocalNetConfig(embed_dim=DIM, depths=DEPTHS, hidden_sizes=[2 * DIM, 4 * DIM, 8 * DIM, 8 * DIM],
                          drop_path_rate=0.0, num_labels=5, **flags)


def hf_model(cls=FocalNetModel, seed=0, **flags):
    return randomize(cls(hf_config(**flags)), seed)


def expected_settings(**flags):
    """What ``hf_config_to_focalnet`` must return for a model built with ``hf_config(**flags)``."""
    out = {"EMBED_DIM": DIM, "DEPTHS": DEPTHS, "FOCAL_LEVELS": flags.get("focal_levels", [2] * 4),
           "FOCAL_WINDOWS": flags.get("focal_windows", [3] * 4)}
    out.update({key: bool(flags.get(flag, False)) for flag, key in CFG_KEYS.items()})
    return out


class Wrapper(nn.Module):
    """A detector stand-in: the FocalNet under ``backbone`` plus a head."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(4, 2)


def our_model(settings, fpn=False, **overrides):
    """A cfg-built plain (``backbone.``) or FPN (``backbone.bottom_up.``) FocalNet with MODEL.FOCALNET ``settings``."""
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_focalnet_fpn_backbone" if fpn else "build_focalnet_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FOCALNET.DROP_PATH_RATE = 0.0
    for key, value in {**settings, **overrides}.items():
        cfg.MODEL.FOCALNET[key] = value
    return Wrapper(build_backbone(cfg)).eval()


def focalnet_of(model):
    return getattr(model.backbone, "bottom_up", model.backbone)


@torch.no_grad()
def hf_stage_features(hf):
    """Per stage, from ``transformers``: (output before downsampling, output after it or None), NCHW.

    ``output_hidden_states`` gives the embeddings, then each stage's output *after* its downsample (the next
    stage's input; the last stage has none): entries 1..3 are not the official stage outputs, which come before the
    downsample. Those are taken from the stages themselves (their second output), as ``transformers``'
    ``output_hidden_states_before_downsampling`` path reshapes them with the downsampled size and fails.
    """
    before = {}
    hooks = [s.register_forward_hook(lambda m, i, o, n=n: before.__setitem__(n, o[1]))
             for n, s in enumerate(hf.encoder.stages)]
    model = hf if isinstance(hf, FocalNetModel) else hf.focalnet
    try:
        after = model(X, output_hidden_states=True).reshaped_hidden_states
    finally:
        for h in hooks:
            h.remove()
    n = len(hf.encoder.stages)
    assert torch.equal(after[n].flatten(2).transpose(1, 2), before[n - 1])  # the last stage has no downsample
    stages = [before[i].view(1, *after[i].shape[-2:], -1).permute(0, 3, 1, 2) for i in range(n)]
    return [(stages[i], after[i + 1] if i < n - 1 else None) for i in range(n)]


@torch.no_grad()
def assert_same_features(model, hf):
    """Stage outputs before and after downsampling, and the res2..res5 outputs (fresh output norms: LayerNorm
    with weight 1, bias 0 on the stage outputs), agree with ``transformers`` to 1e-5."""
    net = focalnet_of(model)
    ours = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, n=n: ours.__setitem__(n, o))
             for n, layer in enumerate(net.layers)]
    try:
        outputs = net(X)
    finally:
        for h in hooks:
            h.remove()
    for i, (before, after) in enumerate(hf_stage_features(hf)):
        x_out, x_down = ours[i]
        assert (x_out.permute(0, 3, 1, 2) - before).abs().max().item() < 1e-5, f"stage {i}"
        if after is not None:
            assert (x_down.permute(0, 3, 1, 2) - after).abs().max().item() < 1e-5, f"downsample {i}"
        normed = F.layer_norm(before.permute(0, 2, 3, 1), before.shape[1:2]).permute(0, 3, 1, 2)
        assert (outputs[f"res{i + 2}"] - normed).abs().max().item() < 1e-5, f"res{i + 2}"


def hf_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "focalnet_det.checkpoint.huggingface"]


# ----------------------------------------------------------------------------------------------------------
# every variant: folder and file, through the checkpointer


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_loads_with_the_same_features(variant, tmp_path, caplog, one_thread):
    flags = VARIANTS[variant]
    hf = hf_model(**flags)
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    settings = hf_config_to_focalnet(str(folder / "config.json"))
    assert settings == expected_settings(**flags)
    assert detect_format(read_checkpoint(str(folder))) == "huggingface"

    for path in (folder, folder / "model.safetensors"):
        model = our_model(settings)
        with caplog.at_level(logging.INFO):
            FocalNetCheckpointer(model).load(str(path))
        assert_same_features(model, hf)
    assert hf_warnings(caplog) == []  # the model agrees with config.json


def test_wrappers_bin_and_shards(tmp_path, one_thread):
    """FocalNetForImageClassification (``focalnet.`` + classifier), FocalNetBackbone, a ``pytorch_model.bin``
    folder, a ``model.``-prefixed file and a sharded folder all load to the same features."""
    flags = VARIANTS["large_fl4"]
    settings = expected_settings(**flags)
    cls = hf_model(FocalNetForImageClassification, **flags)
    cls.save_pretrained(tmp_path / "cls")
    hf_model(FocalNetBackbone, **flags).save_pretrained(tmp_path / "backbone")
    hf = hf_model(**flags)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    # transformers 4.x save_pretrained(safe_serialization=False) wrote torch.save(state_dict) to pytorch_model.bin
    # (5.x writes safetensors only); transformers itself must read that file back
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "cls" / "config.json").rename(bin_dir / "config.json")
    torch.save(cls.state_dict(), bin_dir / "pytorch_model.bin")
    again = FocalNetForImageClassification.from_pretrained(str(bin_dir))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in cls.state_dict().items())
    torch.save({"model." + k: v for k, v in hf.state_dict().items()}, tmp_path / "prefixed.pth")
    assert detect_format(read_checkpoint(str(bin_dir))) == "huggingface"

    sd = cls.state_dict()
    assert "classifier.weight" in sd and all(k.startswith(("focalnet.", "classifier.")) for k in sd)
    renamed = huggingface_to_official(sd)
    assert len(renamed) == len(sd) - 4  # classifier and final layernorm dropped, nothing else
    assert not any(k.startswith(("classifier", "layernorm", "norm.")) for k in renamed)

    for path, ref in [(bin_dir, cls.focalnet), (bin_dir / "pytorch_model.bin", cls.focalnet),
                      (tmp_path / "backbone", None), (tmp_path / "sharded", hf),
                      (tmp_path / "sharded" / "model.safetensors.index.json", hf), (tmp_path / "prefixed.pth", hf)]:
        model = our_model(settings)
        FocalNetCheckpointer(model).resume_or_load(str(path), resume=False)  # as tools/train_net.py does
        if ref is None:
            ref = FocalNetBackbone.from_pretrained(str(path)).eval().focalnet
        assert_same_features(model, ref)


def test_detection_windows_and_fpn(tmp_path, caplog, one_thread):
    """A T-SRF (window 3) checkpoint in a window-9 FPN backbone: kernels zero-padded, same features."""
    hf = hf_model(**VARIANTS["srf"])
    hf.save_pretrained(tmp_path)
    model = our_model(expected_settings(**VARIANTS["srf"]), fpn=True, FOCAL_WINDOWS=[9] * 4)
    with caplog.at_level(logging.INFO):
        FocalNetCheckpointer(model).load(str(tmp_path))
    assert "focal kernels padded" in caplog.text and hf_warnings(caplog) == []  # windows: widened on purpose
    assert focalnet_of(model).layers[0].blocks[0].modulation.focal_layers[0][0].weight.shape[-1] == 9
    assert_same_features(model, hf)


def test_convert_tool(tmp_path, capsys, caplog, one_thread):
    flags = VARIANTS["all_flags_fl4"]
    hf = hf_model(FocalNetForImageClassification, **flags)
    hf.save_pretrained(tmp_path / "hf")
    for src in ("hf", "hf/model.safetensors"):
        out = str(tmp_path / "converted.pth")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert convert_checkpoint.main([str(tmp_path / src), out]) == 0
        assert f"{tmp_path / src} (huggingface) -> {out}" in caplog.text
        saved = torch.load(out, weights_only=True)["model"]
        assert all(k.startswith("backbone.") for k in saved)
        assert "backbone.layers.0.blocks.0.modulation.ln.weight" in saved
        model = our_model(expected_settings(**flags))
        FocalNetCheckpointer(model).load(out)
        assert_same_features(model, hf.focalnet)

    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert convert_checkpoint.main([str(tmp_path / "empty"), out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no weights in folder") and "empty" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------
# mistakes


def test_wrong_variant_is_one_line_error(tmp_path):
    """A conv-embed (L/XL/H) checkpoint into a config without conv embed: a UserError naming the shapes."""
    flags = VARIANTS["large_fl3"]
    hf_model(**flags).save_pretrained(tmp_path)
    model = our_model(expected_settings(**flags), USE_CONV_EMBED=False)
    with pytest.raises(UserError) as e:
        FocalNetCheckpointer(model).load(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert "USE_CONV_EMBED" in msg or f"patch_embed.proj.weight ({DIM}, 3, 7, 7) vs model ({DIM}, 3, 4, 4)" in msg


def test_flags_the_weights_cannot_show_warn(tmp_path, caplog):
    """normalize_modulator and use_post_layernorm change no key: a model built without them loads the weights,
    computes something else, and each disagreement with config.json is a warning naming both values."""
    flags = VARIANTS["large_fl4"]
    hf = hf_model(**flags)
    hf.save_pretrained(tmp_path)
    model = our_model(expected_settings(**flags), NORMALIZE_MODULATOR=False, USE_POSTLN=False)
    with caplog.at_level(logging.INFO):
        FocalNetCheckpointer(model).load(str(tmp_path / "model.safetensors"))
    warnings = hf_warnings(caplog)
    assert len(warnings) == 2, warnings
    for hf_key, key in (("normalize_modulator", "NORMALIZE_MODULATOR"), ("use_post_layernorm", "USE_POSTLN")):
        assert any(f"{hf_key} = True" in w and f"MODEL.FOCALNET.{key} = False" in w for w in warnings), hf_key
    with pytest.raises(AssertionError):
        assert_same_features(model, hf)


def test_unknown_keys_and_files(tmp_path):
    sd = hf_model(**VARIANTS["srf"]).state_dict()
    odd = "encoder.stages.0.layers.0.modulation.extra.weight"
    with pytest.raises(UserError, match=f"unknown key {odd}$"):
        huggingface_to_official({**sd, odd: torch.zeros(1)})
    with pytest.raises(UserError, match="unexpected key pooler.weight"):
        huggingface_to_official({**{"focalnet." + k: v for k, v in sd.items()}, "pooler.weight": torch.zeros(1)})

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no weights in folder .*empty: expected one of model.safetensors"):
        FocalNetCheckpointer(our_model(expected_settings())).load(str(tmp_path / "empty"))

    cfg = get_cfg()
    cfg.MODEL.WEIGHTS = str(tmp_path / "empty")
    check_weights_file(cfg)  # a folder is a valid MODEL.WEIGHTS
    cfg.MODEL.WEIGHTS = str(tmp_path / "missing")
    with pytest.raises(UserError, match="MODEL.WEIGHTS file not found: .*missing"):
        check_weights_file(cfg)

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "swin", "embed_dim": 96}))
    with pytest.raises(UserError, match="not a FocalNet config.json .*swin"):
        hf_config_to_focalnet(str(config))
    # an older config.json without the newer flags: FocalNetConfig's defaults
    config.write_text(json.dumps({"model_type": "focalnet", "embed_dim": 128, "depths": [2, 2, 18, 2]}))
    assert hf_config_to_focalnet(str(config)) == {**expected_settings(), "EMBED_DIM": 128, "DEPTHS": [2, 2, 18, 2]}
