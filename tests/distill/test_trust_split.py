"""Issue #24 finding 6: the train/val split never cuts a group (identical files, one video, near-duplicates).

Real COCO-128 photos, shrunk into small JPEGs so 40 seeds stay fast; the records are built as `dkit label` builds
them (sha256 of the file's bytes, the decoded size), then split by dkit.distill.label's own split.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import cv2
import pytest

from dkit.core.errors import KitError
from dkit.core.kit import load_kit
from dkit.core.records import LabelRecord
from dkit.distill.label import _assign_split
from dkit.edge.images.phash import distance, phash
from tests.conftest import ASSETS, RECIPES

SEEDS = range(40)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """32 distinct small photos p00..p31.jpg (COCO-128, 160x120), never near each other."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS} (they live beside the project, never in it)")
    out = tmp_path_factory.mktemp("photos")
    for k, src in enumerate(sorted((ASSETS / "data/coco128/images/train2017").glob("*.jpg"))[:32]):
        small = cv2.resize(cv2.imread(str(src)), (160, 120), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / f"p{k:02d}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out


def record(path: Path, **fields) -> LabelRecord:
    bgr = cv2.imread(str(path))
    return LabelRecord(image=path.name, source=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                       teacher="t", width=bgr.shape[1], height=bgr.shape[0],
                       labels=({"class": "person", "class_id": 0, "confidence": 0.9, "box": [1, 1, 9, 9]},), **fields)


def kit(folder: Path, *overrides: str):
    return load_kit(RECIPES / "coco128" / "kit.yaml", data=folder, overrides=["data.val=0.25", *overrides])


def separated(records: list[LabelRecord], group_of) -> int:
    """How many groups (records with the same group_of(record)) have members on both sides."""
    sides: dict = {}
    for r in records:
        sides.setdefault(group_of(r), set()).add(r.split)
    return sum(len(s) > 1 for s in sides.values())


def test_finding6_split_keeps_identical_files_together_over_40_seeds(photos, tmp_path):
    """8 of 32 photos also present as byte-identical copies under other names: no seed may separate a pair (the
    starting code, ranking each file by its bytes alone, put the cut between a file and its copy in 10 of 40 seeds)."""
    folder = tmp_path / "set"
    shutil.copytree(photos, folder)
    for k in range(0, 32, 4):
        shutil.copyfile(folder / f"p{k:02d}.jpg", folder / f"copy_of_p{k:02d}.jpg")
    records = [record(p) for p in sorted(folder.glob("*.jpg"))]
    cuts = [separated(_assign_split(records, kit(folder, f"data.seed={seed}")), lambda r: r.sha256)
            for seed in SEEDS]
    assert sum(c > 0 for c in cuts) == 0, f"seeds that split identical files: {sum(c > 0 for c in cuts)} of 40"


def test_finding6_split_keeps_the_frames_of_one_video_on_one_side(photos, tmp_path):
    """Frames of three videos (8 each) beside 8 stills: every video is wholly train or wholly val, every seed."""
    names = sorted(photos.glob("*.jpg"))
    records = [record(p, video={"file": f"cam{k // 8}.mp4", "t": float(k % 8)}) for k, p in enumerate(names[:24])]
    records += [record(p) for p in names[24:]]
    for seed in SEEDS:
        split = _assign_split(records, kit(photos, f"data.seed={seed}"))
        assert separated([r for r in split if r.video], lambda r: r.video["file"]) == 0, f"seed {seed}"
        assert {r.split for r in split} == {"train", "val"}


def test_finding6_split_keeps_near_duplicates_together(photos, tmp_path):
    """A re-encoded (JPEG quality 70) and resized (0.8x) copy of 8 photos: different bytes, pHash within
    data.split_near_duplicate bits: on the same side as the original for every seed; -1 turns that off."""
    folder = tmp_path / "set"
    shutil.copytree(photos, folder)
    for k in range(0, 32, 4):
        bgr = cv2.imread(str(folder / f"p{k:02d}.jpg"))
        cv2.imwrite(str(folder / f"p{k:02d}_small.jpg"), cv2.resize(bgr, (128, 96), interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, 70])
    for k in range(0, 32, 4):  # they are near-duplicates by the kit's own hash, and other photos are not
        a, b = (cv2.imread(str(folder / n))[..., ::-1].copy() for n in (f"p{k:02d}.jpg", f"p{k:02d}_small.jpg"))
        assert distance(phash(a), phash(b)) <= 6
    records = [record(p) for p in sorted(folder.glob("*.jpg"))]

    def original(r):
        return r.image[:3]

    cuts = [separated(_assign_split(records, kit(folder, f"data.seed={seed}")), original) for seed in SEEDS]
    assert sum(c > 0 for c in cuts) == 0
    off = [separated(_assign_split(records, kit(folder, f"data.seed={seed}", "data.split_near_duplicate=-1")),
                     original) for seed in SEEDS]
    assert sum(c > 0 for c in off) > 0  # without the pHash groups these pairs are split by some seeds


def test_finding6_group_split_is_order_independent_and_close_to_data_val(photos, tmp_path):
    """Shuffled records get the same split; groups of 2 keep the held-out count within one of data.val."""
    from dkit.distill.split import assign_split

    folder = tmp_path / "set"
    shutil.copytree(photos, folder)
    for k in range(0, 32, 2):
        shutil.copyfile(folder / f"p{k:02d}.jpg", folder / f"dup{k:02d}.jpg")
    records = [record(p) for p in sorted(folder.glob("*.jpg"))]  # 48 images in 32 groups
    k = kit(folder, "data.val=12", "data.seed=3")
    first, summary = assign_split(records, k)
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    again, _ = assign_split(shuffled, k)
    assert {r.image: r.split for r in first} == {r.image: r.split for r in again}
    assert abs(summary.val_images - 12) <= 1 and summary.asked == 12 and summary.seed == 3
    assert summary.groups == 32 and summary.grouped_images == 32 and summary.largest_group == 2
    assert summary.val_images + summary.train_images == 48 and summary.reasons["identical"] == 16
    assert summary.val_images == sum(r.split == "val" for r in first)
    assert "split by group" in summary.sentence() and "seed 3" in summary.sentence()
    json.dumps(summary.to_dict())


def test_finding6_one_group_only_is_cut_with_a_warning(photos, caplog):
    """A kit of one video: nothing independent to hold out; the group is cut and the summary says so."""
    from dkit.distill.split import assign_split

    records = [record(p, video={"file": "only.mp4", "t": float(k)}) for k, p in enumerate(sorted(photos.glob("*")))]
    with caplog.at_level("WARNING"):
        split, summary = assign_split(records, kit(photos))
    assert summary.cut_groups == 1 and "optimistic" in summary.sentence() and "optimistic" in caplog.text
    assert {r.split for r in split} == {"train", "val"}


def test_split_near_duplicate_setting_is_validated(photos):
    with pytest.raises(KitError, match=r"data\.split_near_duplicate: expected a number <= 64, got 65"):
        kit(photos, "data.split_near_duplicate=65")
    assert kit(photos).data.split_near_duplicate == 6
