"""Prediction files that other programs read, written image by image and assembled at the end.

Under the output folder:

- ``predictions.json``: COCO *results* (``[{image_id, category_id, bbox (XYWH), score, segmentation (RLE)}]``),
  read by pycocotools' ``COCO.loadRes``; category ids are the dataset's own (``thing_dataset_id_to_contiguous_id``
  of the metadata; without one, contiguous id + 1);
- ``annotations.json``: a COCO *dataset* (images with file names and sizes, annotations with bbox, area,
  segmentation and ``score``, categories with names): pre-annotations for CVAT, Label Studio and the like;
- ``sem_seg/<stem>.png``: label maps with the dataset's label values (Detectron2's contiguous ids, as in its
  label PNGs; 8-bit, 16-bit beyond 255 classes);
- ``panoptic/<stem>.png`` + ``panoptic.json``: COCO panoptic (ids as ``R + 256 G + 256^2 B``; ``segments_info``
  with the dataset's category ids), read by panopticapi.

Every image's result goes to ``journal.jsonl`` (one line, fsynced, after its PNGs are complete), so that nothing is
held in memory across images and an interrupted run continues (``resume=True``) without predicting done images
again; ``finish()`` streams the journal into the JSON files, each written under a temporary name and renamed.
"""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from ..data.datasets.panoptic_utils import id2rgb
from ..fileio import atomic_open, atomic_path
from .predictor import sem_seg_labels, thing_ids
from .tiling import CroppedMasks

__all__ = ["PredictionWriter", "instances_to_records", "categories"]

JOURNAL = "journal.jsonl"


def _inverse(mapping):
    return {v: k for k, v in (mapping or {}).items()}


def categories(metadata, panoptic=False):
    """COCO categories (id, name; panoptic: isthing) of ``metadata``: dataset ids where it maps them, else
    contiguous id + 1."""
    things = _inverse(metadata.get("thing_dataset_id_to_contiguous_id", None))
    if not panoptic:
        names = metadata.get("thing_classes", None) or []
        return [{"id": int(things.get(c, c + 1)), "name": n} for c, n in enumerate(names)]
    stuff = _inverse(metadata.get("stuff_dataset_id_to_contiguous_id", None))
    names = metadata.get("stuff_classes", None) or metadata.get("thing_classes", None) or []
    thing_set = thing_ids(metadata)
    return [{"id": int(things.get(c, stuff.get(c, c + 1))), "name": n, "supercategory": "",
             "isthing": int(thing_set is None or c in thing_set)} for c, n in enumerate(names)]


def _rle_json(rle):
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def instances_to_records(instances, thing_to_dataset_id):
    """COCO result records (no image id) of an ``Instances`` on the CPU: XYWH boxes (from the masks when the model
    gives none), RLE masks, area."""
    records = []
    if not len(instances):
        return records
    boxes = instances.pred_boxes.tensor.tolist() if instances.has("pred_boxes") else [[0.0] * 4] * len(instances)
    masks = instances.pred_masks if instances.has("pred_masks") else None
    if masks is not None and not isinstance(masks, CroppedMasks):
        masks = np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0))
        rles = mask_util.encode(masks)
    for k in range(len(instances)):
        cls = int(instances.pred_classes[k])
        rec = {"category_id": int(thing_to_dataset_id.get(cls, cls + 1)), "score": float(instances.scores[k])}
        x0, y0, x1, y1 = boxes[k]
        if masks is not None:
            rle = masks.to_rle(k) if isinstance(masks, CroppedMasks) else rles[k]
            rec["segmentation"] = _rle_json(rle)
            rec["area"] = float(mask_util.area(rle))
            if x1 <= x0 or y1 <= y0:  # no box from the model (Mask2Former): the mask's
                x0, y0, w, h = mask_util.toBbox(rle).tolist()
                x1, y1 = x0 + w, y0 + h
        else:
            rec["area"] = float((x1 - x0) * (y1 - y0))
        rec["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        records.append(rec)
    return records


class PredictionWriter:
    """Writes the files of the module docstring for the images given to :meth:`add`, one at a time.

    ``resume``: keep the journal of an earlier run into ``output_dir`` and report its images as done
    (:meth:`is_done`); otherwise start a new one. ``score_threshold`` / ``top_k`` select the instances written."""

    def __init__(self, output_dir, metadata, resume=False, score_threshold=0.0, top_k=None):
        self.output_dir, self.metadata = output_dir, metadata
        self.score_threshold, self.top_k = score_threshold, top_k
        self.thing_to_dataset = _inverse(metadata.get("thing_dataset_id_to_contiguous_id", None))
        self.stuff_to_dataset = _inverse(metadata.get("stuff_dataset_id_to_contiguous_id", None))
        os.makedirs(output_dir, exist_ok=True)
        self.journal_path = os.path.join(output_dir, JOURNAL)
        self.done, self.names, self.count = set(), set(), 0
        if resume and os.path.exists(self.journal_path):
            for entry in self._entries():
                self.done.add(entry["key"])
                self.names.add(entry["stem"])
                self.count = max(self.count, entry["id"])
        with open(self.journal_path, "a" if resume else "w") as f:  # a new run: a new journal
            if resume and f.tell() and not self._ends_with_newline():
                f.write("\n")  # a line cut by a kill is ignored; the next one starts on its own line
        self.kinds = self._kinds_in_journal() if resume else set()

    def _ends_with_newline(self):
        with open(self.journal_path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _entries(self):
        """The journal's complete entries (a line cut by an interruption is skipped)."""
        with open(self.journal_path) as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def _kinds_in_journal(self):
        kinds = set()
        for entry in self._entries():
            kinds.update(k for k in ("instances", "sem_seg", "panoptic") if k in entry)
        return kinds

    def is_done(self, key):
        return key in self.done

    def _unique_stem(self, file_name):
        stem, k = os.path.splitext(os.path.basename(file_name))[0], 1
        name = stem
        while name in self.names:
            name, k = f"{stem}_{k}", k + 1
        self.names.add(name)
        return name

    def add(self, key, file_name, image_size, predictions):
        """Record one image's predictions. ``key`` identifies the input (path, or path#frame) for resuming;
        ``file_name`` is the image's name in the written files; ``image_size`` (H, W)."""
        self.count += 1
        stem = self._unique_stem(file_name)
        height, width = int(image_size[0]), int(image_size[1])
        entry = {"key": key, "id": self.count, "file_name": file_name, "stem": stem, "height": height, "width": width}
        if "panoptic_seg" in predictions:
            entry["panoptic"] = self._write_panoptic(stem, *predictions["panoptic_seg"])
        if "sem_seg" in predictions or "sem_seg_labels" in predictions:
            labels = sem_seg_labels(predictions).numpy()
            path = os.path.join(self.output_dir, "sem_seg", stem + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_path(path) as tmp:
                dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
                Image.fromarray(labels.astype(dtype)).save(tmp, format="PNG")
            entry["sem_seg"] = os.path.relpath(path, self.output_dir)
        if "instances" in predictions:
            instances = predictions["instances"].to("cpu")
            instances = instances[instances.scores >= self.score_threshold]
            if self.top_k is not None:
                instances = instances[torch.argsort(instances.scores, descending=True)[: self.top_k]]
            entry["instances"] = instances_to_records(instances, self.thing_to_dataset)
        self.kinds.update(k for k in ("instances", "sem_seg", "panoptic") if k in entry)
        with open(self.journal_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(key)

    def _write_panoptic(self, stem, panoptic_seg, segments_info):
        ids = panoptic_seg.to("cpu").numpy().astype(np.int64)
        path = os.path.join(self.output_dir, "panoptic", stem + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # segment 0 is "unlabelled" in Detectron2, and 0 is VOID in a COCO panoptic PNG: the same
        with atomic_path(path) as tmp:
            Image.fromarray(id2rgb(ids)).save(tmp, format="PNG")
        info = []
        areas = np.bincount(ids.ravel(), minlength=max((s["id"] for s in segments_info), default=0) + 1)
        for s in segments_info:
            mask = ids == s["id"]
            if not areas[s["id"]]:
                continue
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            cls = int(s["category_id"])
            mapping = self.thing_to_dataset if s.get("isthing", True) else self.stuff_to_dataset
            seg = {"id": int(s["id"]), "category_id": int(mapping.get(cls, cls + 1)), "iscrowd": 0,
                   "area": int(areas[s["id"]]),
                   "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]}
            if "score" in s:
                seg["score"] = float(s["score"])
            info.append(seg)
        return {"file_name": stem + ".png", "segments_info": info}

    def finish(self):
        """Assemble the JSON files from the journal (streamed; each file atomic). Returns their paths and the PNG
        folders."""
        written = []
        if "instances" in self.kinds:
            written += [self._write_results(), self._write_annotations()]
        if "panoptic" in self.kinds:
            written += [self._write_panoptic_json(), os.path.join(self.output_dir, "panoptic")]
        if "sem_seg" in self.kinds:
            written.append(os.path.join(self.output_dir, "sem_seg"))
        return written

    def _image(self, entry):
        return {"id": entry["id"], "file_name": entry["file_name"], "height": entry["height"], "width": entry["width"]}

    def _write_list(self, f, items):
        f.write("[")
        for n, item in enumerate(items):
            f.write(("," if n else "") + json.dumps(item))
        f.write("]")

    def _write_results(self):
        path = os.path.join(self.output_dir, "predictions.json")
        with atomic_open(path) as f:
            self._write_list(f, ({"image_id": e["id"], **r} for e in self._entries() for r in e.get("instances", [])))
        return path

    def _write_annotations(self):
        path = os.path.join(self.output_dir, "annotations.json")

        def annotations():
            n = 0
            for e in self._entries():
                for r in e.get("instances", []):
                    n += 1
                    yield {"id": n, "image_id": e["id"], "iscrowd": 0, **r}

        with atomic_open(path) as f:
            f.write('{"info": {"description": "predictions of focalnet_det tools/predict.py"}, "images": ')
            self._write_list(f, (self._image(e) for e in self._entries()))
            f.write(', "annotations": ')
            self._write_list(f, annotations())
            f.write(', "categories": ' + json.dumps(categories(self.metadata)) + "}")
        return path

    def _write_panoptic_json(self):
        path = os.path.join(self.output_dir, "panoptic.json")
        with atomic_open(path) as f:
            f.write('{"info": {"description": "predictions of focalnet_det tools/predict.py"}, "images": ')
            self._write_list(f, (self._image(e) for e in self._entries() if "panoptic" in e))
            f.write(', "annotations": ')
            self._write_list(f, ({"image_id": e["id"], **e["panoptic"]} for e in self._entries() if "panoptic" in e))
            f.write(', "categories": ' + json.dumps(categories(self.metadata, panoptic=True)) + "}")
        return path
