"""Files that appear whole or not at all: every file a tool writes goes through here.

``atomic_path(path)`` yields a temporary name beside ``path`` for any writer (``torch.save``, ``cv2.imwrite``,
``torch.onnx.export``, ``json.dump`` through ``open``); the file is renamed to ``path`` only when the block ends
without an exception, so a killed or failed write leaves the previous file (or none), never half of one.
"""
import contextlib
import os
import tempfile

__all__ = ["atomic_path", "atomic_open"]


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path in ``path``'s folder (same extension: writers that look at it still work), renamed to
    ``path`` when the block completes; removed when it raises."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make every written file private
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """``open(path, mode)`` whose content appears under ``path`` only once written completely (and fsynced)."""
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
