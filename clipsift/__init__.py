"""clipsift: CLIP-embedding data curation on Apache Spark.

The public API, for notebooks and other programs (the ``clipsift`` command runs the same functions)::

    import clipsift

    cfg = clipsift.ScoreConfig.from_yaml("score.yaml", ["negclip.rounds=5"])
    result = clipsift.score(spark, cfg)             # reads the pool, writes the score table
    scored = clipsift.score_frame(pool_df, cfg)     # the same score columns on a DataFrame in hand, no writes

``embed``, ``score``, ``select``, ``clipselect``, ``reshard``, ``report`` and ``evaluate`` take ``(spark, cfg)``;
each config validates when it is built, however it is built, and a bad value raises :class:`ConfigError`
naming the key.

Packages: :mod:`clipsift.udfs.kernels` (numpy, no Spark: the formulas), :mod:`clipsift.udfs` (pandas-UDF
wrappers, executor-side readers), :mod:`clipsift.jobs` (config, I/O and the jobs). Names here are imported
on first use, so ``import clipsift.udfs.kernels`` imports neither pyspark nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> (module, attribute), imported on first use.
_EXPORTS = {
    "embed": ("clipsift.jobs.embed", "run"),
    "score": ("clipsift.jobs.score", "run"),
    "score_frame": ("clipsift.jobs.score", "score_frame"),
    "select": ("clipsift.jobs.select", "run"),
    "clipselect": ("clipsift.jobs.clipselect", "run"),
    "reshard": ("clipsift.jobs.reshard", "run"),
    "report": ("clipsift.jobs.report", "run"),
    "evaluate": ("clipsift.jobs.eval", "run"),
    "ConfigError": ("clipsift.jobs.config", "ConfigError"),
    "EmbedConfig": ("clipsift.jobs.config", "EmbedConfig"),
    "ScoreConfig": ("clipsift.jobs.config", "ScoreConfig"),
    "SelectConfig": ("clipsift.jobs.config", "SelectConfig"),
    "ClipSelectConfig": ("clipsift.jobs.config", "ClipSelectConfig"),
    "ReshardConfig": ("clipsift.jobs.config", "ReshardConfig"),
    "ReportConfig": ("clipsift.jobs.config", "ReportConfig"),
    "EvalConfig": ("clipsift.jobs.config", "EvalConfig"),
}

__all__ = [
    "ClipSelectConfig",
    "ConfigError",
    "EmbedConfig",
    "EvalConfig",
    "ReportConfig",
    "ReshardConfig",
    "ScoreConfig",
    "SelectConfig",
    "__version__",
    "clipselect",
    "embed",
    "evaluate",
    "report",
    "reshard",
    "score",
    "score_frame",
    "select",
]

if TYPE_CHECKING:
    from clipsift.jobs.clipselect import run as clipselect
    from clipsift.jobs.config import (
        ClipSelectConfig,
        ConfigError,
        EmbedConfig,
        EvalConfig,
        ReportConfig,
        ReshardConfig,
        ScoreConfig,
        SelectConfig,
    )
    from clipsift.jobs.embed import run as embed
    from clipsift.jobs.eval import run as evaluate
    from clipsift.jobs.report import run as report
    from clipsift.jobs.reshard import run as reshard
    from clipsift.jobs.score import run as score
    from clipsift.jobs.score import score_frame
    from clipsift.jobs.select import run as select


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clipsift' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
