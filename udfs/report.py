"""The report's pure side: thumbnails (run on the executors) and the HTML page with its SVG plots (on the driver).

No Spark here. :func:`thumbnail_fn` is a ``mapInArrow`` function over image–caption rows (bytes or paths, as
:data:`~clipsift.udfs.schemas.PAIRS_ARROW`) that returns a small JPEG per row; :func:`render` turns a
:class:`ReportData` (plain numbers, computed in Spark by :mod:`clipsift.jobs.report`) into one self-contained HTML
page: inline CSS, inline SVG, thumbnails as ``data:`` URIs, no script and nothing fetched at view time. Every
caption and error is web text and goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from clipsift.udfs.decode import decode_image
from clipsift.udfs.readers import FileTooLargeError, read_bytes

#: What :func:`thumbnail_fn` returns per row.
THUMBNAIL_ARROW = pa.schema(
    [("uid", pa.string()), ("thumbnail", pa.binary()), ("image_status", pa.string()), ("error", pa.string())]
)
THUMBNAIL_DDL = "uid string, thumbnail binary, image_status string, error string"

# --------------------------------------------------------------------------------------------------
# Thumbnails (executor side)


def thumbnail(data: bytes | None, *, px: int, max_pixels: int = 50_000_000) -> tuple[bytes | None, str, str | None]:
    """A JPEG of at most ``px`` pixels on its longer side, from the bytes of one image, never raising for bad bytes.

    The image is decoded as ``clipsift embed`` decodes it (:func:`~clipsift.udfs.decode.decode_image`: frame 0,
    EXIF orientation, alpha onto white, 8-bit RGB).

    Returns:
        ``(jpeg, "ok", None)``, or ``(None, status, error)`` with the decoder's status.
    """
    img, status, error = decode_image(data, max_pixels=max_pixels)
    if img is None:
        return None, status, error
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=82, optimize=True)
    return buf.getvalue(), status, None


def thumbnail_fn(
    px: int, max_image_bytes: int, max_pixels: int, fetch: Callable[[str], bytes] | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function: rows with ``uid`` and ``image`` (bytes) or ``image_path`` -> :data:`THUMBNAIL_ARROW`.

    An image path is read with :func:`~clipsift.udfs.readers.read_bytes` (local, ``/Volumes/``, object stores),
    refused over ``max_image_bytes``; a failure is the row's status (``unreadable_file``, ``image_too_large``).
    """

    def read(uri: str) -> bytes:
        return fetch(uri) if fetch is not None else read_bytes(uri, max_bytes=max_image_bytes)

    def one(image: bytes | None, path: str | None) -> tuple[bytes | None, str, str | None]:
        if image is None and path is not None:
            try:
                image = read(path)
            except FileTooLargeError as exc:
                return None, "image_too_large", str(exc)[:300]
            except Exception as exc:
                return None, "unreadable_file", f"{type(exc).__name__}: {str(exc)[:200]}"
        if image is not None and len(image) > max_image_bytes:
            return None, "image_too_large", f"inline image of {len(image):,} bytes, over {max_image_bytes:,}"
        return thumbnail(image, px=px, max_pixels=max_pixels)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            names = batch.schema.names
            uids = batch.column(names.index("uid")).to_pylist()
            images = batch.column(names.index("image")).to_pylist() if "image" in names else [None] * len(uids)
            paths = batch.column(names.index("image_path")).to_pylist() if "image_path" in names else [None] * len(uids)
            out = [one(image, path) for image, path in zip(images, paths, strict=True)]
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(uids, pa.string()),
                    pa.array([o[0] for o in out], pa.binary()),
                    pa.array([o[1] for o in out], pa.string()),
                    pa.array([o[2] for o in out], pa.string()),
                ],
                schema=THUMBNAIL_ARROW,
            )

    return run


# --------------------------------------------------------------------------------------------------
# What the page shows: plain data, computed in Spark


@dataclass(frozen=True)
class StatusRow:
    """Rows of one status in the run, with a few example errors ``(uid, error)``."""

    status: str
    rows: int
    examples: tuple[tuple[str | None, str | None], ...] = ()


@dataclass(frozen=True)
class RunInfo:
    """The score run: its runs-table row and its rows by status."""

    run_id: str
    scores: str
    input: str
    teacher: str
    started_at: str
    seconds: float
    rows_in: int
    ok_rows: int
    code_version: str
    statuses: tuple[StatusRow, ...]
    lineage: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Histogram:
    """Counts of ``column``'s non-null values in ``len(counts)`` equal bins over ``[lo, hi]``; ``cutoffs`` are the
    views' cut-offs on this column, ``(view, value)``."""

    column: str
    lo: float
    hi: float
    counts: tuple[int, ...]
    nulls: int
    cutoffs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Density:
    """2-D counts: ``counts[j][i]`` rows with ``x`` in bin i and ``y`` in bin j (equal bins over the ranges)."""

    x: str
    y: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    counts: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Correlations:
    """Spearman rank correlations between score columns, on ``rows`` rows (``exact``: the whole run)."""

    columns: tuple[str, ...]
    matrix: tuple[tuple[float | None, ...], ...]
    rows: int
    exact: bool


@dataclass(frozen=True)
class ViewInfo:
    """One selection of the run, and how it differs from its baseline."""

    name: str
    view: str
    rule: str
    rows: int
    pool_rows: int
    params: Mapping[str, object]
    cutoffs: Mapping[str, object]
    baseline: str
    baseline_rows: int
    added: int
    """Rows in this view and not in its baseline."""
    dropped: int
    """Rows in the baseline and not in this view."""


@dataclass(frozen=True)
class Overlap:
    """Pairwise intersections of the views (``both[i][j]``; the diagonal is each view's size)."""

    names: tuple[str, ...]
    both: tuple[tuple[int, ...], ...]

    def jaccard(self, i: int, j: int) -> float:
        union = self.both[i][i] + self.both[j][j] - self.both[i][j]
        return self.both[i][j] / union if union else 1.0


@dataclass(frozen=True)
class Sample:
    """One row shown: caption, scores and its thumbnail (JPEG bytes) or why there is none."""

    uid: str
    caption: str | None
    scores: Mapping[str, float | None]
    thumbnail: bytes | None = None
    image_status: str | None = None


@dataclass(frozen=True)
class SampleGroup:
    """A group of sampled rows: a score's ``top`` / ``bottom`` / ``cutoff``, or a view's ``kept`` / ``dropped``."""

    section: str
    """``score`` or ``view``."""
    key: str
    """The score column or the view name."""
    kind: str
    title: str
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class ReportData:
    """Everything one report page shows."""

    run: RunInfo
    columns: tuple[str, ...]
    histograms: tuple[Histogram, ...]
    density: Density | None
    density_note: str
    correlations: Correlations | None
    views: tuple[ViewInfo, ...]
    overlap: Overlap | None
    baseline_note: str
    groups: tuple[SampleGroup, ...]
    images_note: str
    has_images: bool
    seed: int
    caption_chars: int = 200


# --------------------------------------------------------------------------------------------------
# Rendering

SECTIONS = ("run", "scores", "selections", "samples")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:0 16px 48px;
color:#1d2330;background:#fff}
h1{font-size:1.6em;margin:20px 0 4px}h2{border-bottom:2px solid #dde3ee;padding-bottom:4px;margin-top:36px}
h3{margin:22px 0 8px;font-size:1.05em}
nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
td,th{border:1px solid #dde3ee;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f3f6fb}td.l,th.l{text-align:left}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88em}
.note{background:#fff7e0;border:1px solid #f0d98c;padding:8px 12px;margin:10px 0}
.plots{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid #dde3ee;padding:6px;background:#fbfcfe}
figcaption{font-size:.85em;color:#4a5366}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:170px;border:1px solid #dde3ee;padding:5px;font-size:.78em;background:#fbfcfe;overflow-wrap:anywhere}
.card img{display:block;max-width:160px;max-height:160px;margin:0 auto 4px}
.noimg{height:64px;display:flex;align-items:center;justify-content:center;background:#eef1f6;color:#6b7385;
margin-bottom:4px;text-align:center}
.cap{margin:2px 0 4px}
.sc{color:#4a5366}
details{margin:6px 0}
"""

_SCORE_KINDS = {"top": "top", "bottom": "bottom", "cutoff": "around the cut-off"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | int | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"


def _blue(t: float) -> str:
    """A colour from white (0) to dark blue (1)."""
    t = min(max(t, 0.0), 1.0)
    r, g, b = (int(255 - t * (255 - c)) for c in (24, 64, 140))
    return f"#{r:02x}{g:02x}{b:02x}"


def _diverging(v: float | None) -> str:
    """Red for -1, white for 0, blue for 1."""
    if v is None or not math.isfinite(v):
        return "#ffffff"
    t = min(abs(v), 1.0)
    c = (40, 90, 170) if v >= 0 else (190, 50, 40)
    r, g, b = (int(255 - t * (255 - x)) for x in c)
    return f"#{r:02x}{g:02x}{b:02x}"


def histogram_svg(h: Histogram, width: int = 360, height: int = 170) -> str:
    """An inline SVG bar chart of one :class:`Histogram`, its cut-offs as red lines."""
    left, right, top, bottom = 44, 8, 8, 30
    pw, ph = width - left - right, height - top - bottom
    peak = max(h.counts) if h.counts else 0
    n = len(h.counts)
    total = sum(h.counts)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" data-column="{_e(h.column)}" data-total="{total}" '
        f'data-nulls="{h.nulls}" data-lo="{h.lo!r}" data-hi="{h.hi!r}">',
        f"<title>{_e(h.column)}: {total:,} rows in {n} bins</title>",
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#ffffff" stroke="#c9d1e0"/>',
    ]
    for i, c in enumerate(h.counts):
        bh = ph * c / peak if peak else 0.0
        x = left + pw * i / n
        parts.append(
            f'<rect class="bar" data-count="{c}" x="{x:.2f}" y="{top + ph - bh:.2f}" '
            f'width="{max(pw / n - 0.6, 0.4):.2f}" height="{bh:.2f}" fill="#3b6fb6"/>'
        )
    span = h.hi - h.lo
    for view, value in h.cutoffs:
        if span > 0 and h.lo <= value <= h.hi:
            x = left + pw * (value - h.lo) / span
            parts.append(
                f'<line class="cut" x1="{x:.2f}" x2="{x:.2f}" y1="{top}" y2="{top + ph}" stroke="#d0342c" '
                f'stroke-width="1.5"><title>{_e(view)}: {_num(value)}</title></line>'
            )
    parts += [
        f'<text x="{left}" y="{height - 14}" font-size="10">{_e(_num(h.lo))}</text>',
        f'<text x="{left + pw}" y="{height - 14}" font-size="10" text-anchor="end">{_e(_num(h.hi))}</text>',
        f'<text x="{left + pw / 2}" y="{height - 2}" font-size="11" text-anchor="middle">{_e(h.column)}</text>',
        f'<text x="{left - 4}" y="{top + 9}" font-size="10" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 4}" y="{top + ph}" font-size="10" text-anchor="end">0</text>',
        "</svg>",
    ]
    return "".join(parts)


def density_svg(d: Density, size: int = 380) -> str:
    """An inline SVG heat map of a :class:`Density` (log-scaled shades)."""
    left, bottom, top, right = 66, 36, 8, 8
    pw, ph = size - left - right, size - top - bottom
    ny = len(d.counts)
    nx = len(d.counts[0]) if ny else 0
    peak = max((c for row in d.counts for c in row), default=0)
    total = sum(c for row in d.counts for c in row)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="density" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}" role="img" data-x="{_e(d.x)}" data-y="{_e(d.y)}" data-total="{total}">',
        f"<title>{_e(d.y)} against {_e(d.x)}: {total:,} rows</title>",
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#ffffff" stroke="#c9d1e0"/>',
    ]
    cw, ch = (pw / nx if nx else 0), (ph / ny if ny else 0)
    for j, row in enumerate(d.counts):
        for i, c in enumerate(row):
            if c:
                shade = _blue(0.12 + 0.88 * math.log1p(c) / math.log1p(peak))
                y = top + ph - (j + 1) * ch
                parts.append(
                    f'<rect x="{left + i * cw:.2f}" y="{y:.2f}" width="{cw + 0.3:.2f}" height="{ch + 0.3:.2f}" '
                    f'fill="{shade}"><title>{c:,}</title></rect>'
                )
    (x0, x1), (y0, y1) = d.x_range, d.y_range
    parts += [
        f'<text x="{left}" y="{size - 20}" font-size="10">{_e(_num(x0))}</text>',
        f'<text x="{left + pw}" y="{size - 20}" font-size="10" text-anchor="end">{_e(_num(x1))}</text>',
        f'<text x="{left + pw / 2}" y="{size - 4}" font-size="11" text-anchor="middle">{_e(d.x)}</text>',
        f'<text x="{left - 4}" y="{top + ph}" font-size="10" text-anchor="end">{_e(_num(y0))}</text>',
        f'<text x="{left - 4}" y="{top + 10}" font-size="10" text-anchor="end">{_e(_num(y1))}</text>',
        f'<text x="10" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 10 {top + ph / 2})">{_e(d.y)}</text>',
        "</svg>",
    ]
    return "".join(parts)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], attrs: str = "") -> str:
    """A table from already escaped cell HTML (a cell starting with ``<td`` or ``<th`` is taken as is)."""
    th = "".join(f'<th class="l">{h}</th>' if i == 0 else f"<th>{h}</th>" for i, h in enumerate(head))
    body = []
    for row in rows:
        cells = [c if c.startswith(("<td", "<th")) else (f'<td class="l">{c}</td>' if i == 0 else f"<td>{c}</td>")
                 for i, c in enumerate(row)]  # fmt: skip
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table{attrs}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _run_section(r: RunInfo) -> str:
    facts = [
        ("run id", f"<code>{_e(r.run_id)}</code>"),
        ("score table", f"<code>{_e(r.scores)}</code>"),
        ("input", f"<code>{_e(r.input)}</code>"),
        ("teacher", f"<code>{_e(r.teacher)}</code>"),
        ("started", _e(r.started_at)),
        ("scoring time", f'<span data-seconds="{r.seconds!r}">{r.seconds:,.1f} s</span>'),
        ("rows in", f'<span data-rows-in="{r.rows_in}">{r.rows_in:,}</span>'),
        ("rows ok", f'<span data-ok-rows="{r.ok_rows}">{r.ok_rows:,}</span>'),
        ("code version", _e(r.code_version)),
    ]
    out = [_table(["", ""], [[_e(k), v] for k, v in facts], ' class="facts"')]
    rows = []
    for s in r.statuses:
        examples = "<br>".join(
            f"<code>{_e(uid if uid is not None else '(null uid)')}</code>: {_e(err or '')}" for uid, err in s.examples
        )
        rows.append([f"<code>{_e(s.status)}</code>", f'<td data-status="{_e(s.status)}">{s.rows}</td>',
                     f'<td class="l">{examples}</td>'])  # fmt: skip
    out.append("<h3>Rows by status</h3>")
    out.append(_table(["status", "rows", "example errors"], rows, ' id="statuses"'))
    lineage = json.dumps(r.lineage, indent=2, sort_keys=True, default=str)
    out.append(f'<details><summary>Lineage</summary><pre class="mono">{_e(lineage)}</pre></details>')
    return "".join(out)


def _scores_section(data: ReportData) -> str:
    out = ["<h3>Histograms</h3>"]
    if not data.histograms:
        out.append('<p class="note">No score column has a value in this run.</p>')
    figures = []
    for h in data.histograms:
        cuts = "; ".join(f"{_e(v)} at {_num(c)}" for v, c in h.cutoffs)
        caption = f"{_e(h.column)}: {sum(h.counts):,} rows" + (f", {h.nulls:,} null" if h.nulls else "")
        caption += f"<br>cut-offs: {cuts}" if cuts else ""
        figures.append(f"<figure>{histogram_svg(h)}<figcaption>{caption}</figcaption></figure>")
    out.append(f'<div class="plots">{"".join(figures)}</div>')
    out.append("<h3>Density</h3>")
    if data.density is not None:
        d = data.density
        out.append(
            f'<div class="plots"><figure>{density_svg(d)}<figcaption>{_e(d.y)} against {_e(d.x)} '
            f"({len(d.counts[0])}×{len(d.counts)} bins, shade ∝ log count)</figcaption></figure></div>"
        )
    else:
        out.append(f'<p class="note">{_e(data.density_note)}</p>')
    out.append("<h3>Rank correlations (Spearman)</h3>")
    c = data.correlations
    if c is None or len(c.columns) < 2:
        out.append('<p class="note">Fewer than two score columns: no correlations.</p>')
    else:
        how = "all ok rows of the run" if c.exact else f"a seeded sample of {c.rows:,} ok rows"
        out.append(
            f"<p>Ranks computed in Spark on {how} (average ranks for ties). The negCLIPLoss authors report ρ ≈ 0.97 "
            "between negCLIPLoss and CLIPScore on DataComp; this run's value is in the table.</p>"
        )
        rows = []
        for i, a in enumerate(c.columns):
            cells = [f"<code>{_e(a)}</code>"]
            for j, b in enumerate(c.columns):
                v = c.matrix[i][j]
                style = f"background:{_diverging(v)}"
                cells.append(f'<td data-spearman="{_e(a)}|{_e(b)}" style="{style}">{_num(v, 3)}</td>')
            rows.append(cells)
        out.append(_table(["", *(f"<code>{_e(col)}</code>" for col in c.columns)], rows, ' id="spearman"'))
    return "".join(out)


def _selections_section(data: ReportData) -> str:
    if not data.views:
        return '<p class="note">No selection is recorded for this run (run clipsift select first).</p>'
    out = [f"<p>{_e(data.baseline_note)}</p>"]
    rows = []
    for v in data.views:
        cut = json.dumps(v.cutoffs, sort_keys=True, default=str)
        params = {k: p for k, p in v.params.items() if p not in (None, [], (), {}) and k != "name"}
        rows.append([
            f"<code>{_e(v.name)}</code>", f"<code>{_e(v.rule)}</code>",
            f'<td data-view-rows="{_e(v.name)}">{v.rows}</td>',
            f"{100 * v.rows / v.pool_rows:.1f}%" if v.pool_rows else "–",
            f'<td class="l mono">{_e(json.dumps(params, sort_keys=True, default=str))}</td>',
            f'<td class="l mono">{_e(cut)}</td>',
            f"<code>{_e(v.baseline)}</code>",
            f'<td data-added="{_e(v.name)}">{v.added}</td>',
            f'<td data-dropped="{_e(v.name)}">{v.dropped}</td>',
        ])  # fmt: skip
    head = ["view", "rule", "rows", "of ok rows", "parameters", "cut-offs", "baseline", "adds", "drops"]
    out.append(_table(head, rows, ' id="views"'))
    if data.overlap is not None:
        o = data.overlap
        out.append("<h3>Overlap (Jaccard: |A ∩ B| / |A ∪ B|)</h3>")
        rows = []
        for i, a in enumerate(o.names):
            cells = [f"<code>{_e(a)}</code>"]
            for j, b in enumerate(o.names):
                jac = o.jaccard(i, j)
                style = f"background:{_blue(jac * 0.8)};color:{'#fff' if jac > 0.6 else '#1d2330'}"
                cells.append(
                    f'<td data-jaccard="{_e(a)}|{_e(b)}" data-both="{o.both[i][j]}" style="{style}" '
                    f'title="{o.both[i][j]:,} rows in both">{jac:.3f}</td>'
                )
            rows.append(cells)
        out.append(_table(["", *(f"<code>{_e(n)}</code>" for n in o.names)], rows, ' id="overlap"'))
    return "".join(out)


def _card(s: Sample, columns: Sequence[str], has_images: bool, caption_chars: int, first: str = "") -> str:
    if s.thumbnail is not None:
        b64 = base64.b64encode(s.thumbnail).decode("ascii")
        picture = f'<img alt="{_e(s.uid)}" src="data:image/jpeg;base64,{b64}">'
    elif has_images:
        picture = f'<div class="noimg">no image: {_e(s.image_status or "not found")}</div>'
    else:
        picture = ""
    caption = s.caption if s.caption is not None else "(no caption)"
    if len(caption) > caption_chars:
        caption = caption[:caption_chars] + "…"
    shown = [first, *(c for c in columns if c != first)] if first in s.scores else list(columns)
    scores = " · ".join(
        (f"<b>{_e(c)} {_num(s.scores.get(c), 3)}</b>" if c == first else f"{_e(c)} {_num(s.scores.get(c), 3)}")
        for c in shown
        if c in s.scores
    )
    return (
        f'<div class="card" data-uid="{_e(s.uid)}">{picture}<div class="cap">{_e(caption)}</div>'
        f'<div class="sc">{scores}</div><div class="mono sc">{_e(s.uid)}</div></div>'
    )


def _samples_section(data: ReportData) -> str:
    out = []
    if not data.has_images:
        out.append(f'<p class="note" id="no-images">{_e(data.images_note)}</p>')
    elif data.images_note:
        out.append(f"<p>{_e(data.images_note)}</p>")
    out.append(f"<p>Rows drawn with seed {data.seed} (the same config gives the same rows).</p>")
    for section, heading in (("score", "By score"), ("view", "By selection, against its baseline")):
        groups = [g for g in data.groups if g.section == section]
        if not groups:
            continue
        out.append(f"<h3>{heading}</h3>")
        for g in groups:
            first = g.key if g.section == "score" else ""
            cards = "".join(_card(s, data.columns, data.has_images, data.caption_chars, first) for s in g.samples)
            body = cards or '<p class="sc">no rows</p>'
            out.append(
                f'<div class="group" data-group="{_e(g.section)}:{_e(g.key)}:{_e(g.kind)}">'
                f'<h4>{_e(g.title)} ({len(g.samples)})</h4><div class="grid">{body}</div></div>'
            )
    return "".join(out)


def render(data: ReportData) -> str:
    """The whole page as one HTML string (deterministic: the same data gives the same bytes)."""
    title = f"clipsift report: {data.run.run_id}"
    nav = "".join(f'<a href="#{s}">{s.capitalize()}</a>' for s in SECTIONS)
    body = [
        ("run", "Run", _run_section(data.run)),
        ("scores", "Scores", _scores_section(data)),
        ("selections", "Selections", _selections_section(data)),
        ("samples", "Samples", _samples_section(data)),
    ]
    sections = "".join(f'<section id="{sid}"><h2>{head}</h2>{content}</section>' for sid, head, content in body)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="sc">score table <code>{_e(data.run.scores)}</code></p><nav>{nav}</nav>'
        f"{sections}</body></html>\n"
    )
