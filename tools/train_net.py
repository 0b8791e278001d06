#!/usr/bin/env python
"""Train and evaluate FocalNet models with Detectron2.

Examples:
  python tools/train_net.py --config-file configs/Tiny/mask_rcnn_focalnet_tiny_shapes.yaml
  python tools/train_net.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_focalnet_tiny_srf_1x.yaml \\
      --num-gpus 8 SOLVER.IMS_PER_BATCH 16
  python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth

COCO: point DETECTRON2_DATASETS at the folder holding coco/ (Detectron2's layout); the built-in
tiny_shapes_{train,val} datasets need nothing. Your own data: --register-coco NAME JSON IMAGE_DIR (and
--register-coco-panoptic, --register-sem-seg; README "Train on your own data"), then DATASETS.TRAIN '("NAME",)'. Without a GPU the model runs on the CPU in fp32.
"""
import logging
import os
import sys
import weakref

from torch.multiprocessing import ProcessRaisedException

import focalnet_det  # noqa: F401  (first: registers everything and quiets fvcore's import warning)
import detectron2.utils.comm as comm
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_test_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_argument_parser,
    default_setup,
    hooks,
    launch,
)
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, verify_results
from detectron2.projects.deeplab import build_lr_scheduler as build_lr_scheduler_with_poly
from detectron2.utils.logger import setup_logger

from focalnet_det.allocator import reuse_freed_memory
from focalnet_det.checkpoint import FocalNetCheckpointer
from focalnet_det.config import load_config
from focalnet_det.data import (
    ReadCheckedMapper,
    add_dataset_arguments,
    build_detection_augmentation,
    build_resumable_train_loader,
    build_train_mapper,
    register_datasets_from_args,
)
from focalnet_det.engine import SeedEveryIteration, adapt_sync_batchnorm, check_config, create_ddp_model
from focalnet_det.errors import UserError, one_line
from focalnet_det.evaluation import build_maskformer_evaluators, build_sem_seg_evaluator
from focalnet_det.modeling.upernet import SemanticSegmentorWithTTA
from focalnet_det.solver import build_optimizer

logger = logging.getLogger("focalnet_det")


class Trainer(DefaultTrainer):
    """DefaultTrainer with the FocalNet recipe (checkpoint formats, augmentation, AdamW, evaluators) that trains
    across processes on the CPU too, and resumes exactly: the data stream and the random generators are
    functions of (SEED, iteration), so a run resumed from a checkpoint continues the run that was stopped."""

    def __init__(self, cfg):
        # DefaultTrainer's construction, with a DDP wrapper that works on the CPU and FocalNetCheckpointer
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # reads official / timm / Detectron2 checkpoints, adapting focal kernels; writes atomically
        self.checkpointer = FocalNetCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        return adapt_sync_batchnorm(super().build_model(cfg))  # SyncBN needs CUDA: gloo-capable on the CPU

    def build_hooks(self):
        ret = super().build_hooks()
        if self.cfg.TEST.BEST_CHECKPOINT_METRIC and comm.is_main_process():  # model_best.pth, after each evaluation
            at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
            ret.insert(at, hooks.BestCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer,
                                                  self.cfg.TEST.BEST_CHECKPOINT_METRIC, mode="max"))
        if self.cfg.SEED < 0:
            logging.getLogger("focalnet_det").info("SEED < 0: a resumed run will not repeat the interrupted one")
            return ret
        return [SeedEveryIteration(self.cfg.SEED)] + ret

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        self.data_loader.batch_sampler.start_iter = self.start_iter  # the stream continues where it stopped

    def train(self):
        try:
            return super().train()
        except FloatingPointError:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            raise UserError(
                f"the loss became non-finite at iteration {self.iter}; last good checkpoint: "
                f"{last or 'none written yet'} (lower SOLVER.BASE_LR or clip gradients, then --resume)"
            ) from None

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        evaluators = []
        if evaluator_type == "coco":
            # the fast (compiled) COCO eval is not available with every Detectron2 install
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False))
        if evaluator_type == "sem_seg" and cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            evaluators.append(build_sem_seg_evaluator(dataset_name, output_dir=output_folder))
        if cfg.MODEL.META_ARCHITECTURE == "MaskFormer":  # PQ / mask AP / mIoU as MODEL.MASK_FORMER.TEST says
            evaluators = build_maskformer_evaluators(cfg, dataset_name, output_folder)
        if not evaluators:
            raise UserError(f"no evaluator for dataset {dataset_name!r} (evaluator_type {evaluator_type!r})")
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def build_train_loader(cls, cfg):
        # Mask2Former's mapper by INPUT.DATASET_MAPPER_NAME, mmseg's pipeline for UPerNet, else the detection
        # recipe; a stream that depends on (SEED, iteration) only, unreadable images skipped
        return build_resumable_train_loader(cfg, build_train_mapper(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = DatasetMapper(cfg, is_train=False, augmentations=build_detection_augmentation(cfg, False))
        return build_detection_test_loader(cfg, dataset_name, mapper=ReadCheckedMapper(mapper))

    @classmethod
    def build_optimizer(cls, cfg, model):
        # AdamW; parameter groups by the family's rule (Mask2Former: backbone lr multiplier), full-model clipping
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # Detectron2's schedules plus "WarmupPolyLR" (DeepLab project), the semantic-segmentation recipes'
        return build_lr_scheduler_with_poly(cfg, optimizer)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Multi-scale + flip test (TEST.AUG): results under "<task>_MS" (e.g. sem_seg_MS)."""
        if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":
            raise UserError(f"TEST.AUG.ENABLED: test-time augmentation is implemented for semantic segmentation "
                            f"(SemanticSegmentor), not for {cfg.MODEL.META_ARCHITECTURE}")
        logger.info("Running inference with test-time augmentation (multi-scale, flip) ...")
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_MS"))
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, SemanticSegmentorWithTTA(cfg, model), evaluators)
        return {k + "_MS": v for k, v in res.items()}


def setup(args):
    """The config, and Detectron2's per-process setup (logging, seeds, the config saved to OUTPUT_DIR)."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    # Detectron2's environment report imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on
    # every CPU machine: a stray stderr line before a one-line error
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    default_setup(cfg, args)
    # this project's messages (checkpoint adaptation, skipped images, SyncBN) in the console and log.txt too
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="focalnet_det", abbrev_name="fd")
    # a user error ends training with one line; the trainer's own traceback log of it would repeat it
    logging.getLogger("detectron2.engine.train_loop").addFilter(
        lambda record: not (record.exc_info and issubclass(record.exc_info[0], (UserError, FloatingPointError)))
    )
    return cfg


def main(args):
    reuse_freed_memory()  # in every launched process: large CPU buffers reused, not page-faulted anew
    register_datasets_from_args(args)  # again in every launched process (a spawned one starts without them)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        FocalNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


def cli(argv=None):
    args = add_dataset_arguments(default_argument_parser(epilog=__doc__)).parse_args(argv)
    try:
        register_datasets_from_args(args)
        # data and config mistakes are found here, once, before any process starts
        check_config(load_config(args.config_file, args.opts), eval_only=args.eval_only, resume=args.resume)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (UserError, ProcessRaisedException) as e:  # the latter: a launched process failed, maybe by a UserError
        if isinstance(e, ProcessRaisedException) and "UserError: " not in str(e):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
