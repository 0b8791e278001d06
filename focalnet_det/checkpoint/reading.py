"""Reading checkpoint files as data, never as code: the first step of every way a checkpoint is loaded.

A pickle can name any function and ask for it to be called; a checkpoint must not get to. So:

- ``.pth`` / ``.pt`` / ``.bin`` (anything ``torch.load`` reads): ``torch.load(weights_only=True)``, with the short
  list ``ALLOWED`` of what released files hold beside tensors admitted for that call only: DINO's ``args``
  (``argparse.Namespace``) and the numpy scalars, dtypes and arrays of mmcv's ``meta``.
- ``.pkl`` (Detectron2 / Caffe2 model zoo): ``SafeUnpickler``, ``encoding="latin1"``, which admits the same list
  (numpy arrays under both ``numpy.core`` and ``numpy._core``; torch tensors only through torch's own rebuild
  functions, as in ``.pkl`` files this project's converter used to write).
- A torch file with other objects (e.g. a yacs ``CfgNode`` or an mmcv ``Config`` beside ``"model"``) is read
  again with ``SafeUnpickler``, which stands an inert ``Unknown`` in for each object of a class it does not
  admit, never importing or calling that class: the tensors come back, the stand-ins are named in a warning.
  (A legacy torch < 1.6 file with such objects is not salvaged: refused, naming them.)
- A file that would have to *call* something not on the list (``posix.system``, ``builtins.eval``, any
  unknown function or class called) is refused: ``UserError`` naming the file and those names.

Nothing falls back to full unpickling on its own. ``FOCALNET_DET_TRUSTED_FILES`` (paths separated by ``:``)
names the user's own legacy files that may be unpickled fully; the refusal message says so.
"""
import _codecs
import _compat_pickle
import argparse
import collections
import copyreg
import io
import json
import logging
import os
import pickle
import re
import zipfile

import numpy as np
import torch

from ..errors import UserError

__all__ = [
    "ALLOWED",
    "TRUST_ENV",
    "SafeUnpickler",
    "Unknown",
    "read_checkpoint",
    "torch_load",
    "load_pickle",
    "huggingface_weights_file",
    "read_huggingface_folder",
    "describe_keys",
    "first_line",
]

logger = logging.getLogger(__name__)

TRUST_ENV = "FOCALNET_DET_TRUSTED_FILES"

# what a Hugging Face model folder may hold, in order of preference (single files first, then shard indexes)
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def describe_keys(keys, n=5):
    """``'a, b, c, ... (N keys)'``: the first few keys and the count, for error messages."""
    keys = list(keys)
    head = ", ".join(keys[:n])
    return f"{head}{', ...' if len(keys) > n else ''} ({len(keys)} keys)"


def first_line(e):
    return (str(e).strip().splitlines() or [""])[0][:200]


# ------------------------------------------------------------------------------------------------------------------
# what may be named in a checkpoint


def _numpy_core():
    return getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1


def _numpy_allowed():
    """numpy's array, scalar and dtype reconstruction, under the names numpy 1 and numpy 2 write."""
    core = _numpy_core().multiarray
    out = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for spelling in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{spelling}._reconstruct"] = core._reconstruct
        out[f"{spelling}.scalar"] = core.scalar
    for name in dir(getattr(np, "dtypes", None)):  # numpy >= 1.25: type(np.dtype("f8")) is np.dtypes.Float64DType
        if name.endswith("DType"):
            out[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return out


# beyond torch's own weights-only list: what released files hold beside tensors
ALLOWED = {"argparse.Namespace": argparse.Namespace, **_numpy_allowed()}

# SafeUnpickler's callables: torch's own safe rebuild functions and the containers torch admits, plus ALLOWED
_TORCH_NAMES = ("torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch.Size", "torch.device", "collections.OrderedDict", "builtins.set", "builtins.bytearray",
                "builtins.complex", "_codecs.encode")


def _salvage_globals():
    from torch._weights_only_unpickler import _get_allowed_globals

    torch_safe = _get_allowed_globals()
    out = {name: torch_safe[name] for name in _TORCH_NAMES}
    out.update({name: obj for name, obj in torch_safe.items()
                if isinstance(obj, torch.dtype) or re.fullmatch(r"torch\.\w*Storage|torch\.storage\.\w+", name)})
    out.update({"builtins.frozenset": frozenset, "torch.storage._load_from_bytes": _tensor_from_bytes, **ALLOWED})
    return out


def _tensor_from_bytes(data):
    """Stands in for ``torch.storage._load_from_bytes`` (how a plain ``pickle.dump`` stores a tensor's storage; the
    original unpickles those bytes fully): the same bytes read weights-only."""
    with torch.serialization.safe_globals(_torch_safe_globals()):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _torch_safe_globals():
    return [(obj, name) for name, obj in ALLOWED.items()]


# classes that may be created empty (NEWOBJ / copyreg._reconstructor) and then filled
_NEWABLE = (argparse.Namespace, collections.OrderedDict, dict, set)


class Unknown:
    """Stands in for an object of a class the reader does not admit (``name``): it holds what the file gave it
    (``args``, ``state``, ``contents``) and does nothing. Calling it gives another ``Unknown``."""

    def __init__(self, name, args=()):
        self.unknown_name, self.args, self.state, self.contents = name, args, None, {}

    def __call__(self, *args):
        return Unknown(f"{self.unknown_name}(...)", args)

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.contents[key] = value

    def append(self, value):
        self.contents[len(self.contents)] = value

    def extend(self, values):
        for v in values:
            self.append(v)

    def add(self, value):
        self.append(value)

    def __repr__(self):
        return f"<{self.unknown_name}, not read>"


class _UnknownGlobal:
    """A global the file names that is not admitted: never imported, never called."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def _holds_unknown(obj, depth=0):
    if isinstance(obj, (Unknown, _UnknownGlobal)):
        return True
    if depth < 4 and isinstance(obj, (tuple, list, set, frozenset)):
        return any(_holds_unknown(v, depth + 1) for v in obj)
    if depth < 4 and isinstance(obj, dict):
        return any(_holds_unknown(k, depth + 1) or _holds_unknown(v, depth + 1) for k, v in obj.items())
    return False


class SafeUnpickler(pickle._Unpickler):
    """A pickle reader that never calls what it does not know.

    ``find_class`` imports nothing: it returns an admitted object (``allowed``: name -> object) or a stand-in for
    the name. The opcodes that call or build (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ, BUILD) are redefined:

    - calling an admitted function or class runs it, unless its arguments hold a stand-in (then the result is an
      ``Unknown``, and nothing runs);
    - creating an unknown class empty (NEWOBJ, ``copyreg._reconstructor``) gives an ``Unknown`` (``built``);
    - calling an unknown global or an ``Unknown`` gives an ``Unknown`` and records the name in ``called``: what the
      file would have had to run;
    - BUILD (setting an object's state) applies to numpy objects, ``argparse.Namespace`` and stand-ins only.

    ``persistent_load`` gives a torch zip file's storages (``storages``: the open ``zipfile.ZipFile`` and the
    archive's folder name; ``"unread"``: stand-ins).
    """

    def __init__(self, file, allowed=None, storages=None, encoding="latin1"):
        super().__init__(file, encoding=encoding)
        self.allowed = _salvage_globals() if allowed is None else allowed
        self.callables = set(map(id, self.allowed.values()))
        self.called, self.built = set(), set()
        self._storages = storages
        self._made = set()  # ids of the objects this reader created empty (they may then be built)

    def find_class(self, module, name):
        if self.proto < 3 and self.fix_imports:  # names in Python 2 pickles
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if full == "copyreg._reconstructor":
            return copyreg._reconstructor
        if full in self.allowed:
            return self.allowed[full]
        return _UnknownGlobal(full)

    def persistent_load(self, pid):
        if self._storages == "unread":
            return Unknown("storage")
        if self._storages is None or not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        zf, folder = self._storages
        _, storage_type, key, _location, numel = pid
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
        data = zf.read(f"{folder}/data/{key}")
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return torch.storage.TypedStorage(wrap_storage=raw.untyped_storage(), dtype=dtype, _internal=True)

    # ---- the opcodes that call
    def _call(self, func, args):
        if isinstance(func, (_UnknownGlobal, Unknown)):
            name = func.name if isinstance(func, _UnknownGlobal) else func.unknown_name
            self.called.add(name)
            return Unknown(name, args)
        if func is copyreg._reconstructor:  # protocol 0/1 objects: (cls, base, state), then BUILD
            cls = args[0] if args else None
            return self._new(cls, ())
        if id(func) not in self.callables or not callable(func):
            raise pickle.UnpicklingError(f"{func!r} may not be called")
        if _holds_unknown(args):
            return Unknown(f"{getattr(func, '__qualname__', func)}(...)", args)
        if func is _codecs.encode and (len(args) != 2 or str(args[1]).lower().replace("-", "") != "latin1"):
            raise pickle.UnpicklingError("_codecs.encode is read with latin1 only")
        if func in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter):
            hooks = args[5] if func is torch._utils._rebuild_tensor_v2 and len(args) > 5 else (
                args[2] if len(args) > 2 else None)
            if hooks:
                raise pickle.UnpicklingError("a tensor with backward hooks")
        return func(*args)

    def _new(self, cls, args):
        if isinstance(cls, _UnknownGlobal):
            self.built.add(cls.name)
            return Unknown(cls.name, args)
        if not (isinstance(cls, type) and cls in _NEWABLE) or args:
            raise pickle.UnpicklingError(f"{cls!r} may not be created here")
        obj = cls.__new__(cls)
        self._made.add(id(obj))
        return obj

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args if not kwargs else (args, kwargs)))

    def load_inst(self):
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        self.append(self._call(self.find_class(module, name), tuple(self.pop_mark())))

    def load_obj(self):
        args = self.pop_mark()
        cls = args.pop(0)
        self.append(self._call(cls, tuple(args)))

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Unknown):
            inst.__setstate__(state)
        elif isinstance(inst, (np.ndarray, np.dtype, np.generic)) and not _holds_unknown(state):
            inst.__setstate__(state)
        elif id(inst) in self._made and isinstance(inst, argparse.Namespace) and isinstance(state, dict) \
                and all(isinstance(k, str) for k in state):
            inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"cannot set the state of {type(inst).__name__} here")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.INST[0]] = load_inst
    dispatch[pickle.OBJ[0]] = load_obj
    dispatch[pickle.BUILD[0]] = load_build


# ------------------------------------------------------------------------------------------------------------------
# reading


def _trusted(path):
    listed = [p for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p]
    return os.path.realpath(path) in {os.path.realpath(p) for p in listed}


def _refuse(path, called):
    names = ", ".join(sorted(called))
    return UserError(f"refusing to read {path}: unpickling it would run {names} (a checkpoint holds data, not "
                     f"code). If it is your own file and you trust it, name it in {TRUST_ENV}={path} to unpickle "
                     f"it fully")


def _salvaged(path, unpickler, obj):
    """``obj`` read by ``unpickler``: refused if the file asked for a call, else returned, stand-ins named."""
    if unpickler.called:
        raise _refuse(path, unpickler.called)
    if unpickler.built:
        logger.warning(f"{path}: entries of class {', '.join(sorted(unpickler.built))} were not read (a checkpoint "
                       f"reader admits tensors, numbers, strings and containers; nothing in them was run)")
    return obj


def load_pickle(path):
    """A Detectron2 / Caffe2 ``.pkl`` file, read with ``SafeUnpickler`` (see the module docstring)."""
    if _trusted(path):
        logger.warning(f"{path} is named in {TRUST_ENV}: unpickling it fully")
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    with open(path, "rb") as f:
        unpickler = SafeUnpickler(f)
        try:
            obj = unpickler.load()
        except Exception as e:  # noqa: BLE001 (whatever stopped it, name what it asked to run)
            if unpickler.called:
                raise _refuse(path, unpickler.called) from None
            raise UserError(f"cannot read {path} safely: {type(e).__name__}: {first_line(e)}") from None
    return _salvaged(path, unpickler, obj)


def _legacy_names(path):
    """(called, built) names of a legacy torch file's main pickle (after its magic number, protocol and system
    info), read with ``SafeUnpickler`` and its storages left unread; empty if it cannot be read at all."""
    unpickler = None
    try:
        with open(path, "rb") as f:
            for _ in range(3):
                SafeUnpickler(f).load()
            unpickler = SafeUnpickler(f, storages="unread")
            unpickler.load()
    except Exception:  # noqa: BLE001 (only the names matter here)
        pass
    return (unpickler.called, unpickler.built) if unpickler is not None else (set(), set())


def _salvage_torch_file(path, error):
    """A torch zip file that ``torch.load(weights_only=True)`` refused, read with ``SafeUnpickler``."""
    if not zipfile.is_zipfile(path):  # a legacy torch file (torch < 1.6), or not a torch file at all
        called, built = _legacy_names(path)
        if called:
            raise _refuse(path, called) from None
        if built:
            raise UserError(f"cannot read {path} safely: a legacy (torch < 1.6) file holding objects of "
                            f"{', '.join(sorted(built))}, which only full unpickling reads; if it is your own file "
                            f"and you trust it, name it in {TRUST_ENV}={path}") from None
        raise error
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise UserError(f"cannot read {path}: a zip file without data.pkl (not a torch checkpoint)")
        folder = pkl.split("/", 1)[0]
        byteorder = f"{folder}/byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() not in (b"", b"little"):
            raise UserError(f"cannot read {path} safely: a big-endian file")
        unpickler = SafeUnpickler(io.BytesIO(zf.read(pkl)), storages=(zf, folder))
        try:
            obj = unpickler.load()
        except Exception as e:  # noqa: BLE001 (whatever stopped it, name what it asked to run)
            called = unpickler.called or re.findall(r"GLOBAL ([\w.]+)", str(error))
            if called:
                raise _refuse(path, called) from None
            raise UserError(f"cannot read {path} safely: {type(e).__name__}: {first_line(e)}") from None
    return _salvaged(path, unpickler, obj)


def torch_load(path):
    """``torch.load`` on CPU, weights-only with ``ALLOWED`` admitted; a file with other objects is read with
    ``SafeUnpickler`` or refused (module docstring)."""
    path = os.fspath(path)
    if _trusted(path):
        logger.warning(f"{path} is named in {TRUST_ENV}: unpickling it fully")
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        return _salvage_torch_file(path, e)


def read_checkpoint(path):
    """Read a local checkpoint file: ``.safetensors``, Detectron2 ``.pkl`` or anything ``torch.load`` reads; or a
    Hugging Face model folder or shard index (shards merged). Nothing in the file is run (module docstring).

    Raises UserError if the file is missing, cannot be read, or would have to run code to be read.
    """
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(".index.json"):
        return read_huggingface_folder(path)
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        if path.endswith(".pkl"):
            return load_pickle(path)
        return torch_load(path)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read weights file {path}: {type(e).__name__}: {first_line(e)}") from e


def huggingface_weights_file(folder):
    """The weights file of a Hugging Face model folder (see ``WEIGHT_FILES``); UserError if it has none."""
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise UserError(f"no weights in folder {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def read_huggingface_folder(path):
    """The state dict of a Hugging Face model folder, or of a shard index (``*.index.json``), shards merged."""
    path = huggingface_weights_file(path) if os.path.isdir(path) else path
    if not path.endswith(".index.json"):
        return read_checkpoint(path)
    try:
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"cannot read shard index {path}: {type(e).__name__}: {e}") from None
    state_dict = {}
    for shard in shards:
        state_dict.update(read_checkpoint(os.path.join(os.path.dirname(path), shard)))
    return state_dict
