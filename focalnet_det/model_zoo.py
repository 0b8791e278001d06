"""The released FocalNet files: where to get each, what it was published at, and the config here that trains or
evaluates it. MODEL_ZOO.md's tables are printed from ``ZOO`` by ``tools/model_zoo_table.py``.

Sources: the microsoft/FocalNet README (files, numbers, parameters, FLOPs), the FocalNet-DINO README and
microsoft/FocalNet#45 (DINO files), the Hugging Face repos themselves. Every Azure blob link
(``projects4jw.blob.core.windows.net``) has answered "PublicAccessNotPermitted" since 2023-05-31
(microsoft/FocalNet#43); no other official copy of the COCO and ADE20K files is known (microsoft/FocalNet#51).
"""
from dataclasses import dataclass
from typing import Optional

__all__ = ["Variant", "VARIANTS", "ZooEntry", "ZOO", "find_entry", "TASKS"]

GITHUB = "https://github.com/microsoft/FocalNet/releases/download/v1.0.0/"
BLOB = "https://projects4jw.blob.core.windows.net/focalnet/release/"
HF = "https://huggingface.co/"

TASKS = ("imagenet-1k", "imagenet-22k", "mask_rcnn", "cascade_mask_rcnn", "atss", "sparse_rcnn", "upernet", "dino")


@dataclass(frozen=True)
class Variant:
    """The structure of a released FocalNet variant (the official configs; DESIGN.md's variant table). ``large``:
    the IN-22K L/XL/H models' conv embedding, post-LN and layerscale. ``normalize_modulator``: the official value,
    None where the sources disagree (XL-FL4: the official yaml says off, FocalNet-DINO on). ``window``: the
    classification focal window (T/S/B's dense-prediction configs widen it to 9)."""

    embed_dim: int
    depths: tuple
    focal_levels: int
    large: bool
    postln_in_modulation: bool
    normalize_modulator: Optional[bool]
    window: int

    def focalnet(self, windows=None):
        """Its ``MODEL.FOCALNET`` values, with focal ``windows`` (default: the classification window); a disputed
        ``NORMALIZE_MODULATOR`` takes the official yaml's False."""
        return _net(self.embed_dim, self.depths, self.focal_levels, self.window if windows is None else windows,
                    large=self.large, normalize_modulator=bool(self.normalize_modulator),
                    postln_in_modulation=self.postln_in_modulation)


_T, _SB = (2, 2, 6, 2), (2, 2, 18, 2)
# the twelve released hierarchical variants: stated here only (inspect.py and the zoo below read them)
VARIANTS = {
    "FocalNet-T SRF": Variant(96, _T, 2, False, False, False, 3),
    "FocalNet-T LRF": Variant(96, _T, 3, False, False, False, 3),
    "FocalNet-S SRF": Variant(96, _SB, 2, False, False, False, 3),
    "FocalNet-S LRF": Variant(96, _SB, 3, False, False, False, 3),
    "FocalNet-B SRF": Variant(128, _SB, 2, False, False, False, 3),
    "FocalNet-B LRF": Variant(128, _SB, 3, False, False, False, 3),
    "FocalNet-L FL3": Variant(192, _SB, 3, True, False, False, 5),
    "FocalNet-L FL4": Variant(192, _SB, 4, True, False, True, 3),
    "FocalNet-XL FL3": Variant(256, _SB, 3, True, False, False, 5),
    "FocalNet-XL FL4": Variant(256, _SB, 4, True, False, None, 3),  # yaml False, FocalNet-DINO True
    "FocalNet-H FL3": Variant(352, _SB, 3, True, True, False, 3),
    "FocalNet-H FL4": Variant(352, _SB, 4, True, True, False, 3),
}


@dataclass(frozen=True)
class ZooEntry:
    """One released file. ``focalnet`` holds the ``MODEL.FOCALNET`` values of the network stored in the file (for
    the ImageNet-1k T/S/B files: classification windows 3, which the dense-prediction configs widen to 9 by
    zero-padding at load). ``config`` is relative to ``configs/``. ``urls`` lists live links first; the dead ones
    are repeated in ``dead_urls``. Hugging Face ``microsoft/focalnet-{tiny,small,base}*`` and ``timm/*`` repos hold
    the same weights in the transformers and timm layouts, not the ``.pth`` itself. ``sha256`` is set only where a
    public source gives the hash of the file at every live URL (downloads are checked against it)."""

    file: str
    urls: tuple
    dead_urls: tuple
    task: str
    variant: str
    focalnet: dict
    published: str
    params_m: Optional[float]
    gflops: Optional[float]
    config: Optional[str]
    unsupported: Optional[str]
    sha256: Optional[str] = None


def _net(embed_dim, depths, levels, windows, large=False, postln=None, layerscale=None, normalize_modulator=False,
         postln_in_modulation=False):
    """MODEL.FOCALNET values; ``windows`` is one value for every stage or a per-stage list; ``large``: the IN-22K
    models' conv embedding, post-LN and layerscale."""
    stages = len(depths)
    return {
        "EMBED_DIM": embed_dim,
        "DEPTHS": list(depths),
        "FOCAL_LEVELS": [levels] * stages,
        "FOCAL_WINDOWS": list(windows) if isinstance(windows, (list, tuple)) else [windows] * stages,
        "USE_CONV_EMBED": large,
        "USE_POSTLN": large if postln is None else postln,
        "USE_LAYERSCALE": large if layerscale is None else layerscale,
        "NORMALIZE_MODULATOR": normalize_modulator,
        "USE_POSTLN_IN_MODULATION": postln_in_modulation,
    }


def _entry(file, task, variant, focalnet, published, params_m, gflops, config=None, unsupported=None, live=(),
           blob=None, sha256=None):
    """``live``: working links; ``blob``: the file's folder on the dead Azure storage, if it was served there."""
    dead = (f"{BLOB}{blob}/{file}",) if blob else ()
    return ZooEntry(file, tuple(live) + dead, dead, task, variant, focalnet, published, params_m, gflops, config,
                    unsupported, sha256)


_SIZES = {"tiny": "T", "small": "S", "base": "B"}


def _tsb(size, rf):
    """The variant name and structure of a T/S/B file (``size`` tiny/small/base, ``rf`` srf/lrf)."""
    name = f"FocalNet-{_SIZES[size]} {rf.upper()}"
    return name, VARIANTS[name]


def _imagenet_1k():
    numbers = {  # README: top-1, params (M), GFLOPs at 224
        ("tiny", "srf"): (82.1, 28.4, 4.4), ("tiny", "lrf"): (82.3, 28.6, 4.5),
        ("small", "srf"): (83.4, 49.9, 8.6), ("small", "lrf"): (83.5, 50.3, 8.7),
        ("base", "srf"): (83.7, 88.1, 15.3), ("base", "lrf"): (83.9, 88.7, 15.4),
    }
    # the transformers conversions (microsoft/focalnet-*, April 2023) call SRF plain "tiny", "small", "base"
    for (size, rf), (top1, params, gflops) in numbers.items():
        variant, structure = _tsb(size, rf)
        hf = f"microsoft/focalnet-{size}" + ("-lrf" if rf == "lrf" else "")
        yield _entry(
            f"focalnet_{size}_{rf}.pth", "imagenet-1k", variant,
            structure.focalnet(), f"top-1 {top1}", params, gflops,
            config=f"COCO-InstanceSegmentation/mask_rcnn_focalnet_{size}_{rf}_1x.yaml",
            live=(GITHUB + f"focalnet_{size}_{rf}.pth", HF + hf, HF + f"timm/focalnet_{size}_{rf}.ms_in1k"),
            blob="classification")
    isotropic = (
        "not supported here, because the isotropic FocalNets (patch 16, one stage of 12 blocks, no downsampling) "
        "give one stride-16 map, not the four-stage pyramid the Detectron2 backbones here are built on")
    for size, dim, top1, params, gflops in (("tiny", 192, 74.1, 5.9, 1.1), ("small", 384, 80.9, 22.4, 4.3),
                                            ("base", 768, 82.4, 87.2, 16.9)):
        file = f"focalnet_{size}_iso_16.pth"
        base = size == "base"  # the official focalnet_base_iso turns on post-LN and layerscale
        live = (HF + f"spaces/jw2yang/focalnet-modulators/resolve/main/{file}",) if base else ()
        yield _entry(
            file, "imagenet-1k", f"FocalNet-{_SIZES[size]} isotropic",
            _net(dim, (12,), 3, 3, postln=base, layerscale=base), f"top-1 {top1}", params, gflops,
            unsupported=isotropic, live=live, blob="classification",
            # the author's copy in his Hugging Face space (Git LFS pointer, 349107129 bytes)
            sha256="4cac290e8d0b3383bd481f695811e32297d34e0a21fcd17af4ed0595456a840c" if base else None)


def _imagenet_22k():
    rows = (  # file, variant, timm name; README params (M, with a 1000-class head)
        ("focalnet_large_lrf_384.pth", "FocalNet-L FL3", "large_fl3", 207),
        ("focalnet_large_lrf_384_fl4.pth", "FocalNet-L FL4", "large_fl4", 207),
        ("focalnet_xlarge_lrf_384.pth", "FocalNet-XL FL3", "xlarge_fl3", 366),
        ("focalnet_xlarge_lrf_384_fl4.pth", "FocalNet-XL FL4", "xlarge_fl4", 366),
        ("focalnet_huge_lrf_224.pth", "FocalNet-H FL3", "huge_fl3", 687),
        ("focalnet_huge_lrf_224_fl4.pth", "FocalNet-H FL4", "huge_fl4", 689),
    )
    own_hf = {  # the author's own uploads to Hugging Face (June 2023); H was never moved off the Azure storage
        "large_fl3": (HF + "microsoft/focalnet-large-lrf-fl3",),
        "large_fl4": (HF + "microsoft/focalnet-large-lrf-fl4/resolve/main/focalnet_large_lrf_384_fl4.pth",),
    }
    for file, variant, name, params in rows:
        github = () if name.startswith("huge") else (GITHUB + file,)
        yield _entry(
            file, "imagenet-22k", variant, VARIANTS[variant].focalnet(), "no accuracy published", params, None,
            config=f"COCO-InstanceSegmentation/mask_rcnn_focalnet_{name}_3x.yaml",
            live=github + own_hf.get(name, ()) + (HF + f"timm/focalnet_{name}.ms_in22k",), blob="classification")


def _mask_rcnn():
    numbers = {  # README: (box, mask) for 1x and 3x, params (M), GFLOPs
        ("tiny", "srf"): ((45.9, 41.3), (47.6, 42.6), 48.6, 267),
        ("tiny", "lrf"): ((46.1, 41.5), (48.0, 42.9), 48.8, 268),
        ("small", "srf"): ((48.0, 42.7), (48.9, 43.6), 70.8, 356),
        ("small", "lrf"): ((48.3, 43.1), (49.3, 43.8), 72.3, 365),
        ("base", "srf"): ((48.8, 43.3), (49.6, 44.1), 109.4, 496),
        ("base", "lrf"): ((49.0, 43.5), (49.8, 44.1), 111.4, 507),
    }
    for (size, rf), (one, three, params, gflops) in numbers.items():
        variant, structure = _tsb(size, rf)
        for schedule, (box, mask) in (("1x", one), ("3x", three)):
            yield _entry(
                f"focalnet_{size}_{rf}_maskrcnn_{schedule}.pth", "mask_rcnn", variant,
                structure.focalnet(9), f"box {box} / mask {mask}", params, gflops,
                config=f"COCO-InstanceSegmentation/mask_rcnn_focalnet_{size}_{rf}_{schedule}.yaml", blob="detection")


def _other_detectors():
    tiny_lrf = VARIANTS["FocalNet-T LRF"].focalnet((11, 9, 9, 7))
    yield _entry("focalnet_tiny_lrf_cascade_maskrcnn_3x.pth", "cascade_mask_rcnn", "FocalNet-T LRF", tiny_lrf,
                 "box 51.5 (no mask AP published)", 87.1, 751,
                 config="COCO-InstanceSegmentation/cascade_mask_rcnn_focalnet_tiny_lrf_3x.yaml", blob="detection")
    yield _entry("focalnet_tiny_lrf_atss_3x.pth", "atss", "FocalNet-T LRF", tiny_lrf, "box 49.6", 37.2, 220,
                 unsupported="not supported here, because Detectron2 has no ATSS detector (out of this project's "
                             "scope)", blob="detection")
    yield _entry("focalnet_tiny_lrf_sparsercnn_3x.pth", "sparse_rcnn", "FocalNet-T LRF", tiny_lrf,
                 "box 49.9 (300 proposals)", 111.2, 178,
                 unsupported="not supported here, because Detectron2 has no Sparse R-CNN detector (out of this "
                             "project's scope)", blob="detection")


def _upernet():
    numbers = {  # README: mIoU, multi-scale mIoU, params (M), GFLOPs (512x512)
        ("tiny", "srf"): (46.5, 47.2, 61, 944), ("tiny", "lrf"): (46.8, 47.8, 61, 949),
        ("small", "srf"): (49.3, 50.1, 83, 1035), ("small", "lrf"): (49.1, 50.1, 84, 1044),
        ("base", "srf"): (50.2, 51.1, 124, 1180), ("base", "lrf"): (50.5, 51.4, 126, 1192),
    }
    for (size, rf), (miou, ms, params, gflops) in numbers.items():
        variant, structure = _tsb(size, rf)
        yield _entry(
            f"focalnet_{size}_{rf}_upernet_160k.pth", "upernet", variant,
            structure.focalnet(9), f"mIoU {miou} (MS {ms})", params, gflops,
            config=f"ADE20K-SemanticSegmentation/upernet_focalnet_{size}_{rf}_160k.yaml", blob="segmentation")


def _dino():
    large_fl4 = VARIANTS["FocalNet-L FL4"].focalnet()
    yield _entry("focalnet_large_fl4_pretrained_on_o365.pth", "dino", "FocalNet-L FL4, DINO 5-scale", large_fl4,
                 "Objects365 pre-training (no number published)", None, None,
                 config="COCO-Detection/dino_focalnet_large_fl4_5scale_objects365.yaml",
                 live=(HF + "microsoft/focalnet-large-fl4-dino-o365/resolve/main/"
                            "focalnet_large_fl4_pretrained_on_o365.pth",), blob="detection")
    yield _entry("focalnet_large_fl4_o365_finetuned_on_coco.pth", "dino", "FocalNet-L FL4, DINO 5-scale", large_fl4,
                 "box 63.5 (no TTA)", 228.1, None,
                 config="COCO-Detection/dino_focalnet_large_fl4_5scale_o365_to_coco.yaml",
                 live=(HF + "microsoft/focalnet-large-fl4-dino-o365-cocoft/resolve/main/"
                            "focalnet_large_fl4_o365_finetuned_on_coco.pth",), blob="detection")


ZOO = tuple(e for part in (_imagenet_1k, _imagenet_22k, _mask_rcnn, _other_detectors, _upernet, _dino) for e in part())


def _hf_repo(text):
    """('owner/name' or 'spaces/owner/name' lower-cased, whether it names a file in the repo) for a Hugging Face repo
    id or URL; (None, False) for anything else."""
    for prefix in ("hf-hub:", "hf://", "https://huggingface.co/", "http://huggingface.co/", "https://hf.co/",
                   "huggingface.co/", "hf.co/"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    else:
        if "://" in text:
            return None, False
    names_file = False
    for marker in ("/resolve/", "/blob/", "/tree/"):
        text, _, rest = text.partition(marker)
        names_file = names_file or (marker != "/tree/" and bool(rest))
    parts = text.strip("/").split("/")
    if len(parts) == 2 or (len(parts) == 3 and parts[0] == "spaces"):
        return "/".join(parts).lower(), names_file
    return None, False


def find_entry(name_or_url):
    """The entry of a released file, looked up by file name (or a path or URL ending in it), by any of its URLs,
    or by a Hugging Face repo id or repo URL (``microsoft/focalnet-tiny``, ``timm/focalnet_tiny_srf.ms_in1k``);
    None if unknown. A URL of another file in such a repo (``.../resolve/main/model.safetensors``) is not the entry's
    file: None."""
    text = str(name_or_url).strip()
    if not text:
        return None
    for entry in ZOO:
        if text in entry.urls:
            return entry
    base = text.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    for entry in ZOO:
        if base == entry.file:
            return entry
    repo, names_file = _hf_repo(text)
    if repo and not names_file:
        for entry in ZOO:
            if any(_hf_repo(url)[0] == repo for url in entry.urls):
                return entry
    return None
