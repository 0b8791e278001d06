"""What a FocalNet checkpoint holds, read from its weights alone: ``inspect_checkpoint(path)`` (format, variant,
``MODEL.FOCALNET`` values, heads, the configs in ``configs/`` that fit), and the structure check
``FocalNetCheckpointer`` runs before loading (``check_backbone_structure``).

What the official-layout weights show: ``EMBED_DIM`` (stem rows), ``DEPTHS`` (block indices), ``FOCAL_LEVELS``
(``modulation.f`` has 2C + L + 1 rows), ``FOCAL_WINDOWS`` (each stage's first focal kernel), ``MLP_RATIO``
(``mlp.fc1`` rows / C), ``USE_CONV_EMBED`` (a 7x7 stem, not 4x4), ``USE_LAYERSCALE`` (``gamma_1``) and
``USE_POSTLN_IN_MODULATION`` (``modulation.ln``). What they do not show: ``USE_POSTLN`` (pre- and post-LN blocks
have the same parameters; timm's names tell them apart, ``norm1_post``, and a Hugging Face ``config.json`` states
it) and ``NORMALIZE_MODULATOR`` (no parameter at all). For those, a known variant gives the official value, which
the checkpointer only warns about.
"""
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from ..model_zoo import VARIANTS
from .convert import find_state_dict, recognise, to_official_backbone
from .huggingface import hf_config_to_focalnet
from .reading import describe_keys, read_checkpoint

__all__ = [
    "VARIANTS",
    "infer_focalnet_config",
    "model_focalnet_config",
    "variant_name",
    "official_flags",
    "check_backbone_structure",
    "stated_focalnet_config",
    "find_heads",
    "fitting_configs",
    "inspect_checkpoint",
    "format_report",
]

logger = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
_STEM = "patch_embed.proj.weight"
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")

# compared by the checkpointer, in this order; focal levels and windows are adapted instead (adapt.py)
_CHECKED = ("EMBED_DIM", "DEPTHS", "MLP_RATIO", "USE_CONV_EMBED", "USE_LAYERSCALE", "USE_POSTLN_IN_MODULATION",
            "USE_POSTLN", "NORMALIZE_MODULATOR")
_HIDDEN = ("USE_POSTLN", "NORMALIZE_MODULATOR")  # not in official-layout weights


def infer_focalnet_config(state_dict):
    """``MODEL.FOCALNET`` values an official-layout backbone state dict (no prefix) determines (see the module
    docstring); a stage without blocks in the dict gets None for its focal level and window."""
    stem = state_dict.get(_STEM)
    if stem is None or stem.dim() != 4:
        raise UserError(f"no FocalNet stem ({_STEM}) among the keys: {describe_keys(state_dict)}")
    depth = {}
    for key in state_dict:
        m = _BLOCK.match(key)
        if m:
            depth[int(m.group(1))] = max(depth.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    stages = 1 + max(depth, default=-1)
    levels, windows = [], []
    for i in range(stages):
        f = state_dict.get(f"layers.{i}.blocks.0.modulation.f.weight")
        levels.append(int(f.shape[0] - 2 * f.shape[1] - 1) if f is not None else None)
        kernel = state_dict.get(f"layers.{i}.blocks.0.modulation.focal_layers.0.0.weight")
        windows.append(int(kernel.shape[-1]) if kernel is not None else None)
    fc1 = state_dict.get("layers.0.blocks.0.mlp.fc1.weight")
    return {
        "EMBED_DIM": int(stem.shape[0]),
        "DEPTHS": [depth.get(i, 0) for i in range(stages)],
        "MLP_RATIO": fc1.shape[0] / fc1.shape[1] if fc1 is not None else None,
        "FOCAL_LEVELS": levels,
        "FOCAL_WINDOWS": windows,
        "USE_CONV_EMBED": tuple(stem.shape[-2:]) == (7, 7),
        "USE_LAYERSCALE": any(k.endswith(".gamma_1") for k in state_dict),
        "USE_POSTLN_IN_MODULATION": any(".modulation.ln." in k for k in state_dict),
    }


def model_focalnet_config(net):
    """The ``MODEL.FOCALNET`` structure values of a built FocalNet: its weights' values, plus the two switches only
    its modules show."""
    out = infer_focalnet_config(net.state_dict())
    block = net.layers[0].blocks[0]
    out["USE_POSTLN"] = bool(block.use_postln)
    out["NORMALIZE_MODULATOR"] = bool(block.modulation.normalize_modulator)
    return out


def variant_name(config):
    """The released variant (``"FocalNet-T LRF"``...) whose structure ``config`` (``infer_focalnet_config``'s
    keys) has, or None. Focal windows do not count: dense-prediction configs widen T/S/B's 3 to 9."""
    for name, v in VARIANTS.items():
        if (config.get("EMBED_DIM") == v.embed_dim and list(config.get("DEPTHS", ())) == list(v.depths)
                and list(config.get("FOCAL_LEVELS", ())) == [v.focal_levels] * len(v.depths)
                and config.get("USE_CONV_EMBED") == v.large and config.get("USE_LAYERSCALE") == v.large
                and config.get("USE_POSTLN_IN_MODULATION") == v.postln_in_modulation
                and config.get("MLP_RATIO") in (None, 4.0) and config.get("USE_POSTLN", v.large) == v.large):
            return name
    return None


def official_flags(variant):
    """The official ``USE_POSTLN`` and ``NORMALIZE_MODULATOR`` of a released variant (None where disputed)."""
    v = VARIANTS[variant]
    return {"USE_POSTLN": v.large, "NORMALIZE_MODULATOR": v.normalize_modulator}


def stated_focalnet_config(state_dict, fmt, path=None):
    """Values among ``USE_POSTLN`` / ``NORMALIZE_MODULATOR`` that a file states beside the official weights: timm's
    key names (post-norm blocks have ``norm1_post``); with ``path``, the ``config.json`` of a Hugging Face model
    (in the folder ``path``, or beside the file)."""
    if fmt == "timm":
        return {"USE_POSTLN": any(".norm1_post." in k for k in state_dict)}
    if fmt == "huggingface" and path is not None:
        config = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
        if os.path.isfile(config):
            values = hf_config_to_focalnet(config)
            return {k: bool(values[k]) for k in _HIDDEN}
    return {}


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) < 1e-6
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _what(key, value, state_dict):
    """How the checkpoint shows ``key = value``, for messages."""
    if key == "USE_CONV_EMBED":
        k = tuple(state_dict[_STEM].shape[-2:])
        return f"a {k[0]}x{k[1]} stem"
    if key == "USE_LAYERSCALE":
        return "layerscale (gamma_1, gamma_2)" if value else "no layerscale (no gamma_1, gamma_2)"
    if key == "USE_POSTLN_IN_MODULATION":
        return "a post-LN in the modulation (modulation.ln)" if value else "no modulation.ln"
    if key == "USE_POSTLN":
        return f"{'post' if value else 'pre'}-LN blocks"
    return str(value)


def check_backbone_structure(state_dict, net, filename="checkpoint", stated=None):
    """UserError, one line naming the ``MODEL.FOCALNET`` key and both values, when the official-layout backbone
    ``state_dict`` has another structure than the FocalNet ``net`` (focal levels and windows excepted: those are
    adapted). ``stated``: ``stated_focalnet_config``'s values. Where only the released variant's official values
    disagree with ``net`` (post-LN, normalised modulator), a warning."""
    if _STEM not in state_dict:
        return  # no FocalNet here: the caller's key checks say so
    stated = stated or {}
    ckpt = {**infer_focalnet_config(state_dict), **stated}
    model = model_focalnet_config(net)
    for key in _CHECKED:
        if ckpt.get(key) is not None and model.get(key) is not None and not _same(ckpt[key], model[key]):
            raise UserError(f"MODEL.FOCALNET.{key}: the checkpoint has {_what(key, ckpt[key], state_dict)}, "
                            f"the config says {model[key]} ({filename})")
    variant = variant_name(ckpt)
    if variant is None:
        return
    for key, value in official_flags(variant).items():
        if key not in stated and value is not None and model[key] != value:
            logger.warning(f"{filename} looks like {variant}, which the authors trained with MODEL.FOCALNET.{key} "
                           f"{value}; the config says {model[key]} (the weights load either way, but the features "
                           f"differ): check the config")


# ------------------------------------------------------------------------------------------------------------------
# formats and heads


# recognise()'s layouts as the report names them
_FORMAT_NAMES = {"dino": "DINO (official)", "mmseg-upernet": "mmseg", "mmdet-rcnn": "mmdet", "mm": "mmdet",
                 "huggingface": "Hugging Face", "timm": "timm", "official": "official", "detectron2": "Detectron2"}


def find_heads(state_dict):
    """(descriptions of the parts beside the backbone, head family) of an unwrapped state dict, in Detectron2, mmdet,
    mmseg or official DINO names. The family (a dict: ``{"family": "rcnn", "cascade": ..., "mask": ...}``,
    ``upernet``, ``mask2former``, ``{"family": "dino", "levels": n}``) is None for a backbone or classifier only."""
    sd = state_dict

    def has(prefix):
        return any(k.startswith(prefix) for k in sd)

    def rows(key, minus=0):
        return sd[key].shape[0] - minus if key in sd else "?"

    def count(pattern):
        pattern = re.compile(pattern)
        return len({m.group(1) for m in map(pattern.match, sd) if m})

    heads, family = [], None
    for key in ("head.weight", "head.fc.weight", "classifier.weight"):
        if key in sd:
            heads.append(f"classifier {key[: -len('.weight')]} ({rows(key)} classes)")
    if any(re.search(r"(^|\.)fpn_lateral\d+\.", k) for k in sd) or has("neck.lateral_convs."):
        heads.append("FPN")
    if has("proposal_generator.rpn_head.") or has("rpn_head."):
        heads.append("RPN")
    for predictor, cls, mask in (("roi_heads.box_predictor", "cls_score", "roi_heads.mask_head."),
                                 ("roi_head.bbox_head", "fc_cls", "roi_head.mask_head.")):
        stages = count(rf"^{re.escape(predictor)}\.(\d+)\.")
        if stages:
            heads.append(f"Cascade R-CNN box heads ({stages} stages, {rows(f'{predictor}.0.{cls}.weight', 1)} classes)")
        elif has(predictor + "."):
            heads.append(f"box head ({rows(f'{predictor}.{cls}.weight', 1)} classes)")
        if has(mask):
            heads.append("mask head")
        if stages or has(predictor + "."):
            family = {"family": "rcnn", "cascade": bool(stages), "mask": has(mask)}
    for decode, aux in (("sem_seg_head.", "sem_seg_head.auxiliary_head."), ("decode_head.", "auxiliary_head.")):
        if has(decode + "fpn_bottleneck.") or has(decode + "psp_modules."):
            heads.append(f"UPerNet head ({rows(decode + 'conv_seg.weight')} classes)")
            if has(aux):
                heads.append("auxiliary FCN head")
            family = {"family": "upernet"}
    if has("sem_seg_head.predictor."):
        heads.append(f"Mask2Former pixel decoder and transformer decoder "
                     f"({rows('sem_seg_head.predictor.query_feat.weight')} queries, "
                     f"{rows('sem_seg_head.predictor.class_embed.weight', 1)} classes)")
        family = {"family": "mask2former"}
    if "transformer.level_embed" in sd and "label_enc.weight" in sd:
        levels = rows("transformer.level_embed")
        classes = rows("class_embed.weight") if "class_embed.weight" in sd else rows("class_embed.0.weight")
        encoder = count(r"^transformer\.encoder\.layers\.(\d+)\.")
        decoder = count(r"^transformer\.decoder\.layers\.(\d+)\.")
        heads.append(f"DINO transformer ({encoder} encoder and {decoder} decoder layers, {levels} feature levels, "
                     f"{classes} classes)")
        family = {"family": "dino", "levels": levels}
    return heads, family


def _config_family(cfg):
    meta = cfg.MODEL.META_ARCHITECTURE
    if meta == "GeneralizedRCNN":
        return {"family": "rcnn", "cascade": "Cascade" in cfg.MODEL.ROI_HEADS.NAME, "mask": cfg.MODEL.MASK_ON}
    if meta == "MaskFormer":
        return {"family": "mask2former"}
    if meta == "SemanticSegmentor" and "UPerNet" in cfg.MODEL.SEM_SEG_HEAD.NAME:
        return {"family": "upernet"}
    if meta == "DINO":
        return {"family": "dino", "levels": cfg.MODEL.DINO.NUM_FEATURE_LEVELS}
    return {"family": meta}


@contextmanager
def _quiet(name):
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def fitting_configs(expected, family=None, configs_dir=None):
    """The configs under ``configs_dir`` (default: the repository's ``configs/``; ``Base-*`` left out) whose
    ``MODEL.FOCALNET`` has the ``expected`` values (``FOCAL_WINDOWS`` excepted: adapted at load) and whose head
    family is ``family`` (any if None). Returns ``([(path, note)], [unreadable config lines])``; the note says
    which focal windows get adapted."""
    from ..config import load_config

    folder = Path(configs_dir or CONFIGS_DIR)
    fits, unreadable = [], []
    for path in sorted(folder.rglob("*.yaml")):
        if path.name.startswith("Base-"):
            continue
        try:
            with _quiet("focalnet_det.config"):
                cfg = load_config(str(path))  # each file on its own: nothing is cached across files
        except UserError as e:
            unreadable.append(str(e))
            continue
        c = cfg.MODEL.FOCALNET
        if not all(k == "FOCAL_WINDOWS" or v is None or _same(c[k], v) for k, v in expected.items()):
            continue
        if family is not None and family != _config_family(cfg):
            continue
        windows = [w for w in expected.get("FOCAL_WINDOWS", ()) if w is not None]
        note = f"focal windows {windows} -> {list(c.FOCAL_WINDOWS)} (adapted at load)" \
            if windows and not _same(windows, c.FOCAL_WINDOWS) else ""
        fits.append((os.path.relpath(path, folder.parent), note))
    return fits, unreadable


# ------------------------------------------------------------------------------------------------------------------
# the report


def inspect_checkpoint(path, configs_dir=None):
    """A dict describing the checkpoint file (or Hugging Face model folder) ``path``: ``format``, ``variant``,
    ``inferred`` (``infer_focalnet_config``), ``stated`` (``stated_focalnet_config``), ``official`` (the variant's
    official hidden flags), ``heads``, ``family``, ``configs`` (``fitting_configs``); see ``format_report``."""
    loaded = read_checkpoint(path)  # a Hugging Face model folder too
    state_dict, wrapper = find_state_dict(loaded)
    if state_dict is None:
        top = describe_keys(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise UserError(f"no state dict found in {path}; top level: {top}")
    layout = recognise(state_dict, wrapper)
    if layout not in _FORMAT_NAMES:
        raise UserError(f"{path} is not a FocalNet checkpoint; its keys: {describe_keys(state_dict)}")
    name = _FORMAT_NAMES[layout]
    try:
        backbone = to_official_backbone(state_dict, layout)
        inferred = infer_focalnet_config(backbone)
    except UserError as e:
        raise UserError(f"{path} ({name}): {e}") from None
    stated = stated_focalnet_config(state_dict, layout, path)
    variant = variant_name({**inferred, **stated})
    official = {k: v for k, v in official_flags(variant).items() if k not in stated} if variant else {}
    heads, family = find_heads(state_dict)
    expected = {**inferred, **{k: v for k, v in {**official, **stated}.items() if v is not None}}
    configs, unreadable = fitting_configs(expected, family, configs_dir)
    return {"file": str(path), "format": name, "variant": variant, "inferred": inferred, "stated": stated,
            "stem": tuple(backbone[_STEM].shape[-2:]),
            "official": official, "heads": heads, "family": family, "configs": configs, "unreadable": unreadable,
            "configs_dir": str(configs_dir or CONFIGS_DIR)}


_HOW = {
    "EMBED_DIM": "stem output channels",
    "DEPTHS": "block indices per stage",
    "FOCAL_LEVELS": "modulation.f rows = 2C + L + 1",
    "FOCAL_WINDOWS": "each stage's first focal kernel",
    "MLP_RATIO": "mlp.fc1 rows / C",
}


def format_report(report):
    """The text ``tools/convert_checkpoint.py --inspect`` prints."""
    inferred, stated, official = report["inferred"], report["stated"], report["official"]
    variant = report["variant"]
    lines = [f"file: {report['file']}", f"format: {report['format']}",
             f"variant: {variant or 'not a released FocalNet variant'}"]
    if variant:
        window = VARIANTS[variant].window
        if any(w is not None and w != window for w in inferred["FOCAL_WINDOWS"]):
            lines[-1] += f" (classification focal window {window}, widened here)"
    lines.append("MODEL.FOCALNET, from the weights:")
    for key, value in inferred.items():
        how = _HOW.get(key) or {"USE_CONV_EMBED": "a {}x{} stem".format(*report["stem"]),
                                "USE_LAYERSCALE": "gamma_1" if value else "no gamma_1",
                                "USE_POSTLN_IN_MODULATION": "modulation.ln" if value else "no modulation.ln"}[key]
        lines.append(f"  {key}: {value}  ({how})")
    lines.append("MODEL.FOCALNET, not in official-layout weights:")
    for key in _HIDDEN:
        if key in stated:
            source = "timm's norm1_post keys" if report["format"] == "timm" else "config.json"
            lines.append(f"  {key}: {stated[key]}  ({source})")
        elif key in official and official[key] is not None:
            lines.append(f"  {key}: cannot be seen in the weights; the official {variant} uses {official[key]}")
        elif key in official:
            lines.append(f"  {key}: cannot be seen in the weights; for {variant} the sources disagree (the official "
                         f"yaml says False, FocalNet-DINO True)")
        else:
            lines.append(f"  {key}: cannot be seen in the weights; set it as the model was trained")
    if "USE_POSTLN" not in stated:
        lines.append("  (pre- and post-LN blocks have the same parameters; the normalised modulator has none)")
    lines.append("heads: " + ("; ".join(report["heads"]) if report["heads"] else "none (backbone only)"))
    kind = "any head family" if report["family"] is None else f"the same heads ({report['family']['family']})"
    lines.append(f"configs that fit (same MODEL.FOCALNET structure, {kind}) in {report['configs_dir']}:")
    lines += [f"  {path}" + (f"  [{note}]" if note else "") for path, note in report["configs"]] or ["  none"]
    lines += [f"  (unreadable: {line})" for line in report["unreadable"]]
    return "\n".join(lines)
