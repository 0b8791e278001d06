"""Your own datasets, registered by name: COCO instances, COCO panoptic, image + label-PNG pairs.

The same registration serves the tools' ``--register-*`` flags (``focalnet_det.data.arguments``) and scripts::

    from focalnet_det.data import register_coco_dataset
    register_coco_dataset("my_train", "annotations/train.json", "images/train")

Nothing is read when a dataset is registered: the class names (``thing_classes``, from the file's categories,
sorted by id, the ids mapped to contiguous ones as Detectron2's ``load_coco_json`` does) are read on first use,
so that every launched process can register cheaply. Registering a name again with other files replaces an
earlier registration of this module; a built-in name is refused.
"""
import hashlib
import json
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json, load_sem_seg

from ...errors import UserError
from .panoptic_utils import load_panoptic_json, panoptic_metadata, write_semantic_from_panoptic
from .tiny_shapes import tiny_shapes_root, write_once

__all__ = ["register_coco_dataset", "register_coco_panoptic_dataset", "register_sem_seg_dataset", "read_json",
           "coco_categories", "panoptic_categories", "image_extension", "REGISTERED_FROM", "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
REGISTERED_FROM = "registered_from"  # metadata key marking a dataset registered here (value: its files)
_categories_cache = {}


def _file_key(path):
    try:
        stat = os.stat(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    return os.path.abspath(path), stat.st_mtime_ns, stat.st_size


def read_json(path):
    """The parsed JSON file; a missing, unreadable or malformed file is a UserError naming it."""
    _file_key(path)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a COCO file holds a JSON object, this one a {type(data).__name__}")
    return data


def coco_categories(json_file, data=None):
    """The file's categories sorted by id, kept per file (only they: the metadata of several datasets asks for
    them in turn, and a large annotation file is not kept in memory); ``data``: the file, already parsed."""
    key = _file_key(json_file)
    if key not in _categories_cache:
        _categories_cache[key] = _read_categories(json_file, read_json(json_file) if data is None else data)
    return _categories_cache[key]


def _read_categories(json_file, data):
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise UserError(f"{json_file}: no 'categories' list (each category needs 'id' and 'name')")
    for c in categories:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise UserError(f"{json_file}: category {c!r} needs 'id' and 'name'")
    return sorted(categories, key=lambda c: c["id"])


def _claim(name, source):
    """Make room for ``name``: free if unknown or registered here before (then removed), else a UserError."""
    if name not in DatasetCatalog.list():
        return
    if MetadataCatalog.get(name).get(REGISTERED_FROM, None) is None:
        raise UserError(f"dataset name {name!r} is taken by a built-in dataset: register yours under another name")
    if MetadataCatalog.get(name).get(REGISTERED_FROM) != source:
        logger.info(f"dataset {name!r} registered again, now from {source}")
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


class _CocoMetadata(Metadata):
    """Class names and the id map read from the json on first use (``load_coco_json`` sets the same values)."""

    @property
    def thing_classes(self):
        return [c["name"] for c in coco_categories(self.json_file)]

    @property
    def thing_dataset_id_to_contiguous_id(self):
        return {c["id"]: i for i, c in enumerate(coco_categories(self.json_file))}


def _drop_degenerate_boxes(name, dicts):
    """Annotations whose box has no area are dropped from training data, and counted in the log."""
    dropped = 0
    for d in dicts:
        annotations = d.get("annotations", [])
        kept = [a for a in annotations if "bbox" not in a or (a["bbox"][2] > 0 and a["bbox"][3] > 0)]
        dropped += len(annotations) - len(kept)
        d["annotations"] = kept
    if dropped:
        logger.warning(f"{name}: dropped {dropped} annotations whose box has zero or negative width or height")
    return dicts


def register_coco_dataset(name, json_file, image_root):
    """Register COCO instances (boxes, polygons or RLE masks; any category ids) as ``name``: what Detectron2's
    ``register_coco_instances`` registers (``load_coco_json``; ``COCOEvaluator`` against ``json_file``), class
    names read lazily and boxes without area dropped from the training data."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    _claim(name, (json_file, image_root))
    DatasetCatalog.register(name, lambda: _drop_degenerate_boxes(name, load_coco_json(json_file, image_root, name)))
    MetadataCatalog[name] = _CocoMetadata(name=name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **{REGISTERED_FROM: (json_file, image_root)})


def semantic_cache_root(panoptic_json, png_root):
    """Where the semantic labels derived from a panoptic dataset are written: ``$FOCALNET_DET_CACHE`` in a
    folder named after the files (and the json's size and time, so that a changed file is converted again)."""
    stat = os.stat(panoptic_json)
    key = json.dumps([os.path.abspath(panoptic_json), os.path.abspath(png_root), stat.st_size, stat.st_mtime_ns])
    stem = os.path.splitext(os.path.basename(panoptic_json))[0]
    return tiny_shapes_root().parent / "panoptic_semseg" / f"{stem}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


class _PanopticMetadata(Metadata):
    """Classes from the json's categories (``isthing`` says which are things); ``sem_seg_root`` writes the
    semantic view of the panoptic PNGs on first access (once, atomically: concurrent processes share it)."""

    def _meta(self):
        return panoptic_metadata(panoptic_categories(self.panoptic_json))

    thing_classes = property(lambda self: self._meta()["thing_classes"])
    thing_colors = property(lambda self: self._meta()["thing_colors"])
    stuff_classes = property(lambda self: self._meta()["stuff_classes"])
    stuff_colors = property(lambda self: self._meta()["stuff_colors"])
    thing_dataset_id_to_contiguous_id = property(lambda self: self._meta()["thing_dataset_id_to_contiguous_id"])
    stuff_dataset_id_to_contiguous_id = property(lambda self: self._meta()["stuff_dataset_id_to_contiguous_id"])

    @property
    def sem_seg_root(self):
        root = semantic_cache_root(self.panoptic_json, self.panoptic_root)

        def write(folder):
            logger.info(f"{self.name}: writing semantic labels from the panoptic PNGs into {root} (once)")
            write_semantic_from_panoptic(self.panoptic_json, self.panoptic_root, folder,
                                         panoptic_categories(self.panoptic_json), self.ignore_label)
            open(os.path.join(folder, ".complete"), "w").close()

        return str(write_once(root, ".complete", write))


def panoptic_categories(json_file, data=None):
    categories = coco_categories(json_file, data)
    for c in categories:
        if "isthing" not in c:
            raise UserError(f"{json_file}: panoptic category {c['name']!r} (id {c['id']}) has no 'isthing'")
        c.setdefault("color", list(hashlib.sha1(str(c["id"]).encode()).digest()[:3]))
    return categories


def register_coco_panoptic_dataset(name, json_file, png_root, image_root):
    """Register COCO panoptic (things and stuff from the categories' ``isthing``) as ``name``, with the semantic
    view Mask2Former and UPerNet train on (``sem_seg_file_name``), evaluated by PQ and mIoU."""
    json_file, png_root, image_root = os.fspath(json_file), os.fspath(png_root), os.fspath(image_root)
    _claim(name, (json_file, png_root, image_root))

    def load():
        meta = MetadataCatalog.get(name)
        return load_panoptic_json(json_file, image_root, png_root, panoptic_metadata(panoptic_categories(json_file)),
                                  sem_seg_dir=meta.sem_seg_root)

    DatasetCatalog.register(name, load)
    MetadataCatalog[name] = _PanopticMetadata(name=name).set(
        panoptic_json=json_file, panoptic_root=png_root, image_root=image_root, evaluator_type="coco_panoptic_seg",
        ignore_label=255, label_divisor=1000, **{REGISTERED_FROM: (json_file, png_root, image_root)},
    )


def image_extension(image_root):
    """The most common image extension among the files of ``image_root``."""
    counts = {}
    for f in os.listdir(image_root):
        ext = os.path.splitext(f)[1]
        if ext.lower() in IMAGE_EXTENSIONS:
            counts[ext] = counts.get(ext, 0) + 1
    if not counts:
        raise UserError(f"{image_root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return max(counts, key=counts.get)


def register_sem_seg_dataset(name, image_root, label_root, classes, ignore_label=255):
    """Register image + label-PNG pairs matched by file stem (Detectron2's ``load_sem_seg``) as ``name``: label
    ``i`` is ``classes[i]``, ``ignore_label`` is not a class; evaluated by mIoU (per-class IoU)."""
    image_root, label_root, classes = os.fspath(image_root), os.fspath(label_root), list(classes)
    if not classes:
        raise UserError(f"dataset {name!r}: no classes given (--classes a,b,c or --classes-file FILE)")
    if 0 <= ignore_label < len(classes):
        raise UserError(f"dataset {name!r}: ignore label {ignore_label} is class {classes[ignore_label]!r}; "
                        f"choose a value outside 0..{len(classes) - 1} (usually 255)")
    _claim(name, (image_root, label_root))
    DatasetCatalog.register(name, lambda: load_sem_seg(label_root, image_root, gt_ext=".png",
                                                       image_ext=image_extension(image_root)))
    MetadataCatalog.get(name).set(
        image_root=image_root, sem_seg_root=label_root, stuff_classes=classes, ignore_label=ignore_label,
        evaluator_type="sem_seg", **{REGISTERED_FROM: (image_root, label_root)},
    )
