"""Unit tests of ``clipsift report``'s pure side (no Spark): its config, thumbnails, and the HTML page."""

from __future__ import annotations

import html.parser
import io
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from PIL import Image

from clipsift.jobs.config import ConfigError, ReportConfig, from_dict, load
from clipsift.udfs.report import (
    Correlations,
    Density,
    Histogram,
    Overlap,
    ReportData,
    RunInfo,
    Sample,
    SampleGroup,
    StatusRow,
    ViewInfo,
    histogram_svg,
    render,
    thumbnail,
    thumbnail_fn,
)
from tests.support.corpus import broken_image_corpus

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "report.yaml"
HOSTILE = '<img src=x onerror="alert(1)"> & <script>alert(2)</script>'


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _data(*, has_images: bool = True) -> ReportData:
    run = RunInfo(
        run_id="run-1", scores="/s", input="/in", teacher="b32", started_at="2026-01-01", seconds=1.5, rows_in=12,
        ok_rows=10, code_version="0", statuses=(StatusRow("ok", 10), StatusRow("zero_norm", 2, (("u<1>", HOSTILE),))),
        lineage={"teacher": "b32"},
    )  # fmt: skip
    sample = Sample("u1", HOSTILE, {"clip_score": 0.3}, _thumb() if has_images else None, None)
    return ReportData(
        run=run, columns=("clip_score", "negclip_loss"),
        histograms=(Histogram("clip_score", 0.0, 1.0, (1, 4, 5), 0, (("v", 0.5),)),),
        density=Density("clip_score", "negclip_loss", (0.0, 1.0), (-1.0, 0.0), ((1, 0), (2, 7))), density_note="",
        correlations=Correlations(("clip_score", "negclip_loss"), ((1.0, 0.9), (0.9, 1.0)), 10, True),
        views=(ViewInfo("v", "`v`", "top_fraction", 3, 10, {"column": "clip_score"}, {}, "clip_score top 3", 3, 1, 1),),
        overlap=Overlap(("v",), ((3,),)), baseline_note="b",
        groups=(SampleGroup("score", "clip_score", "top", "clip_score: top", (sample,)),),
        images_note="" if has_images else "No image access", has_images=has_images, seed=0,
    )  # fmt: skip


def _thumb() -> bytes:
    jpeg, status, _ = thumbnail(_png(300, 150), px=64)
    assert jpeg is not None and status == "ok"
    return jpeg


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, Any]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_thumbnails_keep_the_aspect_and_fit_the_box() -> None:
    jpeg, status, error = thumbnail(_png(300, 150), px=64)
    assert status == "ok" and error is None and jpeg is not None
    assert Image.open(io.BytesIO(jpeg)).size == (64, 32)


@pytest.mark.parametrize(("name", "data", "expected"), [c for c in broken_image_corpus() if c[2] != "ok"][:12])
def test_a_broken_image_gives_the_decoders_status(name: str, data: bytes | None, expected: str) -> None:
    jpeg, status, error = thumbnail(data, px=64, max_pixels=50_000_000)
    assert jpeg is None and status == expected and error


def test_thumbnail_fn_reads_paths_and_names_failures(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(40, 20))
    (tmp_path / "big.png").write_bytes(_png(400, 400))
    batch = pa.RecordBatch.from_pydict(
        {
            "uid": ["a", "gone", "big", "inline"],
            "image": [None, None, None, _png(10, 10)],
            "image_path": [str(tmp_path / "a.png"), str(tmp_path / "gone.png"), str(tmp_path / "big.png"), None],
        }
    )
    limit = len(_png(40, 20)) + 10
    out = pa.Table.from_batches(list(thumbnail_fn(16, limit, 50_000_000)(iter([batch])))).to_pylist()
    by_uid = {r["uid"]: r for r in out}
    assert Image.open(io.BytesIO(by_uid["a"]["thumbnail"])).size == (16, 8)
    assert by_uid["gone"]["image_status"] == "unreadable_file" and by_uid["gone"]["thumbnail"] is None
    assert by_uid["big"]["image_status"] == "image_too_large"
    assert by_uid["inline"]["image_status"] == "ok"


def test_captions_and_errors_are_escaped() -> None:
    page = render(_data())
    tags = _tags(page)
    assert not any(t == "script" for t, _ in tags)
    assert not any("onerror" in attrs for _, attrs in tags)
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "u&lt;1&gt;" in page


def test_the_page_is_self_contained() -> None:
    page = render(_data())
    for tag, attrs in _tags(page):
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:  # only inline data or in-page anchors: nothing fetched at view time
                assert value.startswith(("data:", "#")), (tag, key, value)
    assert [a["id"] for t, a in _tags(page) if t == "section"] == ["run", "scores", "selections", "samples"]
    assert render(_data()) == page  # deterministic


def test_histogram_svg_has_one_bar_per_bin_and_the_cutoff() -> None:
    svg = histogram_svg(Histogram("x", -1.0, 1.0, (0, 3, 9, 2), 5, (("view", 0.0),)))
    assert re.findall(r'data-count="(\d+)"', svg) == ["0", "3", "9", "2"]
    assert 'data-total="14"' in svg and 'data-nulls="5"' in svg
    assert svg.count('class="cut"') == 1


def test_without_images_the_page_says_so() -> None:
    page = render(_data(has_images=False))
    assert 'id="no-images"' in page and "<img" not in page
    assert "<img" in render(_data())


def test_jaccard() -> None:
    o = Overlap(("a", "b"), ((4, 2), (2, 6)))
    assert o.jaccard(0, 1) == pytest.approx(2 / 8) and o.jaccard(0, 0) == 1.0
    assert Overlap(("a", "b"), ((0, 0), (0, 0))).jaccard(0, 1) == 1.0


# --------------------------------------------------------------------------------------------------
# Config


def _error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(ReportConfig, {"scores": {"path": "/s"}, **data})
    return info.value


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"bins": 1}, "bins"),
        ({"output": "report.pdf"}, "output"),
        ({"samples": {"per_group": 0}}, "samples.per_group"),
        ({"samples": {"tail_fraction": 0.9}}, "samples.tail_fraction"),
        ({"images": {"kind": "none", "path": "/x"}}, "images.path"),
        ({"images": {"kind": "webdataset"}}, "images.path"),
        ({"images": {"kind": "table", "path": "/t"}}, "images"),
        ({"columns": ["a b"]}, "columns[0]"),
        ({"colums": ["a"]}, "colums"),
        ({"density_bins": 500}, "density_bins"),
    ],
)
def test_bad_keys_are_named(data: dict[str, Any], key: str) -> None:
    assert _error(data).key == key


def test_the_example_loads_and_mentions_every_key() -> None:
    cfg = load(ReportConfig, EXAMPLE)
    assert cfg.images.kind == "auto" and cfg.samples.seed == 0
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)
    images = {"kind", "path", "table", "format", "uid_col", "caption_col", "image_col", "image_path_col"}
    for name in ReportConfig.__dataclass_fields__:
        assert name in data, name
    for section, names in (("images", images), ("samples", {"per_group", "tail_fraction", "seed"})):
        for name in names:
            assert re.search(rf"\b{name}\b", text), f"{section}.{name}"


def test_images_section_is_embeds_input() -> None:
    cfg = from_dict(ReportConfig, {"scores": {"path": "/s"}, "images": {"kind": "table", "path": "/t",
                                                                        "image_path_col": "p"}})  # fmt: skip
    pairs = cfg.images.embed_input()
    assert (pairs.kind, pairs.path, pairs.image_path_col) == ("table", "/t", "p")
