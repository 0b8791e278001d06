#!/usr/bin/env python
"""Training curves as pictures: losses, learning rate and every evaluation metric of a run, over iterations.

    python tools/plot_metrics.py OUTPUT_DIR [--output DIR]

Reads OUTPUT_DIR/metrics.json (Detectron2's JSONWriter: one JSON object per line) and writes into --output
(default OUTPUT_DIR):
  losses.png            total_loss and each loss term
  lr.png                the learning rate
  eval_<task>.png       each evaluation metric of a task (bbox, segm, sem_seg, panoptic_seg, ...), one panel each;
                        per-class metrics (AP-<class>, IoU-<class> ...) in eval_<task>_per_class.png
Training statistics that are not evaluation results (rpn/*, roi_head/*, fast_rcnn/*, mask_rcnn/*, timings) are left
out. A resumed run's repeated iterations keep their last values. Exit status 2 when metrics.json is missing or holds
no usable line.
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict

from focalnet_det.errors import UserError, run_tool

TRAINING_STATS = {"rpn", "roi_head", "fast_rcnn", "mask_rcnn"}  # Detectron2's per-iteration statistics, not evaluation
NOT_PLOTTED = {"iteration", "lr", "time", "data_time", "eta_seconds", "rank_data_time"}
# per-class metric kinds of Detectron2's evaluators ("<kind>-<class>"); a kind may itself hold a "-"
PER_CLASS_KINDS = ("min(IoU, B-Iou)", "BoundaryIoU", "IoU", "ACC", "AP")


def split_per_class(name):
    """"IoU-circle" -> ("IoU", "circle"); "min(IoU, B-Iou)-wall-other" -> ("min(IoU, B-Iou)", "wall-other")."""
    for kind in PER_CLASS_KINDS:
        if name.startswith(kind + "-"):
            return kind, name[len(kind) + 1 :]
    return tuple(name.split("-", 1))


def read_metrics(path):
    """{iteration: {key: value}} from a metrics.json; unparsable lines (a run killed mid-write) are reported and
    skipped."""
    if not os.path.isfile(path):
        raise UserError(f"no metrics.json at {path} (train with tools/train_net.py, which writes it into OUTPUT_DIR)")
    rows = defaultdict(dict)
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                iteration = int(record["iteration"])
            except (ValueError, KeyError, TypeError):
                print(f"plot_metrics.py: skipped line {number} of {path}: not a metrics record", file=sys.stderr)
                continue
            rows[iteration].update(
                {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            )
    if not rows:
        raise UserError(f"{path} holds no metrics")
    return dict(sorted(rows.items()))


def series(rows, key):
    points = [(it, r[key]) for it, r in rows.items() if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def group_keys(rows):
    """(loss keys, {task: [summary metric keys]}, {task: [per-class metric keys]})."""
    keys = sorted({k for r in rows.values() for k in r})
    losses = [k for k in keys if "loss" in k and "/" not in k]
    losses.sort(key=lambda k: (k != "total_loss", k))
    summary, per_class = defaultdict(list), defaultdict(list)
    for k in keys:
        if "/" not in k or k in NOT_PLOTTED:
            continue
        task, name = k.split("/", 1)
        if task in TRAINING_STATS:
            continue
        (per_class if "-" in name else summary)[task].append(k)
    return losses, dict(summary), dict(per_class)


def _plot(ax, rows, key, label=None, **kw):
    x, y = series(rows, key)
    ax.plot(x, y, marker="o" if len(x) < 20 else None, markersize=3, label=label or key, **kw)


def _save(fig, path, written):
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    written.append(path)


def plot_metrics(output_dir, save_dir=None):
    """Write the pictures of ``output_dir/metrics.json`` into ``save_dir`` (default ``output_dir``); their paths."""
    from matplotlib.figure import Figure

    rows = read_metrics(os.path.join(output_dir, "metrics.json"))
    save_dir = save_dir or output_dir
    os.makedirs(save_dir, exist_ok=True)
    losses, summary, per_class = group_keys(rows)
    written = []

    if losses:
        terms = [k for k in losses if k != "total_loss"]
        panels = (["total_loss"] if "total_loss" in losses else []) + (["terms"] if terms else [])
        fig = Figure(figsize=(5 * len(panels), 3.6))
        for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
            for k in [panel] if panel == "total_loss" else terms:
                _plot(ax, rows, k, linewidth=1.2)
            ax.set_title("total loss" if panel == "total_loss" else "loss terms", fontsize=9)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            if panel == "terms":
                ax.legend(fontsize=6, ncol=max(1, len(terms) // 12))
        _save(fig, os.path.join(save_dir, "losses.png"), written)

    if any("lr" in r for r in rows.values()):
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        _plot(ax, rows, "lr")
        ax.set_title("learning rate", fontsize=9)
        ax.set_xlabel("iteration")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.grid(alpha=0.3)
        _save(fig, os.path.join(save_dir, "lr.png"), written)

    for task, keys in summary.items():
        cols = min(4, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig = Figure(figsize=(3.2 * cols, 2.6 * nrows))
        axes = fig.subplots(nrows, cols, squeeze=False).ravel()
        for ax in axes[len(keys):]:
            ax.axis("off")
        for ax, k in zip(axes, keys):
            _plot(ax, rows, k)
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("iteration", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.suptitle(f"evaluation: {task}", fontsize=10)
        _save(fig, os.path.join(save_dir, f"eval_{_safe(task)}.png"), written)

    for task, keys in per_class.items():
        kind_of = {k: split_per_class(k.split("/", 1)[1]) for k in keys}
        kinds = sorted({kind for kind, _ in kind_of.values()})
        fig = Figure(figsize=(5.5 * len(kinds), 3.8))
        for ax, kind in zip(fig.subplots(1, len(kinds), squeeze=False)[0], kinds):
            mine = [k for k in keys if kind_of[k][0] == kind]
            for k in mine:
                _plot(ax, rows, k, label=kind_of[k][1], linewidth=0.8)
            ax.set_title(f"{task} {kind} per class", fontsize=9)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=5, ncol=max(1, len(mine) // 15))
        _save(fig, os.path.join(save_dir, f"eval_{_safe(task)}_per_class.png"), written)
    return written


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="a training run's OUTPUT_DIR (holding metrics.json)")
    p.add_argument("--output", metavar="DIR", help="folder for the pictures (default: OUTPUT_DIR)")
    args = p.parse_args(argv)
    written = plot_metrics(args.output_dir, args.output)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_tool(main)
