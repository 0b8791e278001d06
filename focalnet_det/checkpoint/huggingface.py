"""Hugging Face ``transformers`` FocalNet checkpoints (``microsoft/focalnet-*`` on the Hub).

A Hub model is a folder with ``model.safetensors`` or ``pytorch_model.bin`` (or shards listed by a
``*.index.json``) beside ``config.json``. Its keys, under ``focalnet.`` (``FocalNetBackbone``,
``FocalNetForImageClassification``), nothing (``FocalNetModel``) or ``model.``, map one to one onto the official
layout, with no tensor changing shape:

- ``embeddings.patch_embeddings.projection`` / ``embeddings.norm`` -> ``patch_embed.proj`` / ``patch_embed.norm``;
- ``encoder.stages.{i}.layers.{j}`` -> ``layers.{i}.blocks.{j}``, and in each block ``modulation.projection_in``,
  ``projection_context``, ``projection_out``, ``layernorm`` -> ``modulation.f``, ``h``, ``proj``, ``ln``;
- ``encoder.stages.{i}.downsample.{projection,norm}`` -> ``layers.{i}.downsample.{proj,norm}`` (the downsample
  closes stage i in both layouts);
- dropped: the final ``layernorm``, ``classifier``, and masked-image-modeling's ``embeddings.mask_token`` and
  ``decoder``.

The weights cannot show ``use_post_layernorm`` or ``normalize_modulator``: ``config.json`` can, and a loaded
model whose settings disagree with it gets a warning per key.
"""
import json
import logging
import os
import re

from ..errors import UserError
from .reading import WEIGHT_FILES, huggingface_weights_file, read_huggingface_folder  # noqa: F401 (re-exported)

__all__ = [
    "is_huggingface",
    "huggingface_to_official",
    "huggingface_weights_file",
    "read_huggingface_folder",
    "hf_config_to_focalnet",
    "warn_hf_config_mismatch",
]

logger = logging.getLogger(__name__)

_STEM = "embeddings.patch_embeddings.projection.weight"

_WB = r"(weight|bias)"
_BLOCK = r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
_MODULATION = {"projection_in": "f", "projection_context": "h", "projection_out": "proj", "layernorm": "ln"}
# (pattern matching a whole key below the prefix, official name) applied to each key
_RENAMES = [
    (re.compile(rf"embeddings\.patch_embeddings\.projection\.{_WB}"), r"patch_embed.proj.\1"),
    (re.compile(rf"embeddings\.norm\.{_WB}"), r"patch_embed.norm.\1"),
    (re.compile(rf"encoder\.stages\.(\d+)\.downsample\.projection\.{_WB}"), r"layers.\1.downsample.proj.\2"),
    (re.compile(rf"encoder\.stages\.(\d+)\.downsample\.norm\.{_WB}"), r"layers.\1.downsample.norm.\2"),
    (
        re.compile(_BLOCK + rf"(gamma_[12]|(?:norm[12]|mlp\.fc[12])\.{_WB}|modulation\.focal_layers\.\d+\.0\.weight)"),
        r"layers.\1.blocks.\2.\3",
    ),
    (
        re.compile(_BLOCK + rf"modulation\.({'|'.join(_MODULATION)})\.{_WB}"),
        lambda m: f"layers.{m[1]}.blocks.{m[2]}.modulation.{_MODULATION[m[3]]}.{m[4]}",
    ),
]
_DROPPED = re.compile(rf"layernorm\.{_WB}|embeddings\.mask_token")  # below the prefix
_DROPPED_OUTSIDE = re.compile(r"(classifier|decoder)\..+")  # heads beside ``focalnet.``

# FocalNetConfig's defaults (for keys an older config.json leaves out) -> MODEL.FOCALNET key
_CONFIG_KEYS = {
    "embed_dim": ("EMBED_DIM", 96),
    "depths": ("DEPTHS", [2, 2, 6, 2]),
    "focal_levels": ("FOCAL_LEVELS", [2, 2, 2, 2]),
    "focal_windows": ("FOCAL_WINDOWS", [3, 3, 3, 3]),
    "use_conv_embed": ("USE_CONV_EMBED", False),
    "use_post_layernorm": ("USE_POSTLN", False),
    "use_layerscale": ("USE_LAYERSCALE", False),
    "normalize_modulator": ("NORMALIZE_MODULATOR", False),
    "use_post_layernorm_in_modulation": ("USE_POSTLN_IN_MODULATION", False),
}

_FIXED = {"layer_norm_eps": 1e-5, "hidden_act": "gelu"}  # FocalNetConfig settings that are fixed in this backbone


def _prefix(state_dict):
    """The prefix under which a state dict holds a Hugging Face FocalNet (shortest), or None."""
    prefixes = [k[: -len(_STEM)] for k in state_dict if k.endswith(_STEM) and (k == _STEM or k[-len(_STEM) - 1] == ".")]
    return min(prefixes, key=len) if prefixes else None


def is_huggingface(state_dict):
    """Whether a state dict is a ``transformers`` FocalNet (``encoder.stages.*`` with ``modulation.projection_in``)."""
    prefix = _prefix(state_dict)
    return prefix is not None and any(
        k.startswith(prefix + "encoder.stages.") and ".modulation.projection_in." in k for k in state_dict
    )


def _rename(key):
    for pattern, repl in _RENAMES:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(repl) if isinstance(repl, str) else repl(m)
    return None


def huggingface_to_official(state_dict):
    """Rename a ``transformers`` FocalNet state dict to the official backbone layout; the final ``layernorm``, the
    classifier and masked-image-modeling parts are dropped. UserError names the first key that fits nowhere."""
    prefix = _prefix(state_dict)
    if prefix is None:
        raise UserError(f"not a Hugging Face FocalNet state dict: no key ends with {_STEM}")
    out = {}
    for k, v in state_dict.items():
        if not k.startswith(prefix):
            if _DROPPED_OUTSIDE.fullmatch(k):
                continue
            raise UserError(f"Hugging Face FocalNet checkpoint: unexpected key {k} (beside the model under '{prefix}')")
        name = k[len(prefix) :]
        if _DROPPED.fullmatch(name):
            continue
        official = _rename(name)
        if official is None:
            raise UserError(f"Hugging Face FocalNet checkpoint: unknown key {k}")
        out[official] = v
    return out


def _read_config(path):
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(config, dict) or config.get("model_type", "focalnet") != "focalnet":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{path} is not a FocalNet config.json (model_type: {kind})")
    return config


def hf_config_to_focalnet(config_json):
    """``MODEL.FOCALNET`` settings (EMBED_DIM, DEPTHS, FOCAL_LEVELS, FOCAL_WINDOWS, USE_CONV_EMBED, USE_POSTLN,
    USE_LAYERSCALE, NORMALIZE_MODULATOR, USE_POSTLN_IN_MODULATION) of a ``transformers`` FocalNet ``config.json``
    (a path or its parsed dict); keys it leaves out take ``FocalNetConfig``'s defaults."""
    config = config_json if isinstance(config_json, dict) else _read_config(config_json)
    out = {}
    for hf_key, (key, default) in _CONFIG_KEYS.items():
        value = config.get(hf_key, default)
        out[key] = [int(v) for v in value] if isinstance(default, list) else type(default)(value)
    return out


def warn_hf_config_mismatch(weights_file, model):
    """Warn, one line per key, where the ``config.json`` beside ``weights_file`` and ``model`` (the FocalNet being
    loaded, as ``inspect.model_focalnet_config``'s values; None: no FocalNet) disagree. ``normalize_modulator`` and ``use_post_layernorm`` matter most: no weight shows them.
    Focal windows are left out: dense-prediction configs widen them on purpose (the loader pads the kernels)."""
    path = os.path.join(os.path.dirname(weights_file), "config.json")
    if model is None or not os.path.isfile(path):
        return
    config = _read_config(path)
    for hf_key, value in _FIXED.items():
        if config.get(hf_key, value) != value:
            logger.warning(f"{path}: {hf_key} = {config[hf_key]}, but this FocalNet always uses {value}")
    hf_names = {key: hf_key for hf_key, (key, _) in _CONFIG_KEYS.items()}
    expected = hf_config_to_focalnet(config)
    for key in expected.keys() - {"FOCAL_WINDOWS"}:
        value = model[key]
        if expected[key] != value:
            logger.warning(
                f"{path}: {hf_names[key]} = {expected[key]}, but the model has MODEL.FOCALNET.{key} = {value} "
                f"(the model keeps its value; set MODEL.FOCALNET.{key} if the checkpoint's is right)"
            )
