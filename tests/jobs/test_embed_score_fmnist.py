"""The embed -> score path means something: a tiny CLIP trained by the tests on Fashion-MNIST, loaded
from its checkpoint file by ``clipsift embed``, then ``clipsift score``: pairs whose caption names the
image's class must outrank pairs whose caption names another class, by CLIPScore and by negCLIPLoss."""

from __future__ import annotations

import io as _stdio
import json
import tarfile
from typing import Any

import numpy as np
import pytest
import torch
from pyspark.sql import SparkSession

from clipsift.jobs import embed as embed_job
from clipsift.jobs.config import EmbedConfig, ScoreConfig, from_dict
from clipsift.jobs.score import run as score_run
from clipsift.udfs.models import file_sha256
from tests.support.tiny_clip import FASHION_CLASSES, load_fashion_mnist, png_bytes, trained_tiny_clip

N_PER_KIND = 200  # matching and mismatched pairs each
TEMPLATE = "a photo of a {}"


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two WebDataset shards of Fashion-MNIST test images (PNG), half with their class's caption."""
    images, labels = load_fashion_mnist("test")
    rng = np.random.default_rng(7)
    pick = rng.choice(len(images), size=2 * N_PER_KIND, replace=False)
    root = tmp_path_factory.mktemp("fmnist")
    truth: dict[str, bool] = {}
    samples = []
    for i, index in enumerate(pick):
        label = int(labels[index])
        matching = i % 2 == 0
        named = label if matching else int((label + rng.integers(1, 10)) % 10)
        uid = f"fm{index:05d}"
        truth[uid] = matching
        samples.append((uid, png_bytes(images[index]), TEMPLATE.format(FASHION_CLASSES[named])))
    (root / "wds").mkdir()
    for shard in range(2):
        with tarfile.open(root / "wds" / f"{shard:05d}.tar", "w") as tar:
            for j, (uid, png, caption) in enumerate(samples[shard::2]):
                members = {"png": png, "txt": caption.encode(), "json": json.dumps({"uid": uid}).encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{shard}{j:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, _stdio.BytesIO(data))
    return {"root": root, "truth": truth, "samples": {uid: (png, cap) for uid, png, cap in samples}}


@pytest.fixture(scope="module")
def scored(spark: SparkSession, pool: dict[str, Any]) -> dict[str, Any]:
    tiny = trained_tiny_clip()
    root = pool["root"]
    embed_cfg = from_dict(
        EmbedConfig,
        {
            "input": {"kind": "webdataset", "path": str(root / "wds")},
            "model": {
                "name": tiny.model_name,
                "config_json": str(tiny.config_path),
                "pretrained": str(tiny.checkpoint_path),
                "device": "cpu",
                "threads": 1,
            },
            "output": {"path": str(root / "embeddings")},
            "embed": {"image_batch_size": 64, "text_batch_size": 128},
        },
    )
    embedded = embed_job.run(spark, embed_cfg)
    score_cfg = from_dict(
        ScoreConfig,
        {
            "input": {"kind": "table", "path": str(root / "embeddings"), "shard_col": "source"},
            "output": {"path": str(root / "scores")},
            "negclip": {"grouping": "shard", "batch_size": 50, "rounds": 5, "seed": 1},
        },
    )
    result = score_run(spark, score_cfg)
    frame = spark.read.format("delta").load(str(root / "scores")).drop("lineage").toPandas().set_index("uid")
    emb = spark.read.format("delta").load(str(root / "embeddings")).toPandas().set_index("uid")
    return {"tiny": tiny, "embedded": embedded, "result": result, "scores": frame, "embeddings": emb}


def test_every_pair_is_embedded_and_scored(pool: dict[str, Any], scored: dict[str, Any]) -> None:
    n = 2 * N_PER_KIND
    assert scored["embedded"].embedded == n and scored["embedded"].by_status == {"ok": n}
    assert scored["result"].rows_out == n and (scored["scores"]["status"] == "ok").all()
    sha = file_sha256(str(scored["tiny"].checkpoint_path))
    assert scored["embedded"].model_id.endswith(f":sha256-{sha[:16]}")
    assert set(scored["embeddings"]["checkpoint_sha256"]) == {sha}


def test_job_embeddings_equal_the_checkpoint_loaded_in_process(pool: dict[str, Any], scored: dict[str, Any]) -> None:
    """The executors loaded the checkpoint file through open_clip: same vectors as loading it here."""
    from PIL import Image

    model, preprocess, tokenizer = scored["tiny"].load()
    uids = sorted(pool["samples"])[:16]
    pixels = torch.stack([preprocess(Image.open(_stdio.BytesIO(pool["samples"][u][0])).convert("RGB")) for u in uids])
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True).numpy()
        txt = model.encode_text(tokenizer([pool["samples"][u][1] for u in uids]), normalize=True).numpy()
    emb = scored["embeddings"]
    np.testing.assert_allclose(np.stack(emb.loc[uids, "image_emb"]), img, atol=1e-5)
    np.testing.assert_allclose(np.stack(emb.loc[uids, "text_emb"]), txt, atol=1e-5)


def test_matching_captions_outrank_mismatched_ones(pool: dict[str, Any], scored: dict[str, Any]) -> None:
    frame = scored["scores"]
    uids = sorted(pool["truth"])
    matching = np.array([pool["truth"][u] for u in uids])
    clip = frame.loc[uids, "clip_score"].to_numpy()
    negclip = frame.loc[uids, "negclip_loss"].to_numpy()
    print(
        f"AUROC matching vs mismatched: clip_score {auroc(clip, matching):.4f}, negclip {auroc(negclip, matching):.4f}"
    )
    assert auroc(clip, matching) > 0.9
    assert auroc(negclip, matching) > 0.9
    # and a model that knows nothing would not: shuffled labels sit near 0.5
    shuffled = np.random.default_rng(0).permutation(matching)
    assert abs(auroc(clip, shuffled) - 0.5) < 0.1
