"""dkit.distill.report: the self-contained HTML label report, built from records over real photos and parsed back."""

from __future__ import annotations

import base64
import html
import shutil
import types
from collections import defaultdict
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from dkit.core.records import LabelRecord
from dkit.distill import report
from dkit.distill.images import load_image

NAMES = ["cat", "bird", "dog", "zebra"]  # zebra is never labelled: it must still be listed
REVIEW_BELOW = 0.5
SETTINGS = {"teacher": {"model": "ViT-B-32", "imgsz": (640, 640)}, "data": Path("/data/<odd>"), "floor": 0.2}
QUALITY = {"mAP50": 0.41234, "precision": 0.7, "images": 128,
           "latency_ms": {"onnx": 3.14159, "fp16": 2.5}, "size_mb": {"onnx": 12.0, "int8": 3.2}}
EVIL = "<script>alert(1).jpg"  # a stranger's file name ('/' cannot be in a file name, so no closing tag)

# (photo, [(class, confidence, box as fractions of width/height)], extra fields)
DETECT_ROWS = [
    ("cat.bmp", [("cat", 0.91, (0.25, 0.2, 0.75, 0.9))], {}),
    ("cat_720p.jpg", [("cat", 0.62, (0.3, 0.1, 0.8, 0.95))], {}),
    ("pets.jpg", [("cat", 0.48, (0.05, 0.1, 0.5, 0.9)), ("dog", 0.71, (0.5, 0.1, 0.95, 0.9))], {}),
    ("bird.bmp", [("bird", 0.33, (0.2, 0.1, 0.8, 0.9))], {}),
    ("parrot.jpg", [("bird", 0.88, (0.1, 0.05, 0.9, 0.95)), ("bird", 0.55, (0.6, 0.6, 0.9, 0.9))], {}),
    ("hot_dog.jpg", [("dog", 0.52, (0.1, 0.2, 0.9, 0.8))], {"normalised": "CMYK to RGB, EXIF rotation"}),
    ("sunflower.bmp", [], {}),  # a background image: in the data set, no boxes, not abstained
    ("dragonfly.bmp", [], {"skipped": "truncated or corrupt: image file is truncated"}),
]
CLASSIFY_ROWS = [
    ("cat.bmp", [("cat", 0.91)], {"similarity": 0.31}),
    ("cat_720p.jpg", [("cat", 0.62)], {"similarity": 0.27}),
    ("pets.jpg", [("dog", 0.45)], {"similarity": 0.24}),
    ("bird.bmp", [("bird", 0.33)], {"similarity": 0.22}),
    ("parrot.jpg", [("bird", 0.88)], {"similarity": 0.33}),
    ("hot_dog.jpg", [("dog", 0.52)], {"similarity": 0.21, "normalised": "CMYK to RGB"}),
    ("kite_and_cold.jpg", [], {"similarity": 0.19, "abstained": True,
                               "abstain_reason": "background prompt 'a blank image' scored highest"}),
    ("face.jpg", [], {"similarity": 0.12, "abstained": True, "abstain_reason": "similarity 0.12 below floor 0.20"}),
    ("dragonfly.bmp", [], {"skipped": "truncated or corrupt: image file is truncated"}),
]


@cache
def _size(path: Path) -> tuple[int, int]:
    """(width, height) of the photo as the kit decodes it."""
    h, w = load_image(path, path.parent).rgb.shape[:2]
    return w, h


def _record(task: str, source: Path, image: str, labels: list, extra: dict, split: str | None) -> LabelRecord:
    w, h = (0, 0) if extra.get("skipped") else _size(source) if source.exists() else (512, 384)
    labs = []
    for cls, conf, *frac in labels:
        lab = {"class": cls, "class_id": NAMES.index(cls), "confidence": conf}
        if task == "detect":
            fx1, fy1, fx2, fy2 = frac[0]
            lab["box"] = [fx1 * w, fy1 * h, fx2 * w, fy2 * h]  # xyxy pixels of the decoded photo
        labs.append(lab)
    unused = extra.get("skipped") or extra.get("abstained")
    return LabelRecord.from_dict({"image": image, "source": str(source), "sha256": "0" * 64,
                                  "split": None if unused else split,
            "dataset_image": None if unused else f"images/{split}/{Path(image).name}", "width": w, "height": h,
            "normalised": None, "labels": labs, "topk": [{"class": c, "score": s} for c, s, *_ in labels],
            "similarity": None, "abstained": False, "abstain_reason": None, "skipped": None,
            "teacher": "clip:ViT-B-32/laion2b_s34b_b79k", **extra})


@pytest.fixture
def photos(assets: Path) -> Path:
    return assets / "data" / "photos"


def _records(task: str, photos: Path, tmp_path: Path) -> list[LabelRecord]:
    """Records over real photos: labelled, low-confidence, abstained, skipped, normalised, unreadable, evil name."""
    rows = DETECT_ROWS if task == "detect" else CLASSIFY_ROWS
    records = [_record(task, photos / name, f"sub/{name}", labels, extra, "val" if i % 4 == 3 else "train")
               for i, (name, labels, extra) in enumerate(rows)]
    evil_dir = tmp_path / "strangers"
    evil_dir.mkdir(exist_ok=True)
    evil = evil_dir / EVIL
    shutil.copyfile(photos / "owl.jpg", evil)
    box = (0.1, 0.1, 0.9, 0.9)
    records.append(_record(task, evil, EVIL, [("bird", 0.77, box)], {"similarity": 0.3} if task == "classify" else {},
                           "train"))
    # Labelled, then the file vanished: the report shows a placeholder instead of failing.
    records.append(_record(task, tmp_path / "gone.jpg", "gone.jpg", [("cat", 0.15, box)], {}, "train"))
    return records


class _Page(HTMLParser):
    """The report parsed back: every start tag with its section and class sheet, text per section, summary counts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict, str | None, str | None]] = []
        self.text: dict[str | None, str] = defaultdict(str)
        self.counts: dict[str, int] = {}
        self._section = self._sheet = self._count_key = None
        self._divs, self._sheet_depth, self._last = 0, -1, ""
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section = a.get("id")
        if tag == "div":
            self._divs += 1
            if "sheet" in a.get("class", "").split():
                self._sheet, self._sheet_depth = a["data-class"], self._divs
        if tag == "tr":
            self._count_key = a.get("data-count")
        self._last = tag
        self.tags.append((tag, a, self._section, self._sheet))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None
        if tag == "div":
            if self._divs == self._sheet_depth:
                self._sheet, self._sheet_depth = None, -1
            self._divs -= 1

    def handle_data(self, data: str) -> None:
        self.text[self._section] += data + " "
        if self._count_key and self._last == "td":
            self.counts[self._count_key] = int(data)
            self._count_key = None

    def find(self, tag: str, section: str | None = None, sheet: str | None = None, **attrs: str) -> list[dict]:
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}  # class_="x" -> class="x"
        return [a for t, a, sec, sh in self.tags if t == tag and (section is None or sec == section)
                and (sheet is None or sh == sheet) and all(a.get(k) == v for k, v in want.items())]


def _write(tmp_path: Path, records: list[LabelRecord], task: str, **kw) -> tuple[Path, str, _Page]:
    out = tmp_path / "labels" / "report.html"
    kw = {"teacher": "clip:ViT-B-32/laion2b_s34b_b79k", "random_teacher": False, "settings": SETTINGS,
          "review_below": REVIEW_BELOW, **kw}
    report.write_report(out, records=records, names=NAMES, task=task, **kw)
    text = out.read_text(encoding="utf-8")
    return out, text, _Page(text)


def _decode(src: str) -> np.ndarray:
    """data URI -> (h, w, 3) uint8 RGB."""
    head, data = src.split(",", 1)
    assert head == "data:image/jpeg;base64"
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _thumb_size(w: int, h: int, thumb: int) -> tuple[int, int]:
    s = thumb / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _usable(r: LabelRecord) -> bool:
    return not r.skipped and not r.abstained


@pytest.mark.parametrize(("task", "random_teacher", "quality"), [
    ("detect", False, None),
    ("detect", True, QUALITY),
    ("classify", False, QUALITY),
    ("classify", True, None),
])
def test_sections_counts_banner_and_safety(photos, tmp_path, task, random_teacher, quality):
    records = _records(task, photos, tmp_path)
    out, text, page = _write(tmp_path, records, task, random_teacher=random_teacher, quality=quality,
                             title="Pets <3")

    ids = [a["id"] for a in page.find("section")]
    expected = ["summary", "classes", "confidence", "contact-sheets", "review", "skipped"]
    assert ids == expected + (["quality"] if quality else []) + ["settings"]

    used = [r for r in records if _usable(r)]
    want = {"files": len(records), "labelled images": sum(1 for r in used if r.labels),
            "abstained": sum(1 for r in records if r.abstained),
            "skipped": sum(1 for r in records if r.skipped),
            "normalised": sum(1 for r in records if r.normalised),
            "in data set": sum(1 for r in records if r.split)}
    if task == "detect":
        want["boxes"] = sum(len(r.labels) for r in used)
        want["background images"] = sum(1 for r in used if not r.labels and r.split)
    assert {k: page.counts[k] for k in want} == want
    assert want["abstained"] == (2 if task == "classify" else 0) and want["skipped"] == 1 and want["normalised"] == 1
    assert ("boxes" in page.counts) == (task == "detect")

    assert (report.RANDOM_BANNER in text) == random_teacher
    assert len(page.find("div", "summary", class_="banner-random")) == int(random_teacher)
    assert "Pets <3" in page.text["summary"] and "Pets &lt;3" in text

    # The stranger's file name is text, never markup; nothing points outside the file.
    assert EVIL in page.text["contact-sheets"] and html.escape(EVIL) in text
    assert not any(t == "script" for t, *_ in page.tags)
    assert "http://" not in text and "https://" not in text
    for tag, a, *_ in page.tags:
        for key in ("src", "href"):
            if key in a:
                assert a[key].startswith(("data:image/jpeg;base64,", "#")), (tag, a[key][:40])

    # Every class is listed, the unlabelled one too, with its counts.
    rows = {a["data-class"]: a for a in page.find("tr", "classes") if "data-class" in a}
    assert list(rows) == NAMES
    assert "zebra (no labels)" in page.text["classes"]
    assert all(img["src"].startswith("data:") for img in page.find("img"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temp file left behind
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert out.stat().st_mode == plain.stat().st_mode  # readable like any file the user writes, not 0600


@pytest.mark.parametrize(("task", "max_per_class", "thumb"), [
    ("detect", 24, 160),
    ("detect", 1, 96),
    ("classify", 2, 160),
    ("classify", 24, 64),
])
def test_contact_sheets_least_confident_first_at_thumb_size(photos, tmp_path, task, max_per_class, thumb):
    records = _records(task, photos, tmp_path)
    _, _, page = _write(tmp_path, records, task, max_per_class=max_per_class, thumb=thumb)
    by_name = {r.image: r for r in records}
    for cls in NAMES:
        carrying = sorted((min(lab["confidence"] for lab in r.labels if lab["class"] == cls), r.image)
                          for r in records if _usable(r) and any(lab["class"] == cls for lab in r.labels))
        imgs = page.find("img", "contact-sheets", sheet=cls)
        assert len(imgs) <= max_per_class
        assert [img["alt"] for img in imgs] == [name for _, name in carrying[:max_per_class]]
        for img in imgs:
            rec = by_name[img["alt"]]
            assert _decode(img["src"]).shape[:2][::-1] == _thumb_size(rec.width, rec.height, thumb)
    assert page.find("img", "contact-sheets", sheet="zebra") == []


def test_detection_box_is_drawn_in_class_colour(photos, tmp_path):
    records = _records("detect", photos, tmp_path)
    _, _, page = _write(tmp_path, records, "detect", thumb=160)
    colour = np.array([int(page.find("div", class_="sheet", data_class="cat")[0]["data-color"][i:i + 2], 16)
                       for i in (1, 3, 5)])
    img = next(a for a in page.find("img", sheet="cat") if a["alt"] == "sub/cat.bmp")
    thumb = _decode(img["src"]).astype(int)  # (h, w, 3) RGB
    rec = next(r for r in records if r.image == "sub/cat.bmp")
    s = 160 / max(rec.width, rec.height)
    x1, y1, x2, y2 = (round(v * s) for v in rec.labels[0]["box"])

    def near(x: int) -> float:
        """Share of rows along column x (+-1 px) between the box's top and bottom that carry the class colour."""
        rows = thumb[y1 + 15:y2 - 2, x - 1:x + 2]  # (rows, 3, 3), below the confidence tag
        return float(np.mean(np.min(np.linalg.norm(rows - colour, axis=2), axis=1) < 60))

    assert near(x1) > 0.9 and near(x2) > 0.9
    assert near((x1 + x2) // 2) < 0.5  # the photo itself is not painted over


def test_confidence_and_similarity_histograms(photos, tmp_path):
    for task in ("detect", "classify"):
        records = _records(task, photos, tmp_path)
        _, _, page = _write(tmp_path, records, task)
        conf = page.find("rect", "confidence", data_series="labels")
        assert sum(int(r["data-count"]) for r in conf) == sum(len(r.labels) for r in records if _usable(r))
        assert {int(r["data-bin"]) for r in conf} <= set(range(20))
        assert len(page.find("line", "confidence", class_="marker")) == 1
        sims = [a for a in page.find("svg", "confidence") if a.get("data-hist") == "similarity"]
        assert len(sims) == (task == "classify")
        if task == "classify":
            rects = [a for a in page.find("rect", "confidence") if a["data-series"] in ("kept", "abstained")]
            assert sum(int(r["data-count"]) for r in rects) == sum(1 for r in records if r.similarity is not None)


@pytest.mark.parametrize(("task", "max_review"), [("detect", 60), ("detect", 2), ("classify", 60), ("classify", 2)])
def test_review_lists_abstained_and_low_confidence_with_a_cap(photos, tmp_path, task, max_review):
    records = _records(task, photos, tmp_path)
    _, _, page = _write(tmp_path, records, task, max_review=max_review)
    low = [r for r in records if _usable(r) and any(lab["confidence"] < REVIEW_BELOW for lab in r.labels)]
    abstained = [r for r in records if r.abstained]
    shown_low, shown_abs = [], []
    tags = [(a, t) for t, a, sec, _ in page.tags if sec == "review"]
    grid = None
    for a, t in tags:
        grid = a.get("id", grid) if t == "div" else grid
        if t == "img":
            (shown_low if grid == "review-low" else shown_abs).append(a["alt"])
    assert len(shown_low) + len(shown_abs) == min(max_review, len(low) + len(abstained))
    assert len(shown_low) >= min(len(low), max_review // 2) and len(shown_abs) >= min(len(abstained), max_review // 2)
    assert set(shown_low) <= {r.image for r in low} and set(shown_abs) <= {r.image for r in abstained}
    hidden = len(low) + len(abstained) - len(shown_low) - len(shown_abs)
    assert ("more not shown" in page.text["review"]) == (hidden > 0)
    for name in shown_abs:
        assert next(r.abstain_reason for r in abstained if r.image == name) in page.text["review"]


def test_skipped_table_and_unreadable_placeholder(photos, tmp_path):
    records = _records("detect", photos, tmp_path)
    _, _, page = _write(tmp_path, records, "detect", thumb=100)
    assert "sub/dragonfly.bmp" in page.text["skipped"] and "image file is truncated" in page.text["skipped"]
    assert all(a["alt"] != "sub/dragonfly.bmp" for a in page.find("img"))  # skipped files are never decoded
    gone = [a for a in page.find("img") if a["alt"] == "gone.jpg"]
    assert len(gone) == 2  # cat sheet and the review list
    for a in gone:
        assert a["class"] == "placeholder"
        grey = _decode(a["src"])
        assert grey.shape[:2][::-1] == _thumb_size(512, 384, 100)
        assert np.median(grey) == pytest.approx(report.PLACEHOLDER_GREY, abs=3)


def test_quality_and_settings_render_readably(photos, tmp_path):
    records = _records("classify", photos, tmp_path)
    _, text, page = _write(tmp_path, records, "classify", quality=QUALITY)
    q = page.text["quality"]
    for cell in ("mAP50", "0.412", "0.700", "128", "onnx", "fp16", "int8", "3.142", "2.500", "12.000", "3.200"):
        assert cell in q
    assert [a["data-metric"] for a in page.find("tr", "quality") if "data-metric" in a] == list(QUALITY)
    pre = page.text["settings"].split("Settings", 1)[1].strip()
    assert yaml.safe_load(pre) == {"teacher": {"model": "ViT-B-32", "imgsz": [640, 640]}, "data": "/data/<odd>",
                                   "floor": 0.2}
    assert "/data/&lt;odd&gt;" in text


def test_failed_write_leaves_nothing_half_written(photos, tmp_path, monkeypatch):
    records = _records("detect", photos, tmp_path)
    out, old, _ = _write(tmp_path, records, "detect")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("dkit.core.files.os.replace", refuse)  # the shared atomic write renames into place
    with pytest.raises(OSError, match="disk full"):
        report.write_report(out, records=records, names=NAMES, task="detect", teacher="t", random_teacher=True,
                            settings={}, review_below=0.5)
    monkeypatch.undo()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"] and out.read_text() == old


@pytest.mark.parametrize(("kw", "match"), [
    ({"task": "segment"}, "task must be one of"),
    ({"task": "detect", "thumb": 0}, "thumb >= 8"),
    ({"task": "detect", "max_per_class": -1}, "max_per_class >= 0"),
])
def test_bad_arguments_are_refused_before_writing(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        report.write_report(tmp_path / "report.html", records=[], names=NAMES, teacher="t", random_teacher=False,
                            settings={}, review_below=0.5, **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", ["detect", "classify"])
def test_large_report_decodes_only_what_it_shows(tmp_path, monkeypatch, task):
    names, max_per_class, max_review = ["a", "b", "c", "d", "e"], 6, 20
    rng = np.random.default_rng(0)
    calls = []

    def counting_load(path, root):
        calls.append(path)
        return types.SimpleNamespace(rgb=np.zeros((48, 64, 3), np.uint8))  # (H, W, 3) RGB

    monkeypatch.setattr(report, "load_image", counting_load)
    records = []
    for i in range(5000):
        labels = [{"class": names[k], "class_id": int(k), "confidence": float(rng.uniform(0.05, 1.0)),
                   **({"box": [4, 4, 40, 30]} if task == "detect" else {})}
                  for k in rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False)]
        abstained = task == "classify" and i % 10 == 0
        records.append(LabelRecord(f"img_{i:05d}.jpg", f"/nowhere/img_{i:05d}.jpg", f"{i:064x}", "t", "train",
                                   width=64, height=48, labels=() if abstained else tuple(labels),
                                   similarity=0.25 if task == "classify" else None, abstained=abstained,
                                   abstain_reason="margin 0.03 below 0.10" if abstained else None))
    out = tmp_path / "report.html"
    report.write_report(out, records=records, names=names, task=task, teacher="t", random_teacher=True,
                        settings={}, review_below=0.3, max_per_class=max_per_class, max_review=max_review)
    page = _Page(out.read_text(encoding="utf-8"))
    shown = {a["alt"] for a in page.find("img")}
    assert len(calls) == len(set(calls)) == len(shown)  # each shown image decoded once, nothing else
    assert len(calls) <= max_per_class * len(names) + max_review
    assert len(page.find("img", "review")) == max_review and "more not shown" in page.text["review"]
    assert page.counts["files"] == 5000
