"""DINO (Zhang et al., 2022) with FocalNet backbones: meta-architecture, deformable transformer, denoising, matcher, loss, post-processing.
Public: ``DINO``, ``DeformableTransformer``, ``HungarianMatcher``, ``SetCriterion``, ``prepare_denoising``, ``dn_attention_mask``, ``dino_postprocess``."""
from .criterion import SetCriterion
from .denoising import dn_attention_mask, dn_match_indices, prepare_denoising
from .dino import DINO, dataset_logit_ids
from .matcher import HungarianMatcher
from .postprocess import dino_filter, dino_postprocess, dino_topk
from .transformer import DeformableTransformer

__all__ = [
    "DINO",
    "DeformableTransformer",
    "HungarianMatcher",
    "SetCriterion",
    "prepare_denoising",
    "dn_attention_mask",
    "dn_match_indices",
    "dino_postprocess",
    "dino_topk",
    "dino_filter",
    "dataset_logit_ids",
]
