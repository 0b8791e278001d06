"""Fine-tuning to another class count, every family (focalnet_det/checkpoint/class_heads.py): exactly the
parameters whose size is the class count are re-initialised, each logged with both shapes, everything else is
loaded from the file (equal to it), and a missing or mis-shaped non-class key still stops with one line."""
import logging
import os

import pytest
import torch

from detectron2.modeling import build_model

from focalnet_det.checkpoint import FocalNetCheckpointer
from focalnet_det.checkpoint import dino, mmdet
from focalnet_det.checkpoint.class_heads import is_class_dependent
from focalnet_det.checkpoint.mmseg import MMSEG_UPERNET_RENAMES
from focalnet_det.config import load_config
from focalnet_det.errors import UserError

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SMALL = ["MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.WEIGHTS", ""]
# family -> (config, its class-count key, overrides that keep the model small)
FAMILIES = {
    "mask_rcnn": ("configs/Tiny/mask_rcnn_focalnet_tiny_shapes.yaml", "MODEL.ROI_HEADS.NUM_CLASSES",
                  ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False"]),
    "cascade": ("configs/COCO-InstanceSegmentation/cascade_mask_rcnn_focalnet_tiny_lrf_3x.yaml",
                "MODEL.ROI_HEADS.NUM_CLASSES", ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
                                                "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32"]),
    "upernet": ("configs/Tiny/upernet_focalnet_tiny_shapes.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", []),
    "mask2former": ("configs/Tiny/maskformer2_focalnet_tiny_shapes.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", []),
    "dino": ("configs/Tiny/dino_focalnet_tiny_shapes.yaml", "MODEL.DINO.NUM_CLASSES", []),
}


def build(family, num_classes, seed):
    config, key, extra = FAMILIES[family]
    torch.manual_seed(seed)
    return build_model(load_config(os.path.join(ROOT, config), SMALL + extra + [key, str(num_classes)])).eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def released_and_target(request):
    """A 'released' model of 7 classes and a model of 3 classes to fine-tune, of one family."""
    return request.param, build(request.param, 7, seed=1), build(request.param, 3, seed=2)


def test_the_rule_names_exactly_the_parameters_sized_by_the_class_count(released_and_target):
    family, released, target = released_and_target
    a, b = released.state_dict(), target.state_dict()
    assert list(a) == list(b)
    changing = {k for k in a if a[k].shape != b[k].shape}  # measured: what the class count changes
    assert changing, family
    assert {k for k in a if is_class_dependent(k)} == changing, family
    # the converters of whole released files (official DINO, mmdet R-CNN) keep their own lists: the same rule
    if family == "dino":
        assert set(dino.CLASS_DEPENDENT_KEYS) == changing
    if family in ("mask_rcnn", "cascade"):
        assert {k for k in a if mmdet._CLASS_DEPENDENT.match(k)} == changing


def save(state_dict, path):
    torch.save({"model": {k: v.clone() for k, v in state_dict.items()}}, path)
    return str(path)


def test_loading_another_class_count_keeps_every_other_weight(released_and_target, tmp_path, caplog):
    family, released, target = released_and_target
    path = save(released.state_dict(), tmp_path / "released.pth")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="focalnet_det"):
        FocalNetCheckpointer(target).load(path)
    after, file_sd = target.state_dict(), released.state_dict()
    resized = [k for k in after if after[k].shape != file_sd[k].shape]
    assert resized
    for k, v in after.items():
        if k in resized:  # the model's own initialisation
            assert torch.equal(v, before[k]), k
            line = next(r.getMessage() for r in caplog.records if f" {k} re-initialised" in r.getMessage())
            assert str(tuple(file_sd[k].shape)) in line and str(tuple(v.shape)) in line, line
        else:
            assert torch.equal(v, file_sd[k]), k
    # and the same class count loads unchanged, without a re-initialisation line
    caplog.clear()
    other = build(family, 7, seed=3)
    with caplog.at_level(logging.INFO, logger="focalnet_det"):
        FocalNetCheckpointer(other).load(path)
    assert all(torch.equal(v, file_sd[k]) for k, v in other.state_dict().items())
    assert "re-initialised" not in caplog.text


def test_a_missing_head_key_still_stops(released_and_target, tmp_path):
    family, released, target = released_and_target
    sd = released.state_dict()
    victim = next(k for k in sd if not k.startswith("backbone.") and not is_class_dependent(k)
                  and not k.endswith("num_batches_tracked"))
    path = save({k: v for k, v in sd.items() if k != victim}, tmp_path / "incomplete.pth")
    with pytest.raises(UserError, match=f"lacks the model's key {victim.replace('.', '[.]')}"):
        FocalNetCheckpointer(target).load(path)


def test_a_misshaped_head_key_is_named(tmp_path):
    released, target = build("upernet", 7, seed=1), build("upernet", 3, seed=2)
    sd = dict(released.state_dict())
    key = "sem_seg_head.fpn_bottleneck.conv.weight"
    sd[key] = sd[key][:, :-1]
    with pytest.raises(UserError, match=f"{key}.*has shape"):
        FocalNetCheckpointer(target).load(save(sd, tmp_path / "bad.pth"))


def test_mmseg_upernet_of_another_class_count(tmp_path, caplog):
    """A released mmseg UPerNet (ADE20K's 150 classes, here 7) fine-tuned to 3 classes: decode and auxiliary
    classifiers re-initialised, the rest from the file."""
    released, target = build("upernet", 7, seed=1), build("upernet", 3, seed=2)
    mmseg = {}
    for k, v in released.state_dict().items():
        new, old = next((new, old) for old, new in reversed(MMSEG_UPERNET_RENAMES) if k.startswith(new))
        mmseg[old + k[len(new):]] = v.clone()
    path = tmp_path / "upernet_mmseg.pth"
    torch.save({"state_dict": mmseg, "meta": {}}, path)
    with caplog.at_level(logging.INFO, logger="focalnet_det"):
        FocalNetCheckpointer(target).load(str(path))
    file_sd = released.state_dict()
    for k, v in target.state_dict().items():
        assert torch.equal(v, file_sd[k]) == (not is_class_dependent(k)), k
    assert "sem_seg_head.auxiliary_head.conv_seg.weight re-initialised" in caplog.text


def test_official_mask2former_pkl_of_another_class_count(tmp_path, caplog):
    """An official Mask2Former-layout file (Detectron2 .pkl of numpy arrays, as its model zoo; COCO's 133 classes,
    here 7) fine-tuned to 3 classes: class_embed re-initialised, the rest from the file."""
    import pickle

    released, target = build("mask2former", 7, seed=1), build("mask2former", 3, seed=2)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in released.state_dict().items()}, "__author__": "Mask2Former"}, f)
    before = target.state_dict()["sem_seg_head.predictor.class_embed.weight"].clone()
    with caplog.at_level(logging.INFO, logger="focalnet_det"):
        FocalNetCheckpointer(target).load(str(path))
    file_sd = released.state_dict()
    for k, v in target.state_dict().items():
        assert torch.equal(v, file_sd[k]) == (not is_class_dependent(k)), k
    assert torch.equal(target.state_dict()["sem_seg_head.predictor.class_embed.weight"], before)
    assert "sem_seg_head.predictor.class_embed.weight re-initialised for the class count " \
           "(MODEL.SEM_SEG_HEAD.NUM_CLASSES): (8, 128) in the checkpoint, (4, 128) in the model" in caplog.text
