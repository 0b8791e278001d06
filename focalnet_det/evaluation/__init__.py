from .maskformer_evaluation import InstanceSegEvaluator, build_maskformer_evaluators  # noqa: F401
