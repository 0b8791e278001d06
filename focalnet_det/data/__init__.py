"""Dataset registration. Importing this module registers the built-in datasets (and writes nothing)."""
from .tiny_shapes import (  # noqa: F401
    TINY_SHAPES_CLASSES,
    ensure_tiny_shapes,
    generate_tiny_shapes,
    register_tiny_shapes,
    tiny_shapes_root,
)

register_tiny_shapes()
