"""The label report: one self-contained HTML page a person opens to check the teacher's labels at a glance.

`dkit label` calls `write_report(run/labels/report.html, records=..., ...)` with the same records it
wrote to labels.jsonl. The page has these sections (each a `<section id=...>`):

    summary         teacher, task, counts; a red banner when the teacher is untrained (random)
    classes         images (and boxes) per class as bars, classes with no labels included
    confidence      histogram of label confidences with the review threshold; CLIP cosines if present
    contact-sheets  per class, the least-confident images first, boxes drawn for detection
    review          abstained images with their reason, and labels below the review threshold
    skipped         files that could not be used, and why
    quality         metric -> value tables (only when given)
    settings        the settings the labels were made with, as YAML

Everything is inline (JPEG thumbnails as base64 data URIs, CSS, SVG charts); no JavaScript and no
external URL, so the page works offline and can be e-mailed. Only the images shown are decoded,
each at most once, so a report over 10,000 records stays cheap. Every string from a record or the
settings is HTML-escaped: file names come from strangers.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from dkit.core.files import atomic_write
from dkit.core.records import LabelRecord
from dkit.distill.images import load_image

log = logging.getLogger(__name__)

RANDOM_BANNER = "UNTRAINED (random) teacher: these labels are meaningless — for tests only"
TASKS = ("detect", "classify")
# Distinct colours, RGB, one per class in `names` order (wrapping round for long ontologies).
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0), (255, 225, 25),
           (0, 0, 128), (128, 128, 0))
PLACEHOLDER_GREY = 160
_ESC = html.escape

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 48px;color:#222}
h1{margin:16px 0 4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
nav a{margin-right:12px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner-random{background:#c00;color:#fff;font-size:22px;font-weight:bold;padding:16px;margin:12px 0;
border:4px solid #600;text-align:center}
.bar{height:14px;min-width:1px}.zero{color:#c00;font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:%(thumb)dpx}figure img{display:block;border:1px solid #ccc}
figcaption{font-size:11px;word-break:break-all}
.placeholder{outline:2px dashed #999}.more{font-style:italic}
pre{background:#f6f6f6;padding:8px;overflow:auto}
svg text{font-size:10px;fill:#444}
"""


def write_report(path: Path, *, records: list[LabelRecord], names: list[str], task: str, teacher: str,
                 random_teacher: bool, settings: dict, review_below: float, quality: dict | None = None,
                 title: str = "", max_per_class: int = 24, thumb: int = 160, max_review: int = 60) -> None:
    """Write the report for `records` (labels.jsonl rows) to `path`, atomically (temp file + os.replace)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if thumb < 8 or max_per_class < 0 or max_review < 0:
        raise ValueError(f"expected thumb >= 8, max_per_class >= 0, max_review >= 0; "
                         f"got thumb={thumb}, max_per_class={max_per_class}, max_review={max_review}")
    path = Path(path)
    classes = list(names) + sorted({lab["class"] for r in records for lab in _labels(r)} - set(names))
    colours = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}
    thumbs = _Thumbs(thumb)
    title = title or "dkit label report"
    nav = " ".join(f'<a href="#{s}">{s}</a>' for s in
                   ("summary", "classes", "confidence", "contact-sheets", "review", "skipped",
                    *(("quality",) if quality is not None else ()), "settings"))
    body = [
        _summary(records, task=task, teacher=teacher, random_teacher=random_teacher, title=title),
        _classes(records, classes, colours, task=task),
        _confidence(records, review_below),
        _contact_sheets(records, classes, colours, thumbs, task=task, max_per_class=max_per_class),
        _review(records, colours, thumbs, task=task, review_below=review_below, max_review=max_review),
        _skipped(records),
        _quality(quality) if quality is not None else "",
        f'<section id="settings"><h2>Settings</h2><pre>{_ESC(_yaml(settings))}</pre></section>',
    ]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_ESC(title)}</title>'
            f"<style>{_CSS % {'thumb': thumb}}</style></head>\n<body>\n<nav>{nav}</nav>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")
    atomic_write(path, page)


# ---- sections ------------------------------------------------------------------------------------------------------

def _summary(records: list[LabelRecord], *, task: str, teacher: str, random_teacher: bool, title: str) -> str:
    used = [r for r in records if _usable(r)]
    rows = [("files", len(records)), ("labelled images", sum(1 for r in used if _labels(r)))]
    if task == "detect":
        rows += [("boxes", sum(len(_labels(r)) for r in used)),
                 ("background images", sum(1 for r in used if not _labels(r) and r.split))]
    splits = [r.split for r in records]
    rows += [("in data set", sum(1 for s in splits if s)), ("train", splits.count("train")),
             ("val", splits.count("val")), ("abstained", sum(1 for r in records if r.abstained)),
             ("skipped", sum(1 for r in records if r.skipped)),
             ("normalised", sum(1 for r in records if r.normalised))]
    table = "".join(f'<tr data-count="{_ESC(k)}"><th>{_ESC(k)}</th><td class="num">{v}</td></tr>' for k, v in rows)
    banner = f'<div class="banner-random" role="alert">{_ESC(RANDOM_BANNER)}</div>' if random_teacher else ""
    return (f'<section id="summary"><h1>{_ESC(title)}</h1>{banner}'
            f"<p>teacher <code>{_ESC(teacher)}</code>, task <b>{_ESC(task)}</b></p><table>{table}</table></section>")


def _classes(records: list[LabelRecord], classes: list[str], colours: dict, *, task: str) -> str:
    images = dict.fromkeys(classes, 0)
    boxes = dict.fromkeys(classes, 0)
    for r in filter(_usable, records):
        seen = set()
        for lab in _labels(r):
            boxes[lab["class"]] += 1
            seen.add(lab["class"])
        for c in seen:
            images[c] += 1
    top = max(images.values(), default=0) or 1
    head = "<tr><th>class</th><th>images</th>" + ("<th>boxes</th>" if task == "detect" else "") + "<th></th></tr>"
    rows = []
    for c in classes:
        name = f'<span class="zero">{_ESC(c)} (no labels)</span>' if images[c] == 0 else _ESC(c)
        bar = f'<div class="bar" style="width:{300 * images[c] / top:.0f}px;background:{_hex(colours[c])}"></div>'
        box_cell = f'<td class="num" data-boxes="{boxes[c]}">{boxes[c]}</td>' if task == "detect" else ""
        rows.append(f'<tr data-class="{_ESC(c)}"><td>{name}</td><td class="num" data-images="{images[c]}">'
                    f"{images[c]}</td>{box_cell}<td>{bar}</td></tr>")
    return f'<section id="classes"><h2>Classes</h2><table>{head}{"".join(rows)}</table></section>'


def _confidence(records: list[LabelRecord], review_below: float) -> str:
    used = list(filter(_usable, records))
    conf = [float(lab["confidence"]) for r in used for lab in _labels(r)]
    parts = ['<section id="confidence"><h2>Confidence</h2>',
             f"<p>{len(conf)} label confidences; the red line is the review threshold {review_below:.2f}.</p>",
             _histogram_svg([("labels", "#0082c8", conf)], 0.0, 1.0, marker=review_below,
                            marker_label=f"review < {review_below:.2f}", name="confidence")]
    sims = [r for r in records if r.similarity is not None and not r.skipped]
    if sims:
        kept = [float(r.similarity) for r in sims if not r.abstained]
        abstained = [float(r.similarity) for r in sims if r.abstained]
        values = kept + abstained
        lo = math.floor(min(values) * 20) / 20
        hi = max(lo + 0.05, math.ceil(max(values) * 20) / 20)
        parts += ["<h3>CLIP similarity of the best class</h3><p>Cosine of the best class per image, blue kept, "
                  "grey abstained: set the abstain floor where the two separate.</p>",
                  _histogram_svg([("kept", "#0082c8", kept), ("abstained", "#999999", abstained)], lo, hi,
                                 name="similarity")]
    return "".join(parts) + "</section>"


def _contact_sheets(records: list[LabelRecord], classes: list[str], colours: dict, thumbs: _Thumbs, *, task: str,
                    max_per_class: int) -> str:
    parts = ['<section id="contact-sheets"><h2>Contact sheets</h2>'
             "<p>Per class, least-confident first so doubtful labels are seen.</p>"]
    for i, c in enumerate(classes):
        carrying = []
        for r in filter(_usable, records):
            mine = [lab for lab in _labels(r) if lab["class"] == c]
            if mine:
                carrying.append((min(float(lab["confidence"]) for lab in mine), str(r.image), r, mine))
        carrying.sort(key=lambda t: (t[0], t[1]))
        shown = carrying[:max_per_class]
        figures = []
        for low, name, r, mine in shown:
            draw = [(lab["box"], colours[c], float(lab["confidence"])) for lab in mine if task == "detect"]
            what = f"{len(mine)} boxes, min {low:.2f}" if len(mine) > 1 else f"{low:.2f}"
            figures.append(_figure(thumbs, r, draw, [name, what] + _note(r)))
        grid = "".join(figures) or "<p>No image has this class.</p>"
        parts.append(f'<div class="sheet" id="sheet-{i}" data-class="{_ESC(c)}" data-color="{_hex(colours[c])}">'
                     f'<h3><span style="color:{_hex(colours[c])}">&#9632;</span> {_ESC(c)}: showing {len(shown)} '
                     f'of {len(carrying)} images</h3><div class="grid">{grid}</div></div>')
    return "".join(parts) + "</section>"


def _review(records: list[LabelRecord], colours: dict, thumbs: _Thumbs, *, task: str, review_below: float,
            max_review: int) -> str:
    abstained = sorted((r for r in records if r.abstained and not r.skipped),
                       key=lambda r: str(r.image))
    low = sorted(((min(float(lab["confidence"]) for lab in _labels(r)), str(r.image), r)
                  for r in filter(_usable, records)
                  if any(float(lab["confidence"]) < review_below for lab in _labels(r))), key=lambda t: t[:2])
    # Share the cap: each list gets at least half of it, and whatever the other one leaves.
    take_a = min(len(abstained), max(max_review // 2, max_review - len(low)))
    take_l = min(len(low), max_review - take_a)
    parts = [f'<section id="review"><h2>Review</h2><h3>Low confidence (&lt; {review_below:.2f}, in the data set): '
             f'{len(low)}</h3><div class="grid" id="review-low">']
    for conf, name, r in low[:take_l]:
        draw = [(lab["box"], colours[lab["class"]], float(lab["confidence"])) for lab in _labels(r)
                if task == "detect"]
        worst = min(_labels(r), key=lambda lab: float(lab["confidence"]))
        parts.append(_figure(thumbs, r, draw, [name, f"lowest {conf:.2f} ({worst['class']})"] + _note(r)))
    parts.append("</div>" + _more(len(low) - take_l))
    parts.append(f'<h3>Abstained (not labelled): {len(abstained)}</h3><div class="grid" id="review-abstained">')
    for r in abstained[:take_a]:
        top = ", ".join(f"{t['class']} {float(t['score']):.2f}" for t in (r.topk or [])[:3])
        lines = [str(r.image), str(r.abstain_reason or "abstained")] + ([top] if top else [])
        parts.append(_figure(thumbs, r, [], lines + _note(r)))
    parts.append("</div>" + _more(len(abstained) - take_a) + "</section>")
    return "".join(parts)


def _skipped(records: list[LabelRecord]) -> str:
    rows = "".join(f"<tr><td>{_ESC(str(r.image))}</td><td>{_ESC(str(r.skipped))}</td></tr>"
                   for r in sorted((r for r in records if r.skipped), key=lambda r: str(r.image)))
    table = f"<table><tr><th>file</th><th>reason</th></tr>{rows}</table>" if rows else "<p>None.</p>"
    return f'<section id="skipped"><h2>Skipped</h2>{table}</section>'


def _quality(quality: dict) -> str:
    flat = {k: v for k, v in quality.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in quality.items() if isinstance(v, dict)}
    parts = ['<section id="quality"><h2>Quality</h2>']
    if flat:
        parts.append("<table><tr><th>metric</th><th>value</th></tr>" + "".join(
            f'<tr data-metric="{_ESC(str(k))}"><th>{_ESC(str(k))}</th><td class="num">{_ESC(_fmt(v))}</td></tr>'
            for k, v in flat.items()) + "</table>")
    if nested:
        cols = list(dict.fromkeys(c for v in nested.values() for c in v))
        head = "<tr><th></th>" + "".join(f"<th>{_ESC(str(c))}</th>" for c in cols) + "</tr>"
        rows = "".join(f'<tr data-metric="{_ESC(str(k))}"><th>{_ESC(str(k))}</th>' + "".join(
            f'<td class="num">{_ESC(_fmt(v[c])) if c in v else "—"}</td>' for c in cols) + "</tr>"
            for k, v in nested.items())
        parts.append(f"<table>{head}{rows}</table>")
    return "".join(parts) + "</section>"


# ---- thumbnails ----------------------------------------------------------------------------------------------------

class _Thumbs:
    """Decodes each shown image once, keeps only its thumbnail, and draws boxes on copies."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cache: dict[str, tuple[np.ndarray | None, float]] = {}  # source -> ((h, w, 3) RGB thumb, scale)

    def render(self, record: LabelRecord,
               boxes: list[tuple[list[float], tuple[int, int, int], float]]) -> tuple[str, bool]:
        """(JPEG data URI, is-placeholder) with `boxes` drawn: (xyxy in decoded-image pixels, RGB colour, conf)."""
        source = str(record.source)
        if source not in self._cache:
            self._cache[source] = self._decode(Path(source))
        small, scale = self._cache[source]
        if small is None:
            return _jpeg_uri(self._placeholder(record)), True
        img = small.copy()  # (h, w, 3) uint8 RGB
        for box, colour, conf in boxes:
            _draw_box(img, np.asarray(box, dtype=np.float64) * scale, colour, f"{conf:.2f}")
        return _jpeg_uri(img), False

    def _decode(self, source: Path) -> tuple[np.ndarray | None, float]:
        loaded = load_image(source, source.parent)  # never raises for a bad file: rgb is None and says why
        rgb = loaded.rgb  # (H, W, 3) uint8 RGB or None
        if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) == 0:
            log.debug("no thumbnail for %s: %s", source, getattr(loaded, "skipped", None))
            return None, 1.0
        h, w = rgb.shape[:2]
        scale = self.size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale

    def _placeholder(self, record: LabelRecord) -> np.ndarray:
        w, h = int(record.width or 0), int(record.height or 0)
        scale = self.size / max(w, h, 1)
        tw, th = (max(1, round(w * scale)), max(1, round(h * scale))) if w and h else (self.size, self.size)
        img = np.full((th, tw, 3), PLACEHOLDER_GREY, np.uint8)  # (th, tw, 3) RGB grey
        cv2.putText(img, "unreadable", (4, th // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
        return img


def _draw_box(img: np.ndarray, box: np.ndarray, colour: tuple[int, int, int], text: str) -> None:
    """Draw one (4,) xyxy box (thumbnail pixels) and its text label on the (h, w, 3) RGB `img`, in place."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]))
    cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
    ty = y1 - 1 if y1 - th - base - 1 >= 0 else min(h - 1, y1 + th + base + 1)  # above the box, else inside
    cv2.rectangle(img, (x1, ty - th - base), (x1 + tw + 2, ty), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(img, text, (x1 + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.35, ink, 1, cv2.LINE_AA)


def _jpeg_uri(rgb: np.ndarray) -> str:
    """(h, w, 3) uint8 RGB -> data:image/jpeg;base64 URI."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError(f"cv2.imencode could not encode a {rgb.shape} thumbnail as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _figure(thumbs: _Thumbs, record: LabelRecord, boxes: list, lines: list[str]) -> str:
    uri, placeholder = thumbs.render(record, boxes)
    name = str(record.image)
    cls = ' class="placeholder"' if placeholder else ""
    caption = "<br>".join(_ESC(s) for s in lines)
    return (f'<figure><img{cls} src="{uri}" alt="{_ESC(name)}" title="{_ESC(name)}">'
            f"<figcaption>{caption}</figcaption></figure>")


# ---- small helpers -------------------------------------------------------------------------------------------------

def _histogram_svg(series: list[tuple[str, str, list[float]]], lo: float, hi: float, *, name: str, bins: int = 20,
                   marker: float | None = None, marker_label: str = "") -> str:
    """Stacked histogram of each (label, colour, values) over [lo, hi] in `bins` bins, as inline SVG."""
    width, height, left, bottom, top_pad = 640, 170, 36, 22, 14
    plot_w, plot_h = width - left - 20, height - bottom - top_pad
    counts = []
    for _, _, values in series:
        idx = np.clip(((np.asarray(values, dtype=np.float64) - lo) / (hi - lo) * bins).astype(int), 0, bins - 1)
        counts.append(np.bincount(idx, minlength=bins))  # (bins,)
    peak = int(np.sum(counts, axis=0).max()) if counts else 0
    y_per = plot_h / max(peak, 1)
    bar_w = plot_w / bins
    out = [f'<svg class="hist" data-hist="{_ESC(name)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img">']
    base = np.zeros(bins)
    for (label, colour, _), c in zip(series, counts, strict=True):
        for b in range(bins):
            if c[b]:
                x, hgt = left + b * bar_w, c[b] * y_per
                y = top_pad + plot_h - base[b] * y_per - hgt
                b_lo, b_hi = lo + (hi - lo) * b / bins, lo + (hi - lo) * (b + 1) / bins
                out.append(f'<rect data-series="{_ESC(label)}" data-bin="{b}" data-count="{int(c[b])}" x="{x:.1f}" '
                           f'y="{y:.1f}" width="{bar_w - 1:.1f}" height="{hgt:.1f}" fill="{colour}"><title>'
                           f"{_ESC(label)} {b_lo:.2f}–{b_hi:.2f}: {int(c[b])}</title></rect>")
        base += c
    axis_y = top_pad + plot_h
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#444"/>'
               f'<text x="2" y="{top_pad + 4}">{peak}</text><text x="2" y="{axis_y}">0</text>')
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        out.append(f'<text x="{left + plot_w * k / 4:.1f}" y="{height - 6}" text-anchor="middle">{v:.2f}</text>')
    if marker is not None and lo <= marker <= hi:
        mx = left + plot_w * (marker - lo) / (hi - lo)
        out.append(f'<line class="marker" x1="{mx:.1f}" y1="{top_pad - 10}" x2="{mx:.1f}" y2="{axis_y}" '
                   f'stroke="#c00" stroke-width="2" stroke-dasharray="4 2"/>'
                   f'<text x="{mx + 3:.1f}" y="{top_pad - 2}" style="fill:#c00">{_ESC(marker_label)}</text>')
    return "".join(out) + "</svg>"


def _labels(record: LabelRecord) -> tuple[dict, ...]:
    return record.labels


def _usable(record: LabelRecord) -> bool:
    """A record whose labels count: neither skipped nor abstained."""
    return not record.skipped and not record.abstained


def _note(record: LabelRecord) -> list[str]:
    return [f"normalised: {record.normalised}"] if record.normalised else []


def _more(n: int) -> str:
    return f'<p class="more">and {n} more not shown (see labels.jsonl)</p>' if n > 0 else ""


def _hex(rgb: Iterable[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "—" if value is None else str(value)


def _yaml(settings: dict) -> str:
    return yaml.safe_dump(_plain(settings), sort_keys=False, allow_unicode=True, default_flow_style=False)


def _plain(value: Any) -> Any:
    """Settings as YAML-safe builtins (Paths, tuples, dataclasses' odd fields become str/list)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
