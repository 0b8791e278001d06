"""``FocalNetCheckpointer``: Detectron2's checkpointer, reading FocalNet checkpoints of every known layout."""
import logging
import os
import re
from urllib.parse import urlparse

from detectron2.checkpoint import DetectionCheckpointer

from ..errors import UserError
from ..fileio import atomic_open
from ..modeling.backbone.focalnet import FocalNet
from .adapt import adapt_focal_kernels, new_focal_level_keys
from .class_heads import fit_class_heads  # issue 19's hook in _load_model
from .convert import (
    WHOLE_MODELS,
    detect_format,
    find_state_dict,
    focalnet_prefix_in,
    recognise,
    to_official_backbone,
    whole_model_to_detectron2,
)
from .dino import fit_dino_state_dict
from .download import download, is_url
from .huggingface import warn_hf_config_mismatch
from .inspect import check_backbone_structure, model_focalnet_config, stated_focalnet_config
from .mmdet import fit_mmdet_rcnn_state_dict, is_mmdet_detector, log_mmdet_meta
from .reading import (
    describe_keys,
    first_line,
    huggingface_weights_file,
    load_pickle,
    read_huggingface_folder,
    torch_load,
)

__all__ = ["FocalNetCheckpointer", "focalnet_prefix"]

logger = logging.getLogger(__name__)

_OUTPUT_NORM = re.compile(r"^norm\d+\.")  # norm0..3: new in detection, absent from classification weights
# formats converted as a whole model -> their strict check against the model
_WHOLE_MODEL = {"dino": fit_dino_state_dict, "mmdet-rcnn": fit_mmdet_rcnn_state_dict}


def focalnet_prefix(model):
    """Where the model's FocalNet sits, as a state-dict prefix (``"backbone."``, ``"backbone.bottom_up."``,
    ``""`` for a bare FocalNet), or None if the model has none."""
    for name, module in model.named_modules():
        if isinstance(module, FocalNet):
            return name + "." if name else ""
    return None


class _AtomicWrites:
    """A path manager whose local files opened for writing appear only once written completely: a process
    killed while saving leaves the previous checkpoint (and ``last_checkpoint``) as they were."""

    def __init__(self, path_manager):
        self._inner = path_manager

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def open(self, path, mode="r", **kwargs):
        if "w" in mode and "://" not in path:
            return atomic_open(path, mode, **kwargs)
        return self._inner.open(path, mode, **kwargs)


class FocalNetCheckpointer(DetectionCheckpointer):
    """A drop-in ``DetectionCheckpointer`` that also loads official FocalNet, timm, Hugging Face (a file or its model
    folder) and mmdet/mmseg weights.

    ``load(path)`` takes a local path or an http(s) URL (downloaded once into ``$FOCALNET_DET_CACHE/weights``,
    see ``download``).
    Non-Detectron2 layouts are converted to the official backbone layout, placed under the model's FocalNet
    (``backbone.`` or ``backbone.bottom_up.``), their focal kernels/levels adapted to the model's, and loaded
    strictly for the backbone: every backbone key but the output norms ``norm0..3`` must be present with the
    model's shape, otherwise UserError. The heads keep their initialisation. Whole released models are
    converted whole instead: an mmseg UPerNet, an official DINO and an mmdet Mask R-CNN / Cascade Mask R-CNN
    (``mmdet.py``; the last two loaded strictly: a missing, extra or mis-shaped key is a UserError naming it).

    A Detectron2 checkpoint loads as usual (resuming optimizer, scheduler, iteration), after two fixes to its
    FocalNet part: ``backbone.`` <-> ``backbone.bottom_up.`` are remapped to where the model's FocalNet sits,
    and focal kernels/levels are adapted; if it contains a FocalNet, that part is checked as above.
    Any checkpoint of which no key fits the model raises UserError. Saving writes a temporary file, renamed
    when complete.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)
        self._stated = {}  # MODEL.FOCALNET values the file being loaded states beside its weights

    def load(self, path, *args, **kwargs):
        if path:
            path = self._check_readable(path)
        return super().load(path, *args, **kwargs)

    def _check_readable(self, path):
        """The path to load: an http(s) URL downloaded (its query kept for Detectron2, e.g.
        ``?matching_heuristics=True``); UserError for a missing local file or a URL that cannot be fetched."""
        parsed = urlparse(path)
        bare = parsed._replace(query="").geturl()
        if is_url(bare):
            return download(bare) + (f"?{parsed.query}" if parsed.query else "")
        if "://" not in bare:
            if os.path.isdir(bare):  # a Hugging Face model folder: its weights file
                return huggingface_weights_file(bare)
            if not os.path.isfile(bare):
                raise UserError(f"weights file not found: {path}")
            return path
        try:
            local = self.path_manager.get_local_path(bare)  # cached: the later call in load() reuses it
        except Exception as e:
            raise UserError(f"cannot download weights {path}: {type(e).__name__}: {e}") from e
        if not os.path.isfile(local):
            raise UserError(f"weights file not found: {path}")
        return path

    def _torch_load(self, f):
        return torch_load(f)

    def _read(self, filename):
        """The file as Detectron2's ``_load_file`` returns it (``{"model": ..., ...}``), read without running
        anything from it (``reading.py``): Detectron2's own ``.pkl`` / ``.pyth`` branches unpickle fully."""
        if filename.endswith(".safetensors"):
            from safetensors.torch import load_file

            return {"model": load_file(filename, device="cpu")}
        if filename.endswith(".index.json"):  # a sharded Hugging Face model
            return {"model": read_huggingface_folder(filename)}
        if filename.endswith(".pkl"):  # Detectron2 / Caffe2 model zoo, wrapped as Detectron2 does
            data = load_pickle(filename)
            if not isinstance(data, dict):
                raise UserError(f"no state dict found in {filename}; it holds a {type(data).__name__}")
            if "model" in data and "__author__" in data:
                return data
            data = data.get("blobs", data)
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            data = torch_load(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise UserError(f"cannot load {filename}: a pycls .pyth checkpoint holds model_state")
            model_state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # torch files, through _torch_load

    def _load_file(self, filename):
        """Read any supported file, recognise its layout and map it to the model's keys: whole released models
        renamed whole, other non-Detectron2 layouts converted to the official backbone layout."""
        self._loading_file = filename
        try:
            loaded = self._read(filename)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"cannot read weights file {filename}: {type(e).__name__}: {first_line(e)}") from e

        state_dict, wrapper = find_state_dict(loaded)
        if state_dict is None:
            top = loaded["model"] if isinstance(loaded["model"], dict) else loaded
            raise UserError(f"no state dict found in {filename}; top-level keys: {describe_keys(top)}")
        layout = recognise(state_dict, wrapper)
        fmt = detect_format(state_dict, wrapper) if layout in WHOLE_MODELS else layout
        self._stated = stated_focalnet_config(state_dict, fmt)  # what official weights cannot show (timm's post-LN)
        if fmt == "huggingface":  # config.json beside it shows the flags the weights cannot
            net = next((m for m in self.model.modules() if isinstance(m, FocalNet)), None)
            warn_hf_config_mismatch(filename, model_focalnet_config(net) if net is not None else None)
        if layout == "dino" and hasattr(self.model, "transformer") and hasattr(self.model, "label_enc"):
            logger.info(f"checkpoint {filename}: official DINO layout, renamed to this project's DINO keys")
            return {"model": whole_model_to_detectron2(state_dict, layout), "__focalnet_format__": "dino"}
        if layout == "mmseg-upernet":  # a released UPerNet: the whole model, renamed
            logger.info(f"FocalNet checkpoint {filename}: mmseg UPerNet, renamed to this project's UPerNet keys")
            state_dict, fmt = whole_model_to_detectron2(state_dict, layout), "detectron2"
        if fmt == "mm" and is_mmdet_detector(state_dict):
            rcnn = layout == "mmdet-rcnn"
            if rcnn and hasattr(self.model, "roi_heads"):  # a released (Cascade) Mask R-CNN: whole, strictly
                logger.info(f"FocalNet checkpoint {filename}: mmdet R-CNN, renamed to this project's keys")
                log_mmdet_meta(loaded, filename)
                return {"model": whole_model_to_detectron2(state_dict, layout, filename),
                        "__focalnet_format__": "mmdet-rcnn"}
            why = "the model has no R-CNN heads" if rcnn else "its heads are not an R-CNN's (e.g. ATSS, Sparse R-CNN)"
            logger.info(f"FocalNet checkpoint {filename}: mmdet detector; only its backbone is loaded ({why})")
        if fmt in ("detectron2", "unknown"):  # Detectron2's own loading; non-FocalNet keys fail in _load_model
            loaded["model"] = state_dict
            loaded["__focalnet_format__"] = fmt
            return loaded
        logger.info(f"FocalNet checkpoint {filename}: {fmt} layout, converted to the official backbone layout")
        return {"model": to_official_backbone(state_dict, fmt), "__author__": fmt, "__focalnet_format__": fmt}

    def _load_model(self, checkpoint):
        filename = getattr(self, "_loading_file", "checkpoint")
        fit = _WHOLE_MODEL.get(checkpoint.get("__focalnet_format__"))
        if fit is not None:  # the whole model, checked strictly
            checkpoint.pop("__focalnet_format__")
            self._check_structure(checkpoint["model"], filename)
            checkpoint["model"] = fit(self.model, checkpoint["model"], filename)
            checkpoint["matching_heuristics"] = False
            return super()._load_model(checkpoint)
        converted = checkpoint.pop("__focalnet_format__", "detectron2") not in ("detectron2", "unknown")
        state_dict = checkpoint["model"]
        prefix = focalnet_prefix(self.model)
        if converted:
            if prefix is None:
                raise UserError(f"{filename} holds FocalNet weights, but the model has no FocalNet backbone")
            state_dict = self._prepare_backbone(state_dict, prefix, filename)
            checkpoint["matching_heuristics"] = False
        elif prefix is not None and focalnet_prefix_in(state_dict) is not None:
            # a Detectron2 checkpoint with a FocalNet: move it to where the model's sits, adapt, check
            ckpt_prefix = focalnet_prefix_in(state_dict)
            if ckpt_prefix != prefix:
                logger.info(f"FocalNet checkpoint: backbone keys moved from '{ckpt_prefix}' to '{prefix}'")
            backbone = {k[len(ckpt_prefix) :]: v for k, v in state_dict.items() if k.startswith(ckpt_prefix)}
            rest = {k: v for k, v in state_dict.items() if not k.startswith(ckpt_prefix)}
            state_dict = {**rest, **self._prepare_backbone(backbone, prefix, filename)}
        checkpoint["model"] = state_dict
        # issue 19 hook, keep it: a whole model of another class count (class_heads.py)
        fit_class_heads(self.model, checkpoint, filename, backbone_prefix=prefix)

        ckpt_keys = list(state_dict)
        incompatible = super()._load_model(checkpoint)
        skipped = set(incompatible.missing_keys) | {k for k, *_ in incompatible.incorrect_shapes}
        if all(k in skipped for k in self.model.state_dict()):
            raise UserError(
                f"no key of {filename} fits the model (is it a FocalNet checkpoint?); "
                f"its keys: {describe_keys(ckpt_keys)}"
            )
        heads = [k for k in incompatible.missing_keys if not k.startswith(prefix or "")]
        if converted and heads:
            logger.info(f"FocalNet checkpoint: {len(heads)} keys outside the backbone keep their initialisation")
        return incompatible

    def _check_structure(self, state_dict, filename):
        """UserError naming the MODEL.FOCALNET key when the FocalNet in a whole-model state dict has another
        structure than the model's (``inspect.check_backbone_structure``)."""
        prefix, ckpt_prefix = focalnet_prefix(self.model), focalnet_prefix_in(state_dict)
        if prefix is not None and ckpt_prefix is not None:
            backbone = {k[len(ckpt_prefix) :]: v for k, v in state_dict.items() if k.startswith(ckpt_prefix)}
            check_backbone_structure(backbone, self.model.get_submodule(prefix[:-1]), filename, self._stated)

    def _prepare_backbone(self, backbone_sd, prefix, filename):
        """Adapt an official-layout backbone state dict to the model's FocalNet at ``prefix``, check that it
        covers the backbone (output norms and new focal levels excepted), and return it prefixed."""
        check_backbone_structure(backbone_sd, self.model.get_submodule(prefix[:-1]), filename, self._stated)
        model_sd = {k[len(prefix) :]: v for k, v in self.model.state_dict().items() if k.startswith(prefix)}
        backbone_sd = adapt_focal_kernels(backbone_sd, {k: v.shape for k, v in model_sd.items()})

        fresh = set(new_focal_level_keys(backbone_sd, model_sd))
        if fresh:
            logger.info(f"FocalNet checkpoint: {len(fresh)} new focal-level kernels keep their initialisation")
        missing = [k for k in model_sd if k not in backbone_sd and k not in fresh and not _OUTPUT_NORM.match(k)]
        if missing and len(missing) == len([k for k in model_sd if not _OUTPUT_NORM.match(k)]):
            raise UserError(
                f"no key of {filename} fits the model's FocalNet (is it a FocalNet checkpoint?); "
                f"its keys: {describe_keys(backbone_sd)}"
            )
        mismatched = [
            f"{k} {tuple(v.shape)} vs model {tuple(model_sd[k].shape)}"
            for k, v in backbone_sd.items()
            if k in model_sd and v.shape != model_sd[k].shape
        ]
        if missing:
            raise UserError(
                f"{filename} lacks FocalNet backbone keys of the model (check MODEL.FOCALNET against the "
                f"checkpoint's variant): {describe_keys(prefix + k for k in missing)}"
            )
        if mismatched:
            raise UserError(
                f"{filename}: FocalNet backbone shapes differ from the model's (check MODEL.FOCALNET against the "
                f"checkpoint's variant): {describe_keys(mismatched, n=3)}"
            )
        norms = [k for k in model_sd if _OUTPUT_NORM.match(k) and k not in backbone_sd]
        if norms:
            logger.info(f"FocalNet checkpoint: output norms {sorted({k.split('.')[0] for k in norms})} start fresh")
        return {prefix + k: v for k, v in backbone_sd.items()}
