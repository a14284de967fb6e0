"""Pure numpy kernels of clipsift: every score is computed here, and only here. No pyspark.

>>> from clipsift.udfs.kernels import clip_score, negclip_loss, normsim, normsim2_dynamic

negCLIPLoss and NormSim∞ also have a torch twin for the GPU, :mod:`clipsift.udfs.kernels.torch_kernels`; it is
not imported here (torch is optional), only by the UDFs when a score runs on a GPU.
"""

from clipsift.udfs.kernels._checks import l2_normalize
from clipsift.udfs.kernels.basic import basic_filter, basic_filter_parts
from clipsift.udfs.kernels.batching import batch_plan, uid_hash64
from clipsift.udfs.kernels.clipscore import clip_score
from clipsift.udfs.kernels.clipselect import (
    SelectionRun,
    diversity_of_group,
    diversity_within_label,
    minmax,
    optimise_selection,
    run_selection_optimiser,
    select_top_k,
    selection_scores,
    semantic_alignment,
)
from clipsift.udfs.kernels.dedup import nearest_centroid, semantic_duplicates
from clipsift.udfs.kernels.negclip import batch_parts, negclip_loss
from clipsift.udfs.kernels.normsim import normsim, normsim2_dynamic, normsim2_from_moment, normsim_inf, second_moment

__all__ = [
    "SelectionRun",
    "basic_filter",
    "basic_filter_parts",
    "batch_parts",
    "batch_plan",
    "clip_score",
    "diversity_of_group",
    "diversity_within_label",
    "l2_normalize",
    "minmax",
    "nearest_centroid",
    "negclip_loss",
    "normsim",
    "normsim2_dynamic",
    "normsim2_from_moment",
    "normsim_inf",
    "optimise_selection",
    "run_selection_optimiser",
    "second_moment",
    "select_top_k",
    "selection_scores",
    "semantic_alignment",
    "semantic_duplicates",
    "uid_hash64",
]
