"""Quick, Draw! bitmaps become kiosk-like drawings, and the quickdraw recipe labels a folder of .npy files."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from dkit.core.errors import UsageError
from dkit.distill.quickdraw import render, render_folder, truth_file
from tests.conftest import RECIPES


def test_render_is_dark_strokes_on_white():
    bitmap = np.zeros((28, 28), np.uint8)
    bitmap[10:18, 13:15] = 255  # one white stroke on black, as the data set stores it
    rgb = render(bitmap.ravel(), 256)
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 255).all() and rgb[128, 128].max() < 40  # white paper, dark ink
    assert (rgb[..., 0] == rgb[..., 1]).all()


def test_render_folder_on_real_doodles_is_cached(assets, tmp_path):
    src = tmp_path / "npy"
    src.mkdir()
    for name in ("apple", "eye"):
        (src / f"{name}.npy").symlink_to(assets / "data" / "quickdraw" / f"{name}.npy")
    out = render_folder(src, tmp_path / "rendered", per_file=7, size=96)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(files) == 14 and files[0] == "apple/apple_00000.png"
    with open(truth_file(out), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14 and {r["class"] for r in rows} == {"apple", "eye"}
    stamp = (out / ".rendered.json").stat().st_mtime_ns
    assert render_folder(src, tmp_path / "rendered", per_file=7, size=96) == out
    assert (out / ".rendered.json").stat().st_mtime_ns == stamp  # cached: not rendered again
    render_folder(src, tmp_path / "rendered", per_file=3, size=96)  # other settings: rendered again, swapped in
    assert len(list(out.rglob("*.png"))) == 6


@pytest.mark.parametrize(("content", "message"), [
    (np.zeros((3, 10), np.uint8), "expected uint8 bitmaps"),
    (np.zeros((3, 784), np.float32), "expected uint8 bitmaps"),
    (b"not numpy at all", "not a Quick, Draw! bitmap file"),
])
def test_bad_npy_files_are_named(tmp_path, content, message):
    src = tmp_path / "npy"
    src.mkdir()
    if isinstance(content, bytes):
        (src / "bad.npy").write_bytes(content)
    else:
        np.save(src / "bad.npy", content)
    with pytest.raises(UsageError, match=message) as e:
        render_folder(src, tmp_path / "out")
    assert "bad.npy" in str(e.value) and not (tmp_path / "out").exists()


def test_the_recipe_labels_a_folder_of_npy_files(assets, tmp_path):
    pytest.importorskip("open_clip")
    from dkit.core.kit import load_kit
    from dkit.core.store import ModelStore
    from dkit.distill.label import label_images

    src = tmp_path / "npy"
    shutil.copytree(assets / "data" / "quickdraw", src, ignore=shutil.ignore_patterns("*.md"))
    kit = load_kit(RECIPES / "quickdraw" / "kit.yaml", data=src, overrides=[
        "teacher.pretrained=random", "teacher.model=ViT-S-32-alt", "data.drawings_per_file=4",
        "data.drawing_size=64"])
    assert kit.student.kind == "clip-embed" and kit.judge is not None and kit.judge.unsafe_prompts
    run = tmp_path / "run"
    result = label_images(kit, run, store=ModelStore(tmp_path / "store", offline=True), progress=False,
                          report=False)
    records = [json.loads(line) for line in (run / "labels" / "labels.jsonl").read_text().splitlines()]
    assert len(records) == 16 and all(r["skipped"] is None for r in records)
    assert {r["image"].split("/")[0] for r in records} == {"apple", "bicycle", "diamond", "eye"}
    assert (run / "rendered-labels.csv").is_file() and result is not None
