"""The package layout and what users see of it: every config builds, and state dicts keep their keys and shapes.

``fixtures/state_dict_layouts.json.gz`` holds, for every config under ``configs/``, the key -> shape map of the
model's state dict, written before the modules moved into per-family folders (``python tests/test_layout.py``
writes it again, after a deliberate change of a model). Models are built on the meta device: no memory, no time.
"""
import glob
import gzip
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from focalnet_det import add_focalnet_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "state_dict_layouts.json.gz"
CONFIGS = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / "configs" / "**" / "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def config(path, device="meta"):
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(str(ROOT / path))
    cfg.MODEL.DEVICE = device
    return cfg


def layout(path):
    """key -> shape of the state dict of the model ``path`` builds (on the meta device)."""
    with torch.device("meta"):
        model = build_model(config(path))
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def write_fixture():
    FIXTURE.parent.mkdir(exist_ok=True)
    with gzip.open(FIXTURE, "wt") as f:
        json.dump({path: layout(path) for path in CONFIGS}, f, sort_keys=True)


@pytest.fixture(scope="module")
def recorded():
    with gzip.open(FIXTURE, "rt") as f:
        return json.load(f)


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_builds_with_its_recorded_state_dict_layout(path, recorded):
    now = layout(path)
    if path not in recorded:  # a config added after the fixture was written: it must build, nothing more
        return
    before = recorded[path]
    missing, unexpected = sorted(set(before) - set(now)), sorted(set(now) - set(before))
    assert not missing and not unexpected, f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}"
    changed = {k: (before[k], now[k]) for k in before if before[k] != now[k]}
    assert not changed, f"{path}: shapes changed {dict(list(changed.items())[:5])}"


def _recorded_tiny_configs():
    with gzip.open(FIXTURE, "rt") as f:
        return [p for p in json.load(f) if p.startswith("configs/Tiny/")]


@pytest.mark.parametrize("path", _recorded_tiny_configs())
def test_tiny_state_dict_saved_before_the_move_loads_strictly(path, recorded):
    """A real (CPU) model takes a state dict of the recorded keys and shapes with strict=True."""
    model = build_model(config(path, "cpu"))
    state = {k: torch.zeros(shape) for k, shape in recorded[path].items()}
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    assert all(float(v.abs().sum()) == 0 for v in model.state_dict().values() if v.is_floating_point())


def test_modeling_holds_only_family_folders():
    modeling = ROOT / "focalnet_det" / "modeling"
    loose = sorted(p.name for p in modeling.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules directly in focalnet_det/modeling/: {loose}"
    for family in ("backbone", "layers", "mask2former", "upernet"):
        init = modeling / family / "__init__.py"
        assert init.is_file(), f"missing {init}"
    # the deformable attention's sampling lives in exactly one module
    users = [p for p in modeling.rglob("*.py") if "grid_sample" in p.read_text()]
    assert [p.relative_to(modeling).as_posix() for p in users] == ["layers/ms_deform_attn.py"]


if __name__ == "__main__":
    import focalnet_det  # noqa: F401  (registers everything)

    write_fixture()
    print(f"wrote {FIXTURE} ({len(CONFIGS)} configs)", file=sys.stderr)
