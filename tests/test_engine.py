"""Training across processes and machines on the CPU, exact resume after SIGKILL, atomic checkpoints, and one-line
errors for data and config mistakes (tools/train_net.py with focalnet_det.engine / focalnet_det.data.build)."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import launch
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm

import train_net
from focalnet_det import add_focalnet_config
from focalnet_det.checkpoint import FocalNetCheckpointer
from focalnet_det.data.build import ResumableBatchSampler
from focalnet_det.engine import adapt_sync_batchnorm, check_config
from focalnet_det.errors import UserError, one_line

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "mask_rcnn": (
        "configs/Tiny/mask_rcnn_focalnet_tiny_shapes.yaml",
        ["MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.FOCALNET.EMBED_DIM", "16", "MODEL.FPN.OUT_CHANNELS", "32",
         "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32"],
    ),
    "upernet": (
        "configs/Tiny/upernet_focalnet_tiny_shapes.yaml",
        ["MODEL.SEM_SEG_HEAD.NORM", "SyncBN", "SOLVER.IMS_PER_BATCH", "4"],  # SyncBN in CPU processes
    ),
    "mask2former": (
        "configs/Tiny/maskformer2_focalnet_tiny_shapes.yaml",
        ["MODEL.FOCALNET.EMBED_DIM", "32", "MODEL.FOCALNET.DEPTHS", "[1,1,1,1]", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "64",
         "MODEL.SEM_SEG_HEAD.MASK_DIM", "64", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
         "MODEL.MASK_FORMER.HIDDEN_DIM", "64", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128",
         "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
         "MODEL.MASK_FORMER.DEC_LAYERS", "3"],
    ),
}
SHORT = ["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "SEED", "5",
         "SOLVER.WARMUP_ITERS", "1"]
# evaluation on 8 validation images of each tiny dataset (registered here: launched processes import this module)
EVAL_SUBSET = {"mask_rcnn": "tiny_shapes_val", "upernet": "tiny_shapes_sem_seg_val",
               "mask2former": "tiny_shapes_panoptic_val"}
EVAL = {"mask_rcnn": ["TEST.DETECTIONS_PER_IMAGE", "20"], "upernet": [], "mask2former": []}  # Mask2Former: PQ, AP, mIoU


def _first8_panoptic_json(meta):
    """The panoptic json of the first 8 images (PQ is computed over every image of the json)."""
    with open(meta.panoptic_json) as f:
        data = json.load(f)
    data["annotations"] = data["annotations"][:8]
    ids = {a["image_id"] for a in data["annotations"]}
    data["images"] = [i for i in data["images"] if i["id"] in ids]
    path = f"{meta.panoptic_json[:-5]}_first8.json"
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # launched processes write it too
    return path


def _register_subsets():
    for source in EVAL_SUBSET.values():
        name = f"{source}_first8"
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda source=source: DatasetCatalog.get(source)[:8])
            meta = MetadataCatalog.get(source)
            keys = ("thing_classes", "stuff_classes", "thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id",
                    "evaluator_type", "ignore_label", "label_divisor", "json_file", "sem_seg_root", "image_root",
                    "panoptic_root")
            subset = {k: getattr(meta, k) for k in keys if hasattr(meta, k)}
            if hasattr(meta, "panoptic_json"):
                subset["panoptic_json"] = _first8_panoptic_json(meta)
            MetadataCatalog.get(name).set(**subset)


_register_subsets()


def args_for(family, out_dir, *extra, eval_only=False):
    config, opts = TINY[family]
    argv = ["--config-file", str(ROOT / config), *opts, *SHORT, *EVAL[family], "DATASETS.TEST",
            f"('{EVAL_SUBSET[family]}_first8',)", *extra, "OUTPUT_DIR", str(out_dir)]
    return train_net.default_argument_parser().parse_args((["--eval-only"] if eval_only else []) + argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# many processes


def _train_in_processes(family, out_dir):
    """Runs in each launched process: train, evaluate, then compare every rank's weights with rank 0's."""
    cfg = train_net.setup(args_for(family, out_dir))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results  # what the final evaluation (all processes together) printed
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    flat = torch.cat([v.detach().double().flatten() for v in model.state_dict().values() if v.is_floating_point()])
    every = comm.all_gather(flat)
    if comm.is_main_process():
        torch.save({"rank_diff": max(float((w - every[0]).abs().max()) for w in every), "results": results,
                    "world_size": comm.get_world_size()}, os.path.join(out_dir, "report.pt"))


@pytest.mark.parametrize("family", ["mask_rcnn", "upernet", "mask2former"])
def test_two_processes_train_alike_write_once_and_evaluate_as_one(family, tmp_path):
    launch(_train_in_processes, 2, dist_url="auto", args=(family, str(tmp_path)))
    report = torch.load(tmp_path / "report.pt", weights_only=False)
    assert report["world_size"] == 2 and report["rank_diff"] == 0.0
    # only rank 0 writes the checkpoint (and says so in its log)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_final.pth"]
    assert (tmp_path / "log.txt").read_text().count("Saving checkpoint to") == 1
    assert "Saving checkpoint" not in (tmp_path / "log.txt.rank1").read_text()
    # one process evaluating the same weights gets the same numbers as the two did
    cfg = train_net.setup(args_for(family, tmp_path / "eval", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"),
                                   eval_only=True))
    model = train_net.Trainer.build_model(cfg)
    FocalNetCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    alone = train_net.Trainer.test(cfg, model)
    tasks = {"mask_rcnn": {"bbox", "segm"}, "upernet": {"sem_seg"}, "mask2former": {"panoptic_seg", "segm", "sem_seg"}}
    assert set(alone) == set(report["results"]) == tasks[family]  # AP, mIoU, PQ
    for task, metrics in alone.items():
        for name, value in metrics.items():
            assert np.isclose(value, report["results"][task][name], atol=1e-6, equal_nan=True), (task, name)


def test_two_machines_on_loopback(tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    config, opts = TINY["mask_rcnn"]
    procs = [
        subprocess.Popen(
            [sys.executable, "tools/train_net.py", "--config-file", config, "--num-gpus", "1", "--num-machines", "2",
             "--machine-rank", str(rank), "--dist-url", url, *opts, *SHORT, "DATASETS.TEST", "()",
             "OUTPUT_DIR", str(tmp_path)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    assert "world size: 2" in (tmp_path / "log.txt").read_text().lower().replace("world_size", "world size")


def test_sync_batchnorm_becomes_batchnorm_in_one_cpu_process(caplog):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SyncBatchNorm(4))
    model[1].running_mean += 3.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("INFO"):
        adapt_sync_batchnorm(model)
    assert type(model[1]).__name__ == "BatchNorm2d" and "SyncBN on the CPU" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()(torch.randn(2, 3, 5, 5))  # runs on the CPU (nn.SyncBatchNorm would refuse in a process group)


# --------------------------------------------------------------------------------------------------
# exact resume, atomic checkpoints

KILL_AFTER_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, "tools")
    import train_net
    from detectron2.engine import HookBase

    class KillAfterCheckpoint(HookBase):
        def after_step(self):  # after the PeriodicCheckpointer's after_step of the same iteration
            if os.path.exists(os.path.join(self.trainer.cfg.OUTPUT_DIR, "model_0000002.pth")):
                os.kill(os.getpid(), signal.SIGKILL)

    build_hooks = train_net.Trainer.build_hooks
    train_net.Trainer.build_hooks = lambda self: build_hooks(self) + [KillAfterCheckpoint()]
    train_net.cli(sys.argv[1:])
""")


def final_weights(out_dir):
    return torch.load(Path(out_dir) / "model_final.pth", weights_only=False)["model"]


def test_a_run_killed_and_resumed_ends_as_the_uninterrupted_run(tmp_path):
    config, opts = TINY["mask_rcnn"]
    common = ["--config-file", config, *opts, *SHORT, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3",
              "MODEL.FOCALNET.DROP_PATH_RATE", "0.2", "SEED", "11", "DATASETS.TEST", "()"]

    def run(*argv, script=None, workers="0", out):
        cmd = [sys.executable, *(["-c", script] if script else ["tools/train_net.py"]), *argv, *common,
               "DATALOADER.NUM_WORKERS", workers, "OUTPUT_DIR", str(out)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)

    straight = run(out=tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run(script=KILL_AFTER_CHECKPOINT, workers="2", out=tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "model_final.pth").exists()
    assert (tmp_path / "killed" / "last_checkpoint").read_text() == "model_0000002.pth"
    resumed = run("--resume", workers="2", out=tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 3" in resumed.stdout + resumed.stderr
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= 1e-5


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    from focalnet_det.checkpoint import FocalNetCheckpointer
    model = torch.nn.Linear(4, 2)
    checkpointer = FocalNetCheckpointer(model, save_dir=sys.argv[1])
    checkpointer.save("model_a")
    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = dying_save
    checkpointer.save("model_b")
""")


def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (tmp_path / "model_b.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    checkpointer = FocalNetCheckpointer(torch.nn.Linear(4, 2), save_dir=str(tmp_path))
    assert checkpointer.get_checkpoint_file().endswith("model_a.pth")
    assert set(torch.load(checkpointer.get_checkpoint_file(), weights_only=False)["model"]) == {"weight", "bias"}


def test_batch_stream_depends_on_seed_and_position_only():
    groups = [i % 2 for i in range(10)]

    def batches(start=0, rank=0, world=1, n=6):
        sampler = ResumableBatchSampler(groups, 2, seed=3, rank=rank, world_size=world)
        sampler.start_iter = start
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = batches(n=8)
    assert batches(start=3, n=5) == full[3:]  # a resumed stream continues the uninterrupted one
    for batch in full:
        assert len({groups[i] for _, i in batch}) == 1  # never mixes aspect groups
    # two ranks split the stream's positions between them
    r0, r1 = batches(rank=0, world=2), batches(rank=1, world=2)
    positions = [p for b in r0 for p, _ in b], [p for b in r1 for p, _ in b]
    assert all(p % 2 == 0 for p in positions[0]) and all(p % 2 == 1 for p in positions[1])
    assert batches(n=8) == full and ResumableBatchSampler(groups, 2, seed=4).__iter__().__next__() != full[0]


# --------------------------------------------------------------------------------------------------
# one-line errors


def tiny_cfg(family, *opts):
    config, small = TINY[family]
    cfg = get_cfg()
    add_focalnet_config(cfg)
    cfg.merge_from_file(str(ROOT / config))
    cfg.merge_from_list([*small, *SHORT, *opts])
    return cfg


@pytest.mark.parametrize("family, opts, needles", [
    ("mask_rcnn", ["DATASETS.TRAIN", "('tiny_shape_train',)"], ["DATASETS.TRAIN", "'tiny_shape_train'", "tiny_shapes_train"]),
    ("mask_rcnn", ["MODEL.FOCALNET.FOCAL_LEVELS", "[2,2,2]"], ["MODEL.FOCALNET.FOCAL_LEVELS", "[2, 2, 2]", "DEPTHS"]),
    ("mask_rcnn", ["MODEL.FOCALNET.FOCAL_WINDOWS", "[9,8,9,9]"], ["MODEL.FOCALNET.FOCAL_WINDOWS", "odd"]),
    ("mask_rcnn", ["MODEL.FOCALNET.DEPTHS", "[1,0,1,1]"], ["MODEL.FOCALNET.DEPTHS", ">= 1"]),
    ("mask_rcnn", ["MODEL.FOCALNET.EMBED_DIM", "0"], ["MODEL.FOCALNET.EMBED_DIM"]),
    ("mask_rcnn", ["MODEL.FPN.IN_FEATURES", "['res2','res3','res4','res6']"], ["MODEL.FPN.IN_FEATURES", "res6"]),
    ("mask_rcnn", ["MODEL.ROI_HEADS.IN_FEATURES", "['p2','p9']"], ["MODEL.ROI_HEADS.IN_FEATURES", "p9"]),
    ("upernet", ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2','res3','res4','res7']"], ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "res7"]),
    ("upernet", ["MODEL.UPERNET.AUX_IN_FEATURE", "res9"], ["MODEL.UPERNET.AUX_IN_FEATURE", "res9"]),
    ("mask2former", ["MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", "['res3','res8']"],
     ["DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", "res8"]),
    ("mask_rcnn", ["MODEL.ROI_HEADS.NUM_CLASSES", "2"], ["MODEL.ROI_HEADS.NUM_CLASSES", "3 classes", "tiny_shapes_train"]),
    ("upernet", ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"], ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5 classes"]),
])
def test_config_mistakes_are_named(family, opts, needles):
    with pytest.raises(UserError) as e:
        check_config(tiny_cfg(family, *opts))
    message = one_line(e.value)
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in message, message


def test_missing_dataset_files_name_the_path_the_variable_and_the_script(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", TINY["mask_rcnn"][0], "DATASETS.TRAIN",
         "('coco_2017_train_panoptic_with_sem_seg',)", "OUTPUT_DIR", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path)},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: DATASETS.TRAIN") and "DETECTRON2_DATASETS" in line and str(tmp_path) in line
    assert "coco" in line and "download COCO" in line or "prepare_coco_semantic_annos_from_panoptic_annos.py" in line


def test_unregistered_dataset_exits_2_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", TINY["upernet"][0], "DATASETS.TEST",
                           "('tiny_shapes_sem_seg_vall',)", "OUTPUT_DIR", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: DATASETS.TEST: dataset 'tiny_shapes_sem_seg_vall' is not registered; close "
                           "matches: tiny_shapes_sem_seg_val, tiny_shapes_sem_seg_train")
    assert len(line) < 300  # the close matches, not the 60-odd registered names


def _register_with_one_broken_image(name, source, tmp_path):
    dicts = [dict(d) for d in DatasetCatalog.get(source)[:4]]
    broken = tmp_path / f"{name}_broken.png"
    broken.write_bytes(b"not an image")
    dicts[1]["file_name"] = str(broken)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(**{k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k != "name"},
                                  json_file=MetadataCatalog.get(source).json_file)
    return str(broken)


def test_unreadable_image_skipped_in_training_named_in_evaluation(tmp_path, caplog):
    broken = _register_with_one_broken_image("tiny_shapes_broken", "tiny_shapes_train", tmp_path)
    cfg = train_net.setup(args_for("mask_rcnn", tmp_path, "DATASETS.TRAIN", "('tiny_shapes_broken',)",
                                   "SOLVER.IMS_PER_BATCH", "4", "DATASETS.TEST", "()"))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # goes on past the broken image
    assert trainer.data_loader.skipped >= 1
    assert (tmp_path / "model_final.pth").is_file()
    assert broken in (tmp_path / "log.txt").read_text()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 1  # the error crosses a worker process too
    with pytest.raises(UserError) as e:
        inference_on_dataset(trainer.model, train_net.Trainer.build_test_loader(cfg, "tiny_shapes_broken"), None)
    assert broken in one_line(e.value) and one_line(e.value).startswith("evaluation stopped: cannot read image")


def test_non_finite_loss_stops_naming_iteration_and_last_checkpoint(tmp_path):
    cfg = train_net.setup(args_for("mask_rcnn", tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1",
                                   "DATASETS.TEST", "()"))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    forward = trainer.model.forward

    def poisoned(self, batched_inputs):
        losses = forward(batched_inputs)
        return {k: v * float("nan") for k, v in losses.items()} if trainer.iter >= 2 else losses

    trainer.model.forward = types.MethodType(poisoned, trainer.model)
    with pytest.raises(UserError) as e:
        trainer.train()
    message = one_line(e.value)
    assert "non-finite at iteration 2" in message and "model_0000001.pth" in message, message
