#!/usr/bin/env python
"""Write the built-in tiny shapes dataset (COCO instance format) to a folder.

    python datasets/generate_tiny_shapes.py --output datasets/tiny_shapes --num-train 300 --num-val 50

Without --output it fills the cache that the registered ``tiny_shapes_train/val`` datasets use
(``$FOCALNET_DET_CACHE``, default ``~/.cache/focalnet_det``), with the registered parameters.
"""
import argparse
import sys
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")  # raised by Detectron2's import

from focalnet_det.data.datasets.tiny_shapes import TINY_SHAPES_DEFAULTS, ensure_tiny_shapes, generate_tiny_shapes  # noqa: E402
from focalnet_det.errors import UserError  # noqa: E402


def main(argv=None):
    d = TINY_SHAPES_DEFAULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", help="output folder (default: the registered datasets' cache folder)")
    p.add_argument("--num-train", type=int, default=d["num_train"], help="training images (default %(default)s)")
    p.add_argument("--num-val", type=int, default=d["num_val"], help="validation images (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (default %(default)s)")
    p.add_argument("--image-size", type=int, default=d["image_size"], help="square image side in px (default %(default)s)")
    p.add_argument("--max-objects", type=int, default=d["max_objects"], help="shapes per image, at most (default %(default)s)")
    args = p.parse_args(argv)
    try:
        if args.output is None:
            chosen = dict(num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                          image_size=args.image_size, max_objects=args.max_objects)
            if any(d[k] != v for k, v in chosen.items()):
                raise UserError("the cache holds the registered parameters only: give --output to change them")
            root = ensure_tiny_shapes()
        else:
            root = generate_tiny_shapes(
                args.output, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                image_size=args.image_size, max_objects=args.max_objects,
                min_size=min(d["min_size"], args.image_size), max_size=min(d["max_size"], args.image_size),
            )
    except UserError as e:
        print(f"generate_tiny_shapes.py: error: {e}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
