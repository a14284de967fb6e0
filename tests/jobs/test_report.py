"""Jobs-tier tests of ``clipsift report``: two reports made by ``run(spark, cfg)`` and opened in a real headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium against the system binaries, nothing
downloaded):

* the synthetic DataComp pool of the demo (embeddings only: no image access, captions alone), with the demo's kinds
  of selections;
* a small pool of real images (tuxpaint stamps and scikit-image photos in WebDataset tars), embedded by
  ``clipsift embed`` with a tiny random open_clip, scored and selected: the report finds the tars through the
  embed run's lineage and shows thumbnails made on the executors.

Each page: every section present, every image decoded (``naturalWidth > 0``), no console error, a screenshot saved
(``$CLIPSIFT_TEST_ARTIFACTS`` or the test's temp folder) whose pixels are looked at. The numbers on the page (rows by
status, view sizes, Jaccard, adds and drops, a histogram's bins, Spearman's ρ) equal those computed here from the
collected (small) tables with pandas and numpy.
"""

from __future__ import annotations

import io as _stdio
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import SparkSession

from clipsift.jobs import embed as embed_job
from clipsift.jobs import report as report_job
from clipsift.jobs import score as score_job
from clipsift.jobs import select as select_job
from clipsift.jobs.config import EmbedConfig, ReportConfig, ScoreConfig, SelectConfig, from_dict
from tests.support.corpus import skimage_photos, tuxpaint_stamps
from tests.support.models import TINY_NAME, write_tiny_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SECTIONS = ("run", "scores", "selections", "samples")
#: A caption that is web text at its worst: markup and a script, which the page must show as text.
HOSTILE = '<b>bold</b> & <script>document.title="pwned"</script> "quoted"'

DEMO_SELECTIONS = [
    {"name": "cs30", "rule": "top_fraction", "column": "clip_score", "fraction": 0.3, "counting": "datacomp"},
    {"name": "ncl30", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.3},
    {"name": "ncl30_ns20", "rule": "sequential", "column": "negclip_loss", "fraction": 0.3,
     "then_column": "normsim_inf_tgt", "then_fraction": 0.2},
    {"name": "both30", "rule": "intersect", "of": ["cs30", "ncl30"]},
    {"name": "thr", "rule": "threshold", "column": "clip_score", "min": 0.25},
]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver, both Debian's (Selenium Manager never runs: the driver's path is
    given and SE_OFFLINE is set)."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("chromium not found: install it with `apt-get install chromium chromium-driver` (make setup)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium could not import: pip install selenium (the dev extra)")
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _artifacts(tmp: Path) -> Path:
    """Where screenshots (and pages) are kept: ``$CLIPSIFT_TEST_ARTIFACTS`` (CI uploads it), else ``tmp``."""
    folder = Path(os.environ.get("CLIPSIFT_TEST_ARTIFACTS") or tmp)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(driver: Any, page: Path, shot: Path) -> dict[str, Any]:
    """Load the page, read what the tests check from the DOM, and save a full-page screenshot."""
    shutil.copy(page, shot.with_suffix(".html"))
    driver.get(page.resolve().as_uri())
    driver.get_log("browser")  # nothing before this page
    facts = driver.execute_script(
        """
        const q = (s) => Array.from(document.querySelectorAll(s));
        const data = (s, a) => Object.fromEntries(q(s).map(e => [e.getAttribute(a), e.textContent.trim()]));
        return {
          title: document.title,
          sections: q('section').map(s => s.id),
          images: q('img').map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
          scripts: q('script').length,
          noImages: document.getElementById('no-images') !== null,
          statuses: data('td[data-status]', 'data-status'),
          okRows: document.querySelector('[data-ok-rows]').getAttribute('data-ok-rows'),
          viewRows: data('td[data-view-rows]', 'data-view-rows'),
          added: data('td[data-added]', 'data-added'),
          dropped: data('td[data-dropped]', 'data-dropped'),
          jaccard: data('td[data-jaccard]', 'data-jaccard'),
          spearman: data('td[data-spearman]', 'data-spearman'),
          histograms: q('svg.hist').map(s => ({column: s.dataset.column, total: +s.dataset.total,
            nulls: +s.dataset.nulls, lo: +s.dataset.lo, hi: +s.dataset.hi,
            bars: Array.from(s.querySelectorAll('rect.bar')).map(r => +r.dataset.count)})),
          density: q('svg.density').map(s => +s.dataset.total),
          captions: q('.card .cap').map(c => c.textContent),
          groups: q('.group').map(g => [g.dataset.group, g.querySelectorAll('.card').length]),
          histBox: (() => { const r = document.querySelector('svg.hist').getBoundingClientRect();
                            return [r.left, r.top + window.scrollY, r.width, r.height]; })(),
          height: document.body.scrollHeight,
        };
        """
    )
    facts["console"] = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    driver.set_window_size(1280, min(int(facts["height"]) + 40, 12000))
    driver.save_screenshot(str(shot))
    driver.set_window_size(1280, 1000)
    return facts


# --------------------------------------------------------------------------------------------------
# The two reports


@pytest.fixture(scope="module")
def demo_report(
    spark: SparkSession, scored: Any, browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The shared synthetic DataComp run (the demo's generator: embeddings only), its selections, its report."""
    out = tmp_path_factory.mktemp("report-demo")
    scores = scored.data["output"]["path"]
    select_job.run(
        spark,
        from_dict(SelectConfig, {"scores": {"path": scores}, "run_id": scored.result.run_id, "view_prefix": "rp_",
                                 "selections": DEMO_SELECTIONS}),
    )  # fmt: skip
    # The shared run has other tests' selections too (test_select_job's): the report names its own.
    data = {"scores": {"path": scores}, "run_id": scored.result.run_id, "output": str(out / "report.html"),
            "bins": 25, "samples": {"per_group": 4, "seed": 7},
            "selections": [s["name"] for s in DEMO_SELECTIONS]}  # fmt: skip
    result = report_job.run(spark, from_dict(ReportConfig, data))
    page = _open(browser, Path(result.output), _artifacts(out) / "report-demo.png")
    views = {s["name"]: {r["uid"] for r in spark.table(f"rp_{s['name']}").select("uid").collect()}
             for s in DEMO_SELECTIONS}  # fmt: skip
    return {"data": data, "result": result, "page": page, "frame": scored.frame, "views": views, "out": out}


def _write_tar(path: Path, samples: list[tuple[str, str, bytes, str, str]]) -> None:
    """A WebDataset tar of ``(key, uid, image bytes, image extension, caption)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, uid, image, ext, caption in samples:
            members = {ext: image, "txt": caption.encode(), "json": json.dumps({"uid": uid}).encode()}
            for suffix, blob in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(blob)
                tar.addfile(info, _stdio.BytesIO(blob))


@pytest.fixture(scope="module")
def image_report(spark: SparkSession, browser: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real images in two tars -> clipsift embed (tiny random model) -> score -> select -> report."""
    root = tmp_path_factory.mktemp("report-images")
    stamps = tuxpaint_stamps(limit=16)
    photos = skimage_photos()[:8]
    shard0 = [(f"0{i:04d}", f"stamp-{i}", png, "png", cap) for i, (_, png, cap) in enumerate(stamps)]
    shard0[3] = (*shard0[3][:4], HOSTILE)
    shard1 = [(f"1{i:04d}", f"photo-{i}", data, name.rsplit(".", 1)[1], f"a photo: {name.rsplit('.', 1)[0]}")
              for i, (name, data) in enumerate(photos)]  # fmt: skip
    _write_tar(root / "wds" / "00000.tar", shard0)
    _write_tar(root / "wds" / "00001.tar", shard1)
    model = {"name": TINY_NAME, "config_json": str(write_tiny_config(root / "model")), "device": "cpu", "threads": 1}
    embedded = embed_job.run(spark, from_dict(EmbedConfig, {
        "input": {"kind": "webdataset", "path": str(root / "wds")}, "model": model,
        "output": {"path": str(root / "emb")}, "embed": {"image_batch_size": 8, "text_batch_size": 8},
    }))  # fmt: skip
    scores = str(root / "scores")
    scored = score_job.run(spark, from_dict(ScoreConfig, {
        "input": {"kind": "table", "path": str(root / "emb"), "model": embedded.model_id},
        "output": {"path": scores}, "negclip": {"grouping": "pool", "batch_size": 8, "rounds": 2},
    }))  # fmt: skip
    select_job.run(spark, from_dict(SelectConfig, {"scores": {"path": scores}, "view_prefix": "rpi_", "selections": [
        {"name": "ncl50", "rule": "top_fraction", "column": "negclip_loss", "fraction": 0.5},
        {"name": "cs50", "rule": "top_fraction", "column": "clip_score", "fraction": 0.5},
    ]}))  # fmt: skip
    data = {"scores": {"path": scores}, "output": str(root / "page" / "report.html"),
            "samples": {"per_group": 6, "tail_fraction": 0.25, "thumbnail_px": 96}}  # fmt: skip
    result = report_job.run(spark, from_dict(ReportConfig, data))
    page = _open(browser, Path(result.output), _artifacts(root) / "report-images.png")
    frame = spark.read.format("delta").load(scores).drop("lineage").toPandas()
    return {"result": result, "page": page, "frame": frame, "run_id": scored.run_id, "rows": len(shard0) + len(shard1)}


# --------------------------------------------------------------------------------------------------
# In the browser


@pytest.mark.parametrize("which", ["demo_report", "image_report"])
def test_the_page_opens_whole_in_a_browser(which: str, request: pytest.FixtureRequest) -> None:
    page = request.getfixturevalue(which)["page"]
    assert page["sections"] == list(SECTIONS)
    assert page["console"] == []
    assert page["scripts"] == 0
    assert page["title"].startswith("clipsift report: run-")
    for image in page["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert all(count > 0 for _, count in page["groups"][:3])  # a score's top, bottom and cut-off rows


def test_thumbnails_come_from_the_tars_of_the_embed_run(image_report: dict[str, Any]) -> None:
    page, result = image_report["page"], image_report["result"]
    assert result.has_images and not page["noImages"]
    assert len(page["images"]) == sum(count for _, count in page["groups"]) > 6  # a picture on every card
    assert result.thumbnails == result.samples  # every sampled row's image was found and decoded
    assert all(max(i["width"], i["height"]) <= 96 for i in page["images"])  # thumbnailed on the executors


def test_captions_are_text_never_markup(image_report: dict[str, Any]) -> None:
    page = image_report["page"]
    assert page["title"] != "pwned" and page["scripts"] == 0
    frame = image_report["frame"]
    assert HOSTILE in set(frame["text"])  # the score table holds the caption as it was
    html = Path(image_report["result"].output).read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_without_images_the_page_says_so_and_shows_captions(demo_report: dict[str, Any]) -> None:
    page = demo_report["page"]
    assert page["noImages"] and page["images"] == []
    assert not demo_report["result"].has_images
    texts = set(demo_report["frame"]["text"])
    assert page["captions"] and all(c.rstrip("…") in texts or c in texts for c in page["captions"])


@pytest.mark.parametrize("which", ["demo_report", "image_report"])
def test_the_screenshot_is_not_blank(which: str, request: pytest.FixtureRequest) -> None:
    report = request.getfixturevalue(which)
    name = "report-demo.png" if which == "demo_report" else "report-images.png"
    out = report["out"] if which == "demo_report" else Path(report["result"].output).parents[1]
    shot = Image.open(_artifacts(out) / name).convert("RGB")
    assert shot.width == 1280 and shot.height > 1500
    pixels = np.asarray(shot)
    assert pixels.std() > 20  # not a flat page
    left, top, width, height = (int(v) for v in report["page"]["histBox"])
    plot = pixels[top : top + height, left : left + width].reshape(-1, 3).astype(int)
    bar_blue = (np.abs(plot - np.array([0x3B, 0x6F, 0xB6])).sum(axis=1) < 30).mean()
    assert bar_blue > 0.05  # the first histogram's bars are drawn where the DOM says the plot is


# --------------------------------------------------------------------------------------------------
# The numbers on the page, computed again here


def test_rows_by_status(image_report: dict[str, Any]) -> None:
    page, frame = image_report["page"], image_report["frame"]
    expected = frame["status"].value_counts().to_dict()
    assert {k: int(v) for k, v in page["statuses"].items()} == expected
    assert sum(expected.values()) == image_report["rows"]
    assert int(page["okRows"]) == expected["ok"]


def test_view_sizes_jaccard_and_baseline(demo_report: dict[str, Any]) -> None:
    page, views, frame = demo_report["page"], demo_report["views"], demo_report["frame"]
    ok = frame[frame["status"] == "ok"]
    for name, uids in views.items():
        assert int(page["viewRows"][name]) == len(uids)
        # The baseline: the clip_score selection of the same size (top rows, ties by uid).
        base = set(ok.sort_values(["clip_score", "uid"], ascending=[False, True]).head(len(uids))["uid"])
        assert int(page["added"][name]) == len(uids - base)
        assert int(page["dropped"][name]) == len(base - uids)
        for other, them in views.items():
            jaccard = len(uids & them) / len(uids | them)
            assert float(page["jaccard"][f"{name}|{other}"]) == pytest.approx(jaccard, abs=5e-4)
    assert int(page["added"]["ncl30"]) > 0  # negCLIPLoss keeps rows CLIPScore drops


def test_histograms_are_counted_in_spark(demo_report: dict[str, Any]) -> None:
    page, frame = demo_report["page"], demo_report["frame"]
    ok = frame[frame["status"] == "ok"]
    hists = {h["column"]: h for h in page["histograms"]}
    assert {"clip_score", "negclip_loss", "normsim_inf_tgt", "normsim2d_survived"} <= set(hists)
    for column, h in hists.items():
        values = ok[column].dropna().to_numpy(dtype=float)
        assert h["total"] == sum(h["bars"]) == len(values)
        assert h["nulls"] == ok[column].isna().sum()
        assert len(h["bars"]) == 25
        lo, hi = values.min(), values.max()
        assert (h["lo"], h["hi"]) == (lo, hi)
        if hi > lo:
            bins = np.clip(np.floor((values - lo) / (hi - lo) * 25), 0, 24).astype(int)
            assert h["bars"] == np.bincount(bins, minlength=25).tolist()
    assert page["density"] == [len(ok.dropna(subset=["clip_score", "negclip_loss"]))]


def test_spearman_between_scores(demo_report: dict[str, Any]) -> None:
    page, frame = demo_report["page"], demo_report["frame"]
    ok = frame[frame["status"] == "ok"]
    for a, b in (
        ("negclip_loss", "clip_score"),
        ("clip_score", "normsim_inf_tgt"),
        ("clip_score", "normsim2d_survived"),
    ):
        both = ok[[a, b]].dropna()
        ranks_a = ok[a].dropna().rank(method="average").loc[both.index]
        ranks_b = ok[b].dropna().rank(method="average").loc[both.index]
        rho = float(np.corrcoef(ranks_a, ranks_b)[0, 1])
        assert float(page["spearman"][f"{a}|{b}"]) == pytest.approx(rho, abs=5e-4)
    assert float(page["spearman"]["negclip_loss|clip_score"]) > 0.5


def test_the_same_config_gives_the_same_report(spark: SparkSession, demo_report: dict[str, Any]) -> None:
    again = {**demo_report["data"], "output": str(demo_report["out"] / "again.html")}
    report_job.run(spark, from_dict(ReportConfig, again))
    first = Path(demo_report["result"].output).read_bytes()
    assert Path(again["output"]).read_bytes() == first


def test_bad_names_are_one_clear_error(spark: SparkSession, demo_report: dict[str, Any]) -> None:
    from clipsift.jobs.config import ConfigError

    for key, value, match in (
        ("selections", ["nope"], r"selections\[0\].*'nope' is not a selection"),
        ("baseline", "nope", r"baseline.*'nope' is not a selection"),
        ("columns", ["text"], r"columns\[0\].*not a numeric score"),
    ):
        with pytest.raises(ConfigError, match=match):
            report_job.run(spark, from_dict(ReportConfig, {**demo_report["data"], key: value}))
