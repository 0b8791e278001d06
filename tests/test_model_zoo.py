"""The model zoo table (focalnet_det/model_zoo.py) against the released file list, the configs and MODEL_ZOO.md."""
import os

import pytest

import model_zoo_table
from focalnet_det.config import load_config
from focalnet_det.model_zoo import BLOB, HF, TASKS, ZOO, find_entry

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FOCALNET_KEYS = {"EMBED_DIM", "DEPTHS", "FOCAL_LEVELS", "FOCAL_WINDOWS", "USE_CONV_EMBED", "USE_POSTLN",
                 "USE_LAYERSCALE", "NORMALIZE_MODULATOR", "USE_POSTLN_IN_MODULATION"}


def released_files():
    """The files the microsoft/FocalNet README links (36) and the two FocalNet-DINO files, spelled out by hand."""
    sizes, fields = ("tiny", "small", "base"), ("srf", "lrf")
    files = [f"focalnet_{s}_{f}.pth" for s in sizes for f in fields]
    files += [f"focalnet_{s}_iso_16.pth" for s in sizes]
    files += ["focalnet_large_lrf_384.pth", "focalnet_large_lrf_384_fl4.pth", "focalnet_xlarge_lrf_384.pth",
              "focalnet_xlarge_lrf_384_fl4.pth", "focalnet_huge_lrf_224.pth", "focalnet_huge_lrf_224_fl4.pth"]
    files += [f"focalnet_{s}_{f}_maskrcnn_{x}.pth" for s in sizes for f in fields for x in ("1x", "3x")]
    files += ["focalnet_tiny_lrf_cascade_maskrcnn_3x.pth", "focalnet_tiny_lrf_atss_3x.pth",
              "focalnet_tiny_lrf_sparsercnn_3x.pth"]
    files += [f"focalnet_{s}_{f}_upernet_160k.pth" for s in sizes for f in fields]
    return files + ["focalnet_large_fl4_pretrained_on_o365.pth", "focalnet_large_fl4_o365_finetuned_on_coco.pth"]


def test_every_released_file_once():
    files = [e.file for e in ZOO]
    assert len(files) == len(set(files)) == 38
    assert set(files) == set(released_files())
    assert {e.task for e in ZOO} == set(TASKS)


def test_model_zoo_md_holds_the_generated_tables():
    with open(os.path.join(ROOT, "MODEL_ZOO.md")) as f:
        text = f.read()
    block = f"{model_zoo_table.BEGIN}\n{model_zoo_table.tables()}\n{model_zoo_table.END}"
    assert block in text, "MODEL_ZOO.md is stale: run python tools/model_zoo_table.py --update MODEL_ZOO.md"
    for e in ZOO:  # every file, its config (or reason) and its number are on the page
        line = next(line for line in text.splitlines() if line.startswith(f"| `{e.file}` |"))
        assert e.published in line and (e.config or e.unsupported) in line


def test_update_rewrites_only_the_generated_part(tmp_path):
    page = tmp_path / "zoo.md"
    page.write_text(f"intro\n{model_zoo_table.BEGIN}\nold table\n{model_zoo_table.END}\noutro\n")
    assert model_zoo_table.main(["--update", str(page)]) == 0
    block = f"{model_zoo_table.BEGIN}\n{model_zoo_table.tables()}\n{model_zoo_table.END}"
    assert page.read_text() == f"intro\n{block}\noutro\n"
    page.write_text("no markers\n")
    assert model_zoo_table.main(["--update", str(page)]) == 2


def test_config_or_reason():
    for e in ZOO:
        assert (e.config is None) != (e.unsupported is None), e.file
        assert e.unsupported is None or e.unsupported.startswith("not supported here, because "), e.file
    assert {e.task for e in ZOO if e.unsupported} == {"imagenet-1k", "atss", "sparse_rcnn"}
    assert all("iso" in e.file for e in ZOO if e.unsupported and e.task == "imagenet-1k")


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("entry", [e for e in ZOO if e.config], ids=lambda e: e.file)
def test_config_builds_the_entrys_focalnet(entry):
    """The config's MODEL.FOCALNET is the file's network. ImageNet-1k T/S/B files alone differ, in the focal
    windows only: the dense-prediction configs widen the classification kernels (zero-padded at load)."""
    assert set(entry.focalnet) == FOCALNET_KEYS
    cfg = load_config(os.path.join(ROOT, "configs", entry.config))
    ours = {k: _as_list(cfg.MODEL.FOCALNET[k]) for k in FOCALNET_KEYS}
    differ = {k for k in FOCALNET_KEYS if ours[k] != _as_list(entry.focalnet[k])}
    if entry.task == "imagenet-1k":
        assert differ == {"FOCAL_WINDOWS"}
        assert all(c > f for c, f in zip(ours["FOCAL_WINDOWS"], entry.focalnet["FOCAL_WINDOWS"]))
    else:
        assert not differ, {k: (ours[k], entry.focalnet[k]) for k in differ}
    if entry.task in ("imagenet-1k", "imagenet-22k"):  # a config that trains from the file starts from it
        assert find_entry(cfg.MODEL.WEIGHTS) is entry, cfg.MODEL.WEIGHTS


def test_urls():
    seen = set()
    for e in ZOO:
        assert e.urls, e.file
        live = [u for u in e.urls if u not in e.dead_urls]
        assert list(e.urls) == live + list(e.dead_urls), f"{e.file}: live links first"
        assert set(e.dead_urls) == {u for u in e.urls if u.startswith(BLOB)}, e.file  # every Azure link is dead
        for url in e.urls:
            names_file = url.startswith(BLOB) or "/releases/download/" in url or "/resolve/" in url
            assert not names_file or url.endswith("/" + e.file), url
            assert url not in seen, url
            seen.add(url)
    assert all(e.sha256 is None or (len(e.sha256) == 64 and int(e.sha256, 16) >= 0) for e in ZOO)


def test_find_entry():
    by_file = {e.file: e for e in ZOO}
    for e in ZOO:
        assert find_entry(e.file) is e
        assert find_entry(f"/data/checkpoints/{e.file}") is e
        for url in e.urls:
            assert find_entry(url) is e, url
    assert find_entry("microsoft/focalnet-tiny") is by_file["focalnet_tiny_srf.pth"]
    assert find_entry(HF + "microsoft/focalnet-tiny-lrf/tree/main") is by_file["focalnet_tiny_lrf.pth"]
    assert find_entry("hf-hub:timm/focalnet_huge_fl4.ms_in22k") is by_file["focalnet_huge_lrf_224_fl4.pth"]
    assert find_entry("Microsoft/FocalNet-Large-FL4-DINO-O365-COCOFT") is by_file[
        "focalnet_large_fl4_o365_finetuned_on_coco.pth"]
    # another file of a known repo is not the entry's file; unknown names are None
    assert find_entry(HF + "timm/focalnet_large_fl4.ms_in22k/resolve/main/model.safetensors") is None
    assert find_entry("output/model_final.pth") is None
    assert find_entry("focalnet_tiny.pth") is None
    assert find_entry("") is None
