"""``clipsift embed``: :class:`EmbedConfig` and its sections."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clipsift.jobs.config.base import (
    ConfigError,
    JobConfig,
    OutputRef,
    Section,
    SparkSettings,
    TableRef,
    check_positive,
    join_key,
)
from clipsift.udfs.embed import EmbedSettings


@dataclass(frozen=True)
class EmbedInputConfig(TableRef):
    """Where the image-caption pairs come from: ``kind: webdataset``, ``path`` is a folder of ``.tar`` shards (or
    one ``.tar``); ``kind: table``, the table by ``table`` (catalog name) or ``path`` (+ ``format``)."""

    kind: Literal["webdataset", "table"] = "webdataset"
    uid_col: str = "uid"
    caption_col: str = "caption"
    image_col: str | None = None
    """table: column of image bytes (give this or ``image_path_col``)."""
    image_path_col: str | None = None
    """table: column of image paths/URIs (local, ``dbfs:/``, ``/Volumes/``, ``s3a://``, ``gs://``, ``hdfs://``)."""
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
    """webdataset: member extensions taken as the sample's image (first match in this order)."""

    def validate(self, key: str) -> None:
        if self.kind == "webdataset":
            if not self.path:
                raise ConfigError(f"{key}.path", "webdataset input needs the folder of .tar shards")
            for name in ("table", "image_col", "image_path_col"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{key}.{name}", "not used for webdataset input; remove it")
            return
        super().validate(key)
        if (self.image_col is None) == (self.image_path_col is None):
            raise ConfigError(key, "table input needs exactly one of 'image_col' (bytes) or 'image_path_col' (paths)")


@dataclass(frozen=True)
class ModelConfig(Section):
    """The open_clip teacher (see README "Models")."""

    name: str
    """open_clip model name (``ViT-L-14``), ``hf-hub:org/repo``, ``local-dir:/path``, or a custom config's name."""
    pretrained: str | None = None
    """Pretrained tag (``openai``), a local checkpoint file (weights only), or null for seeded random weights."""
    config_json: str | None = None
    """Path of a custom model config JSON; it is registered under ``name``."""
    cache_dir: str | None = None
    """Where hub weights are kept (a path every executor reads, e.g. ``/Volumes/...``)."""
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """GPU autocast dtype (``auto`` = bf16); CPU always runs fp32."""
    seed: int = 0
    threads: int | None = None
    """torch threads per Python worker on CPU (default: torch's own)."""

    def validate(self, key: str) -> None:
        if not self.name:
            raise ConfigError(f"{key}.name", "give an open_clip model name, e.g. ViT-B-32")
        if not re.match(r"^(auto|cpu|cuda(:[0-9]+)?)$", self.device):
            raise ConfigError(f"{key}.device", f"'{self.device}' is not one of auto, cpu, cuda, cuda:N")
        if self.config_json is not None and not Path(self.config_json).is_file():
            raise ConfigError(f"{key}.config_json", f"file '{self.config_json}' does not exist")
        if self.threads is not None:
            check_positive(f"{key}.threads", self.threads)


@dataclass(frozen=True)
class EmbedOptions(EmbedSettings, Section):
    """The embedding UDF's settings (batching, decoding limits, output dtype) plus commit size and retries."""

    shards_per_commit: int | None = None
    """webdataset: tar shards per Delta commit (work committed survives a crash); one task per shard. Default: the
    session's default parallelism (its task slots: every core or GPU busy), at least 8."""
    rows_per_commit: int = 200_000
    """table input: rows per Delta commit."""
    retry_failed: bool = True
    """Re-embed rows that failed for reasons that may pass (unreadable file, encoder error)."""

    def validate(self, key: str) -> None:
        for name in (
            "image_batch_size", "text_batch_size", "decode_threads", "prefetch_batches", "max_pixels",
            "max_image_bytes", "max_caption_chars", "rows_per_commit", "log_every_rows",
        ):  # fmt: skip
            check_positive(f"{key}.{name}", getattr(self, name))
        if self.shards_per_commit is not None:
            check_positive(f"{key}.shards_per_commit", self.shards_per_commit)
        if self.max_aspect_ratio < 1:
            raise ConfigError(f"{key}.max_aspect_ratio", "must be at least 1")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"{key}.dtype", f"'{self.dtype}' is not one of float32, float16")


@dataclass(frozen=True)
class EmbedConfig(JobConfig):
    """``clipsift embed``: image-caption pairs in, a Delta table of unit embeddings per (uid, model) out."""

    input: EmbedInputConfig
    model: ModelConfig
    output: OutputRef
    embed: EmbedOptions = EmbedOptions()
    spark: SparkSettings = SparkSettings()

    def validate(self, key: str = "") -> None:
        self.input.validate(join_key(key, "input"))
        self.model.validate(join_key(key, "model"))
        self.output.validate(join_key(key, "output"))
        if self.output.format != "delta":
            raise ConfigError(join_key(key, "output.format"), "embeddings are always written as Delta; remove the key")
        self.embed.validate(join_key(key, "embed"))
