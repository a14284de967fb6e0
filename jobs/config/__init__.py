"""Job configuration: frozen dataclasses loaded from YAML, strict about keys, types and ranges.

One module per job over one loader: :mod:`.base` (errors, the validating :class:`Section` base, the YAML and
``--set`` loader, :class:`TableRef`, :class:`SparkSettings`), :mod:`.score`, :mod:`.select`, :mod:`.embed`,
:mod:`.clipselect`. Everything is importable from here.
"""

from clipsift.jobs.config.base import (
    NOT_SCORED,
    ConfigError,
    JobConfig,
    OutputRef,
    Section,
    SparkSettings,
    TableRef,
    from_argv,
    from_dict,
    load,
    scores_basis,
    to_dict,
)
from clipsift.jobs.config.clipselect import AdapterTrainingConfig, ClipSelectConfig, ClipSelectInputConfig
from clipsift.jobs.config.embed import EmbedConfig, EmbedInputConfig, EmbedOptions, ModelConfig
from clipsift.jobs.config.eval import (
    EvalConfig,
    EvalSelection,
    EvalTrainConfig,
    RetrievalConfig,
    StudentConfig,
    ZeroShotConfig,
)
from clipsift.jobs.config.report import ImagesConfig, ReportConfig, SamplesConfig
from clipsift.jobs.config.reshard import EncodeConfig, ReshardConfig, ReshardOutputConfig, SelectionRef
from clipsift.jobs.config.score import (
    KMEANS_PARALLEL_MAX_K,
    BaselinesConfig,
    InputConfig,
    KMeansConfig,
    NegClipConfig,
    NormSim2DConfig,
    NormSimConfig,
    ScoreClipSelectConfig,
    ScoreConfig,
    TargetConfig,
)
from clipsift.jobs.config.select import RULES, ImportSource, JoinedRun, SelectConfig, SelectionConfig

__all__ = [
    "KMEANS_PARALLEL_MAX_K",
    "NOT_SCORED",
    "RULES",
    "AdapterTrainingConfig",
    "BaselinesConfig",
    "ClipSelectConfig",
    "ClipSelectInputConfig",
    "ConfigError",
    "EmbedConfig",
    "EmbedInputConfig",
    "EmbedOptions",
    "EncodeConfig",
    "EvalConfig",
    "EvalSelection",
    "EvalTrainConfig",
    "ImagesConfig",
    "ImportSource",
    "InputConfig",
    "JobConfig",
    "JoinedRun",
    "KMeansConfig",
    "ModelConfig",
    "NegClipConfig",
    "NormSim2DConfig",
    "NormSimConfig",
    "OutputRef",
    "ReportConfig",
    "ReshardConfig",
    "ReshardOutputConfig",
    "RetrievalConfig",
    "SamplesConfig",
    "ScoreClipSelectConfig",
    "ScoreConfig",
    "Section",
    "SelectConfig",
    "SelectionConfig",
    "SelectionRef",
    "SparkSettings",
    "StudentConfig",
    "TableRef",
    "TargetConfig",
    "ZeroShotConfig",
    "from_argv",
    "from_dict",
    "load",
    "scores_basis",
    "to_dict",
]
