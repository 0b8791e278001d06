"""Tiled inference: a large image cut into overlapping tiles, each predicted as an image of its own, the results
merged in full-image coordinates.

- Instances: every tile's boxes and masks are shifted to the image; masks are kept as crops of their box
  (:class:`CroppedMasks`), so memory grows with the objects, not with the image. Two detections of one class are the
  same object when, inside the region both their tiles saw, their masks (boxes, without masks) overlap by IoU > 0.5.
  A detection touching a tile edge inside the image is *cut*: a whole (uncut) one wins over cut ones, two cut parts
  of an object larger than the overlap are joined (mask and box union, the higher score), else the higher score wins.
- Semantic: the logits (or probabilities) of overlapping tiles are averaged. Tiles run row by row and only the rows
  still covered by a later tile are held (:class:`SemanticBand`): classes x tile height x image width, never
  classes x the whole image. The result is a label map (``sem_seg_labels``).
- Panoptic: built from the merged result, as Mask2Former builds it from one image: things (merged instances with a
  score above ``object_mask_threshold``, best first, each keeping the pixels no better thing took if that is at least
  ``overlap_threshold`` of its mask) over the stuff labels of the averaged semantic scores.
"""
import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.structures import Boxes, Instances

__all__ = [
    "tile_windows", "CroppedMasks", "localize_instances", "InstanceMerger", "merge_instances", "SemanticBand",
    "paint_panoptic",
]

DUPLICATE_IOU = 0.5  # IoU, inside the region two tiles share, above which two detections are one object
EDGE_MARGIN = 2  # px: a detection this close to a tile edge inside the image is cut by it


def tile_windows(height, width, size, overlap):
    """Row-major ``(x0, y0, x1, y1)`` tiles of ``size`` px covering the image, overlapping by at least ``overlap``
    (a fraction of ``size``); the last tile of a row / column is shifted back to end at the image's edge. An image
    smaller than a tile is one tile."""
    if size <= 0:
        raise ValueError(f"TEST.TILE.SIZE must be > 0, got {size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"TEST.TILE.OVERLAP is a fraction of the tile in [0, 1), got {overlap}")
    stride = max(1, int(size * (1 - overlap)))

    def starts(length):
        if length <= size:
            return [0]
        s = list(range(0, length - size, stride))
        return s + [length - size]

    return [(x, y, min(x + size, width), min(y + size, height)) for y in starts(height) for x in starts(width)]


class CroppedMasks:
    """Binary masks of one image, each stored as a crop (bool numpy array) at ``(x, y)``: memory follows the objects,
    not the image. Indexable like a tensor field of ``Instances`` (int, slice, bool or index tensor / list)."""

    def __init__(self, crops, offsets, image_size):
        self.crops, self.offsets, self.image_size = list(crops), [tuple(map(int, o)) for o in offsets], image_size

    def __len__(self):
        return len(self.crops)

    def __getitem__(self, item):
        if isinstance(item, int):
            item = [item]
        idx = torch.arange(len(self))[item].reshape(-1).tolist()
        return CroppedMasks([self.crops[i] for i in idx], [self.offsets[i] for i in idx], self.image_size)

    @staticmethod
    def cat(masks_list):
        return CroppedMasks([c for m in masks_list for c in m.crops], [o for m in masks_list for o in m.offsets],
                            masks_list[0].image_size)

    def paste(self, i):
        """Mask ``i`` as a full-image (H, W) bool array."""
        full = np.zeros(self.image_size, bool)
        (x, y), crop = self.offsets[i], self.crops[i]
        full[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
        return full

    def to_tensor(self):
        """All masks as one (N, H, W) bool tensor (for drawing a few; costly for many on a large image)."""
        return torch.from_numpy(np.stack([self.paste(i) for i in range(len(self))])) if len(self) else \
            torch.zeros((0, *self.image_size), dtype=torch.bool)

    def area(self, i):
        return int(self.crops[i].sum())

    def bbox(self, i):
        """XYXY box of mask ``i`` (zeros when empty)."""
        crop = self.crops[i]
        rows, cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
        if not len(rows):
            return [0.0, 0.0, 0.0, 0.0]
        x, y = self.offsets[i]
        return [float(x + cols[0]), float(y + rows[0]), float(x + cols[-1] + 1), float(y + rows[-1] + 1)]

    def to_rle(self, i):
        """Compressed COCO RLE of mask ``i`` in the full image, built from the crop: the image is column-major runs,
        so only the crop's columns, padded to the image height, are ever materialised."""
        H, W = self.image_size
        (x, y), crop = self.offsets[i], self.crops[i]
        cols = np.zeros((H, crop.shape[1]), np.uint8)
        cols[y : y + crop.shape[0]] = crop
        flat = np.concatenate([[0], cols.ravel(order="F"), [0]])
        change = np.flatnonzero(flat[1:] != flat[:-1])  # run boundaries, alternating 0->1, 1->0
        if not len(change):
            counts = [H * W]
        else:
            start = x * H  # pixels before the crop's first column
            ones_begin, ones_end = change[0::2] + start, change[1::2] + start
            counts, prev = [], 0
            for b, e in zip(ones_begin.tolist(), ones_end.tolist()):
                counts += [b - prev, e - b]
                prev = e
            counts.append(H * W - prev)
        return mask_util.frPyObjects({"counts": counts, "size": [H, W]}, H, W)

    def intersection(self, i, other, j, region=None):
        """Pixels set in both mask ``i`` and ``other``'s mask ``j``, optionally only inside ``region`` (x0, y0, x1,
        y1); also returns the two masks' areas inside that region."""
        boxes = []
        for m, k in ((self, i), (other, j)):
            (x, y), c = m.offsets[k], m.crops[k]
            boxes.append((x, y, x + c.shape[1], y + c.shape[0]))
        r = region or (0, 0, self.image_size[1], self.image_size[0])

        def part(m, k, box):
            (x, y), c = m.offsets[k], m.crops[k]
            return c[max(box[1] - y, 0) : max(box[3] - y, 0), max(box[0] - x, 0) : max(box[2] - x, 0)]

        def inside(b):  # a mask's box clipped to the region
            return max(r[0], b[0]), max(r[1], b[1]), min(r[2], b[2]), min(r[3], b[3])

        a_in, b_in = part(self, i, inside(boxes[0])), part(other, j, inside(boxes[1]))
        common = (max(r[0], boxes[0][0], boxes[1][0]), max(r[1], boxes[0][1], boxes[1][1]),
                  min(r[2], boxes[0][2], boxes[1][2]), min(r[3], boxes[0][3], boxes[1][3]))
        inter = 0
        if common[2] > common[0] and common[3] > common[1]:
            inter = int((part(self, i, common) & part(other, j, common)).sum())
        return inter, int(a_in.sum()), int(b_in.sum())

    def union(self, i, other, j):
        """A new one-mask CroppedMasks: mask ``i`` or ``other``'s mask ``j``."""
        (xa, ya), a = self.offsets[i], self.crops[i]
        (xb, yb), b = other.offsets[j], other.crops[j]
        x0, y0 = min(xa, xb), min(ya, yb)
        x1, y1 = max(xa + a.shape[1], xb + b.shape[1]), max(ya + a.shape[0], yb + b.shape[0])
        out = np.zeros((y1 - y0, x1 - x0), bool)
        out[ya - y0 : ya - y0 + a.shape[0], xa - x0 : xa - x0 + a.shape[1]] |= a
        out[yb - y0 : yb - y0 + b.shape[0], xb - x0 : xb - x0 + b.shape[1]] |= b
        return CroppedMasks([out], [(x0, y0)], self.image_size)


def localize_instances(instances, window, image_size):
    """One tile's ``Instances`` (tile coordinates, on the CPU) -> the same in image coordinates, masks as
    :class:`CroppedMasks` of their extent; boxes of masks without boxes (Mask2Former's are zeros) from the masks.
    Adds ``tile_windows`` ((N, 4) the tile each came from) and ``cut`` (touching a tile edge inside the image)."""
    x0, y0, x1, y1 = window
    H, W = image_size
    n = len(instances)
    out = Instances(image_size)
    out.scores, out.pred_classes = instances.scores.float(), instances.pred_classes
    boxes = instances.pred_boxes.tensor.float().clone() if instances.has("pred_boxes") else torch.zeros(n, 4)
    if instances.has("pred_masks"):
        masks = instances.pred_masks.bool().numpy()
        crops, offsets = [], []
        for k in range(n):
            rows, cols = np.flatnonzero(masks[k].any(1)), np.flatnonzero(masks[k].any(0))
            if len(rows):
                crops.append(masks[k][rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy())  # not a view of the tile
                offsets.append((x0 + cols[0], y0 + rows[0]))
            else:
                crops.append(np.zeros((0, 0), bool))
                offsets.append((x0, y0))
        out.pred_masks = CroppedMasks(crops, offsets, image_size)
        empty_boxes = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        for k in torch.nonzero(empty_boxes).flatten().tolist():
            box = out.pred_masks.bbox(k)
            boxes[k] = torch.tensor([box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0])
    boxes += torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    out.pred_boxes = Boxes(boxes)
    out.tile_windows = torch.tensor([window] * n, dtype=torch.int64).reshape(n, 4)
    m = EDGE_MARGIN
    out.cut = (((boxes[:, 0] <= x0 + m) & (x0 > 0)) | ((boxes[:, 1] <= y0 + m) & (y0 > 0))
               | ((boxes[:, 2] >= x1 - m) & (x1 < W)) | ((boxes[:, 3] >= y1 - m) & (y1 < H)))
    return out


def _same_object(a, i, b, j):
    """IoU of detection ``i`` of ``a`` and ``j`` of ``b`` inside the region both their tiles saw."""
    wa, wb = a.tile_windows[i].tolist(), b.tile_windows[j].tolist()
    region = (max(wa[0], wb[0]), max(wa[1], wb[1]), min(wa[2], wb[2]), min(wa[3], wb[3]))
    if region[2] <= region[0] or region[3] <= region[1]:
        return 0.0
    if a.has("pred_masks"):
        inter, area_a, area_b = a.pred_masks.intersection(i, b.pred_masks, j, region)
    else:
        ba, bb = a.pred_boxes.tensor[i].clone(), b.pred_boxes.tensor[j].clone()
        for box in (ba, bb):  # clipped to the shared region
            box[0::2] = box[0::2].clamp(region[0], region[2])
            box[1::2] = box[1::2].clamp(region[1], region[3])
        lt, rb = torch.maximum(ba[:2], bb[:2]), torch.minimum(ba[2:], bb[2:])
        inter = float((rb - lt).clamp(min=0).prod())
        area_a, area_b = float((ba[2:] - ba[:2]).prod()), float((bb[2:] - bb[:2]).prod())
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _greedy_merge(all_):
    """The detections of ``all_`` (localized, concatenated) that are not duplicates, with cut parts joined."""
    boxes, classes = all_.pred_boxes.tensor, all_.pred_classes
    order = sorted(range(len(all_)), key=lambda k: (bool(all_.cut[k]), -float(all_.scores[k])))
    kept = []  # one-element Instances, merged in place
    kept_boxes, kept_classes = torch.zeros(len(all_), 4), torch.zeros(len(all_), dtype=classes.dtype)
    for k in order:
        cand, kb = all_[[k]], kept_boxes[: len(kept)]
        # only kept detections of the class whose boxes meet this one's are compared exactly
        meet = (torch.minimum(kb[:, 2], boxes[k, 2]) >= torch.maximum(kb[:, 0], boxes[k, 0])) & \
               (torch.minimum(kb[:, 3], boxes[k, 3]) >= torch.maximum(kb[:, 1], boxes[k, 1])) & \
               (kept_classes[: len(kept)] == classes[k])
        for n in torch.nonzero(meet).flatten().tolist():
            obj = kept[n]
            if _same_object(obj, 0, cand, 0) <= DUPLICATE_IOU:
                continue
            if bool(obj.cut[0]) and bool(cand.cut[0]):  # two parts of an object larger than the overlap
                kept[n] = _join(obj, cand)
                kept_boxes[n] = kept[n].pred_boxes.tensor[0]
            break
        else:
            kept_boxes[len(kept)], kept_classes[len(kept)] = boxes[k], classes[k]
            kept.append(cand)
    return Instances.cat(kept)  # CroppedMasks has its own cat


class InstanceMerger:
    """Merges the localized ``Instances`` of tiles as they come (see the module docstring), keeping at most
    ``max_detections`` (the best scores) between tiles: memory follows the detections kept, not the tiles seen."""

    def __init__(self, image_size, max_detections=100):
        self.image_size, self.max_detections, self.kept = image_size, max_detections, None

    def add(self, localized):
        if not len(localized):
            return
        merged = _greedy_merge(localized if self.kept is None else Instances.cat([self.kept, localized]))
        self.kept = merged[torch.argsort(merged.scores, descending=True)[: self.max_detections]]

    def result(self):
        """One ``Instances`` of the image, best score first, without the bookkeeping fields."""
        if self.kept is None:
            return Instances(self.image_size, pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                             pred_classes=torch.zeros(0, dtype=torch.int64))
        k = self.kept
        out = Instances(self.image_size, pred_boxes=k.pred_boxes, scores=k.scores, pred_classes=k.pred_classes)
        if k.has("pred_masks"):
            out.pred_masks = k.pred_masks
        return out


def merge_instances(parts, image_size, max_detections=100):
    """Merge the localized ``Instances`` of every tile (see the module docstring); returns one ``Instances`` of the
    image, best score first, at most ``max_detections``, without the bookkeeping fields."""
    merger = InstanceMerger(image_size, max_detections)
    for part in parts:
        merger.add(part)
    return merger.result()


def _join(a, b):
    """One detection from two parts of an object: box and mask union, the higher score, both tiles' extent."""
    ba, bb = a.pred_boxes.tensor[0], b.pred_boxes.tensor[0]
    box = torch.cat([torch.minimum(ba[:2], bb[:2]), torch.maximum(ba[2:], bb[2:])])[None]
    wa, wb = a.tile_windows[0], b.tile_windows[0]
    window = torch.cat([torch.minimum(wa[:2], wb[:2]), torch.maximum(wa[2:], wb[2:])])[None]
    out = Instances(a.image_size, pred_boxes=Boxes(box), scores=torch.maximum(a.scores, b.scores),
                    pred_classes=a.pred_classes, tile_windows=window, cut=a.cut)
    if a.has("pred_masks"):
        out.pred_masks = a.pred_masks.union(0, b.pred_masks, 0)
    return out


class SemanticBand:
    """Average per-class scores of overlapping tiles, holding only the rows later tiles still cover.

    ``add(scores, window)`` with (C, h, w) scores of a tile, tiles in row-major order; ``finish()`` returns
    ``{name: (H, W) label map}``, one per entry of ``channel_sets`` ({name: list of class indices or None for all}):
    the argmax over those classes of the averaged scores (e.g. all classes, and the stuff classes for panoptic)."""

    def __init__(self, image_size, channel_sets=None):
        self.H, self.W = image_size
        self.channel_sets = channel_sets or {"all": None}
        self.labels = None
        self.top, self.acc, self.count = 0, None, None

    def _flush(self, upto):
        """Finalise rows [top, upto): argmax of the average, then drop them."""
        n = upto - self.top
        if n <= 0 or self.acc is None:
            return
        mean = self.acc[:, :n] / self.count[:n].clamp(min=1)
        for name, channels in self.channel_sets.items():
            part = mean if channels is None else mean[channels]
            lab = part.argmax(0)
            if channels is not None:
                lab = torch.as_tensor(channels)[lab]
            self.labels[name][self.top : upto] = lab.to(self.labels[name].dtype)
        self.acc, self.count, self.top = self.acc[:, n:], self.count[n:], upto

    def add(self, scores, window):
        x0, y0, x1, y1 = window
        C = scores.shape[0]
        if self.labels is None:
            dtype = torch.uint8 if C <= 256 else torch.int32
            self.labels = {name: torch.zeros((self.H, self.W), dtype=dtype) for name in self.channel_sets}
            self.acc, self.count = torch.zeros((C, 0, self.W)), torch.zeros((0, self.W))
        self._flush(y0)  # rows above this tile are complete (row-major order)
        bottom = self.top + self.acc.shape[1]
        if y1 > bottom:
            grow = y1 - bottom
            self.acc = torch.cat([self.acc, torch.zeros((C, grow, self.W))], 1)
            self.count = torch.cat([self.count, torch.zeros((grow, self.W))], 0)
        self.acc[:, y0 - self.top : y1 - self.top, x0:x1] += scores.float()
        self.count[y0 - self.top : y1 - self.top, x0:x1] += 1

    def finish(self):
        self._flush(self.H)
        return self.labels


def paint_panoptic(instances, stuff_labels, is_thing, object_mask_threshold=0.0, overlap_threshold=0.0):
    """A panoptic segmentation (int32 (H, W) ids, segments_info) from merged thing ``instances`` (CroppedMasks) and a
    ``stuff_labels`` map: things above ``object_mask_threshold``, best first, keep the pixels not yet taken if these
    are at least ``overlap_threshold`` of their mask; every stuff class on the pixels left is one segment."""
    H, W = stuff_labels.shape
    pan = torch.zeros((H, W), dtype=torch.int32)
    segments, next_id = [], 1
    for k in torch.argsort(instances.scores, descending=True).tolist():
        cls, score = int(instances.pred_classes[k]), float(instances.scores[k])
        if score <= object_mask_threshold or not is_thing(cls):
            continue
        (x, y), crop = instances.pred_masks.offsets[k], torch.from_numpy(instances.pred_masks.crops[k])
        if not crop.any():
            continue
        view = pan[y : y + crop.shape[0], x : x + crop.shape[1]]
        free = crop & (view == 0)
        if int(free.sum()) == 0 or int(free.sum()) / int(crop.sum()) < overlap_threshold:
            continue
        view[free] = next_id
        segments.append({"id": next_id, "isthing": True, "category_id": cls, "score": score})
        next_id += 1
    left = pan == 0
    for cls in torch.unique(stuff_labels[left]).tolist():
        if is_thing(int(cls)):
            continue
        pan[left & (stuff_labels == cls)] = next_id
        segments.append({"id": next_id, "isthing": False, "category_id": int(cls)})
        next_id += 1
    return pan, segments
