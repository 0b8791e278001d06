"""No checkpoint runs code when it is read, by any route (focalnet_det/checkpoint/reading.py); honest files with
extra objects still give their weights; the converter writes whole files; the checkpoint package has no import
cycle and states the released variants once."""
import argparse
import ast
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from yacs.config import CfgNode

from focalnet_det.checkpoint import FocalNetCheckpointer, read_checkpoint
from focalnet_det.checkpoint.reading import TRUST_ENV, Unknown
from focalnet_det.errors import UserError
from focalnet_det.modeling.backbone.focalnet import FocalNet

from test_checkpoint import SMALL, Wrapper, convert_checkpoint, randomize
from test_download import server  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = "configs/Tiny/mask_rcnn_focalnet_tiny_shapes.yaml"
TINY_MODEL = ["MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FOCALNET.DEPTHS", "[1,1,2,1]", "MODEL.DEVICE", "cpu"]


class Payload:
    """What an attacker puts in a pickle: unpickling it calls ``os.system`` (``posix.system``), which creates
    ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


class EvalPayload(Payload):
    def __reduce__(self):
        return eval, (f"open({self.marker!r}, 'w')",)


def official_sd(seed=0):
    """An official-layout state dict of a tiny random FocalNet (as a classification file holds it), and the net."""
    net = randomize(FocalNet(focal_windows=(9,) * 4, **SMALL), seed)
    return {k: v for k, v in net.state_dict().items() if not k.startswith("norm")}, net


def write_evil_pth(path, marker, where="beside", payload=Payload):
    sd, _ = official_sd()
    if where == "in_config":  # a yacs config beside the weights, the payload inside (set as dict items: yacs
        cfg = CfgNode({"SOLVER": CfgNode({"BASE_LR": 0.1})})  # would deep-copy, i.e. run, it when given it)
        cfg["SOLVER"]["BASE_LR"] = payload(marker)
        obj = {"model": sd, "config": cfg}
    else:
        obj = {"top": lambda: payload(marker),
               "beside": lambda: {"model": sd, "optimizer": {"state": payload(marker)}},
               "legacy": lambda: {"model": sd, "optimizer": {"state": payload(marker)}},
               "in_model": lambda: {"model": {**sd, "extra": payload(marker)}}}[where]()
    torch.save(obj, path, _use_new_zipfile_serialization=where != "legacy")  # legacy: torch < 1.6's format
    assert not Path(marker).exists()
    return str(path)


def write_evil_pkl(path, marker):
    sd, _ = official_sd()
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone." + k: v.numpy() for k, v in sd.items()}, "__author__": "x",
                     "extra": Payload(marker)}, f)
    return str(path)


def model():
    return Wrapper(FocalNet(focal_windows=(9,) * 4, **SMALL)).eval()


def assert_refused(text, path, *names):
    assert "refusing to read" in text and str(path) in text and TRUST_ENV in text, text
    for name in names:
        assert name in text, text


# ----------------------------------------------------------------------------------------------------------
# the reader


@pytest.mark.parametrize("where", ["top", "beside", "legacy", "in_model", "in_config"])
@pytest.mark.parametrize("payload, name", [(Payload, "posix.system"), (EvalPayload, "builtins.eval")])
def test_pth_payload_is_refused_and_never_runs(tmp_path, where, payload, name):
    marker = tmp_path / "marker"
    path = write_evil_pth(tmp_path / "evil.pth", marker, where, payload)
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    assert_refused(str(info.value), path, name)
    with pytest.raises(UserError, match="refusing to read"):
        FocalNetCheckpointer(model()).load(path)
    assert not marker.exists()


def test_pkl_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = write_evil_pkl(tmp_path / "evil.pkl", marker)
    for load in (read_checkpoint, FocalNetCheckpointer(model()).load):
        with pytest.raises(UserError) as info:
            load(path)
        assert_refused(str(info.value), path, "posix.system")
    assert not marker.exists()


def test_trusted_file_opt_in_is_by_name_only(tmp_path, monkeypatch):
    """The opt-in unpickles fully the file it names, and no other."""
    marker, other_marker = tmp_path / "marker", tmp_path / "other"
    path = write_evil_pth(tmp_path / "mine.pth", marker, "beside")
    other = write_evil_pth(tmp_path / "other.pth", other_marker, "beside")
    monkeypatch.setenv(TRUST_ENV, path)
    with pytest.raises(UserError, match="refusing"):
        read_checkpoint(other)
    assert not other_marker.exists()
    assert set(read_checkpoint(path)) == {"model", "optimizer"}
    assert marker.exists()  # the user asked for it


def test_unknown_classes_become_placeholders_and_weights_load(tmp_path, caplog):
    """A yacs CfgNode (and an mmcv-like config object) beside the weights: the tensors load exactly, the entries
    become inert placeholders, named in a warning; nothing of them is imported or called."""
    sd, net = official_sd(seed=3)
    cfg = CfgNode({"MODEL": CfgNode({"WEIGHTS": "x.pth", "DEPTHS": [2, 2, 6, 2]}), "SEED": 7})
    path = tmp_path / "with_cfg.pth"
    torch.save({"model": sd, "cfg": cfg, "meta": {"seed": np.int64(7), "best": np.float64(0.5)}}, path)
    with caplog.at_level("WARNING"):
        loaded = read_checkpoint(str(path))
    assert "yacs.config.CfgNode" in caplog.text
    assert isinstance(loaded["cfg"], Unknown) and loaded["cfg"].contents["SEED"] == 7
    assert loaded["meta"]["best"] == 0.5 and loaded["meta"]["seed"].dtype == np.int64
    assert set(loaded["model"]) == set(sd) and all(torch.equal(loaded["model"][k], v) for k, v in sd.items())
    m = model()
    FocalNetCheckpointer(m).load(str(path))
    got = m.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())


def test_unknown_names_are_never_imported_or_called():
    """A hand-written pickle: an object of a module that does not exist, created empty, then called (REDUCE on
    the stand-in). The reader imports nothing, calls nothing: stand-ins all the way, and the call is recorded."""
    import io

    from focalnet_det.checkpoint.reading import SafeUnpickler

    data = (b"\x80\x02cno_such_module\nThing\n)\x81"  # GLOBAL, EMPTY_TUPLE, NEWOBJ: an empty Thing
            b"(X\x01\x00\x00\x00xtR.")  # MARK, 'x', TUPLE, REDUCE: Thing-instance('x'); STOP
    unpickler = SafeUnpickler(io.BytesIO(data))
    out = unpickler.load()
    assert isinstance(out, Unknown) and out.args == ("x",) and "no_such_module" not in sys.modules
    assert unpickler.built == {"no_such_module.Thing"} and unpickler.called == {"no_such_module.Thing"}


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_numpy_1_and_2_spellings_read(tmp_path, suffix):
    """numpy 2 writes ``numpy._core.multiarray``, numpy 1 ``numpy.core.multiarray``: both read, without warnings."""
    import warnings
    import zipfile

    obj = {"model": {"w": torch.ones(2)}, "meta": {"best": np.float64(1.5), "anchors": np.arange(3)}}
    path = tmp_path / f"numpy1{suffix}"
    if suffix == ".pkl":
        obj["model"] = {"w": np.ones(2)}
        path.write_bytes(pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    else:
        torch.save(obj, tmp_path / "numpy2.pth")
        with zipfile.ZipFile(tmp_path / "numpy2.pth") as zin, zipfile.ZipFile(path, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename.endswith("/data.pkl"):
                    assert b"numpy._core.multiarray" in data
                    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                zout.writestr(item, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = read_checkpoint(str(path))
    assert loaded["meta"]["best"] == 1.5 and np.array_equal(loaded["meta"]["anchors"], np.arange(3))


# ----------------------------------------------------------------------------------------------------------
# honest files in released layouts that hold more than tensors


def test_dino_style_args_and_mmcv_meta_with_numpy_load(tmp_path):
    """DINO's ``args`` (argparse.Namespace) and mmcv ``meta`` with numpy scalars, dtypes and arrays read as data."""
    sd, _ = official_sd()
    meta = {"mmdet_version": "2.11.0", "hook_msgs": {"best_score": np.float32(0.25)}, "dtype": np.dtype("float16"),
            "CLASSES": ("a", "b"), "anchors": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = tmp_path / "dino_like.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-4, backbone="focalnet_L_384_22k_fl4", dims=[1, 2]),
                "meta": meta, "epoch": 11}, path)
    loaded = read_checkpoint(str(path))
    assert loaded["args"] == argparse.Namespace(lr=1e-4, backbone="focalnet_L_384_22k_fl4", dims=[1, 2])
    assert loaded["meta"]["hook_msgs"]["best_score"] == np.float32(0.25) and loaded["meta"]["dtype"] == np.float16
    assert np.array_equal(loaded["meta"]["anchors"], meta["anchors"])


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_detectron2_pkl_with_numpy_arrays_loads(tmp_path, protocol):
    """A Detectron2 model-zoo ``.pkl`` (numpy arrays, any pickle protocol) loads its backbone exactly."""
    sd, net = official_sd(seed=1)
    path = tmp_path / "model_zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone." + k: v.numpy() for k, v in sd.items()}, "__author__": "Detectron2 Model Zoo",
                     "matching_heuristics": False}, f, protocol=protocol)
    m = model()
    FocalNetCheckpointer(m).load(str(path))
    got = m.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())


# ----------------------------------------------------------------------------------------------------------
# by URL


def test_payload_by_url_is_refused(tmp_path, server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FOCALNET_DET_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "marker"
    server.files["/evil.pth"] = Path(write_evil_pth(tmp_path / "evil.pth", marker, "in_config")).read_bytes()
    server.files["/evil.pkl"] = Path(write_evil_pkl(tmp_path / "evil.pkl", marker)).read_bytes()
    for name in ("/evil.pth", "/evil.pkl"):
        with pytest.raises(UserError) as info:
            FocalNetCheckpointer(model()).load(server.url(name))
        assert_refused(str(info.value), name, "posix.system")
        assert convert_checkpoint.main(["--inspect", server.url(name)]) == 2
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# through the tools, as processes


def start(*args, tmp_path):
    env = dict(os.environ, FOCALNET_DET_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop(TRUST_ENV, None)
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def assert_one_line_refusal(returncode, stderr, path):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr and stderr.strip(), stderr
    assert_refused(stderr.strip().splitlines()[-1], path, "posix.system")


def test_tools_refuse_payloads(tmp_path, capsys):
    """train_net --eval-only, demo and the converter as processes; the converter and --inspect in-process for the
    other file type: exit 2, one line, nothing run."""
    marker = tmp_path / "marker"
    pth = write_evil_pth(tmp_path / "evil.pth", marker, "beside")
    pkl = write_evil_pkl(tmp_path / "evil.pkl", marker)
    import cv2

    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    calls = {
        pth: [["tools/convert_checkpoint.py", pth, tmp_path / "out.pth"],
              ["tools/demo.py", "--config-file", TINY_CONFIG, "--input", image, "--output", tmp_path / "pictures",
               "--opts", *TINY_MODEL, "MODEL.WEIGHTS", pth]],
        pkl: [["tools/train_net.py", "--config-file", TINY_CONFIG, "--eval-only", *TINY_MODEL, "MODEL.WEIGHTS", pkl,
               "OUTPUT_DIR", tmp_path / "out"]],
    }
    procs = [(path, start(*call, tmp_path=tmp_path)) for path, group in calls.items() for call in group]
    for path in (pth, pkl):
        for argv in ([path, str(tmp_path / "out.pth")], ["--inspect", path]):
            assert convert_checkpoint.main(argv) == 2
            assert_one_line_refusal(2, capsys.readouterr().err, path)
    for path, proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert_one_line_refusal(proc.returncode, stderr, path)
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


# ----------------------------------------------------------------------------------------------------------
# the converter writes whole files


def test_converter_output_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    sd, _ = official_sd()
    src, out = tmp_path / "cls.pth", tmp_path / "out.pth"
    torch.save({"model": sd}, src)
    out.write_bytes(b"previous")

    def killed(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a file")
        raise KeyboardInterrupt  # a conversion stopped half-way

    monkeypatch.setattr(convert_checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint.main([str(src), str(out)])
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["cls.pth", "out.pth"]
    monkeypatch.undo()
    assert convert_checkpoint.main([str(src), str(tmp_path / "out.pkl")]) == 0  # .pkl: numpy arrays, read back
    back = read_checkpoint(str(tmp_path / "out.pkl"))["model"]
    assert all(np.array_equal(back["backbone." + k], v.numpy()) for k, v in sd.items())


# ----------------------------------------------------------------------------------------------------------
# the package as one pipeline


def test_checkpoint_package_has_no_import_cycle():
    """Every import between the package's modules (module level or inside functions) points one way."""
    folder = ROOT / "focalnet_det" / "checkpoint"
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    edges = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                deps |= {t.split(".")[0] for t in targets} & modules
        edges[name] = deps
    assert {"reading", "convert", "huggingface", "inspect", "dino", "mmseg"} <= modules
    order, done = [], set()
    while len(done) < len(modules):
        ready = sorted(m for m in modules - done if edges[m] <= done)
        assert ready, f"import cycle among {sorted(modules - done)}: {({m: edges[m] - done for m in modules - done})}"
        order += ready
        done |= set(ready)
    assert order.index("reading") < order.index("convert") < order.index("inspect")


def test_variants_are_stated_once():
    """inspect.py reads the released variants from model_zoo.py; every zoo file of a released hierarchical variant
    has that variant's structure."""
    from focalnet_det import model_zoo
    from focalnet_det.checkpoint import inspect

    assert inspect.VARIANTS is model_zoo.VARIANTS and len(model_zoo.VARIANTS) == 12
    entries = [e for e in model_zoo.ZOO if e.variant.split(",")[0] in model_zoo.VARIANTS]
    assert len(entries) == 38 - 3  # all but the isotropic files
    for e in entries:
        v = model_zoo.VARIANTS[e.variant.split(",")[0]]
        assert e.focalnet == v.focalnet(e.focalnet["FOCAL_WINDOWS"]), e.file
        assert inspect.variant_name(e.focalnet) == e.variant.split(",")[0]
