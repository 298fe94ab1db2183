"""Unlabeled pools (data.unlabeled, dkit.distill.pool): the teacher's embeddings of images nobody labels, learnt by
the clip-embed student beside its labelled training images; held-out images never enter the pool.

Real Quick, Draw! doodles and ImageNet photos, the small random ViT-S-32-alt teacher, offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dkit.core.errors import KitError
from dkit.core.kit import load_kit
from tests.conftest import ASSETS, RECIPES, link_images, run_dkit

DRAWINGS = 6  # the kit's drawings per .npy file (24 in all, 6 held out)
POOL_PER_FILE = 10  # the pool's, from the same files, after the kit's


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _quickdraw_kit(tmp: Path, npy: Path, *extra: str) -> Path:
    """The quickdraw recipe made small (random teacher, 64 px drawings, a tiny student, 1 epoch), with the .npy
    folder as both the kit's images and its unlabeled pool."""
    text = (RECIPES / "quickdraw" / "kit.yaml").read_text()
    path = tmp / "kit.yaml"
    path.write_text(text)
    return path, [f"data.images={npy}", f"data.unlabeled=[{npy}]", f"data.drawings_per_file={DRAWINGS}",
                  f"data.unlabeled_per_file={POOL_PER_FILE}", "data.drawing_size=64", "data.val=6",
                  "teacher.pretrained=random", "teacher.model=ViT-S-32-alt", "student.model=mobilenetv3_small_050",
                  "student.imgsz=64", "student.epochs=1", "student.batch=16", *extra]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """`dkit label` (a subprocess, as users run it) of the small quickdraw kit with its .npy files as the pool:
    (kit path, overrides, run folder, stdout)."""
    pytest.importorskip("open_clip")
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    tmp = tmp_path_factory.mktemp("pool")
    npy = tmp / "npy"
    npy.mkdir()
    for name in ("apple", "bicycle", "diamond", "eye"):
        (npy / f"{name}.npy").symlink_to(ASSETS / "data" / "quickdraw" / f"{name}.npy")
    kit, sets = _quickdraw_kit(tmp, npy)
    run = tmp / "run"
    args = [a for s in sets for a in ("--set", s)]
    proc = run_dkit("label", str(kit), *args, "--out", str(run), "-q", env={"DKIT_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return kit, args, run, proc.stdout


def test_the_pool_takes_the_doodles_after_the_kits_and_never_a_held_out_one(drawn):
    _, _, run, stdout = drawn
    labelled = _jsonl(run / "labels" / "labels.jsonl")
    pool = _jsonl(run / "labels" / "pool.jsonl")
    assert len(labelled) == 4 * DRAWINGS and len(pool) == 4 * POOL_PER_FILE
    assert {r["split"] for r in pool} == {"pool"} and all(r["sha256"] and r["skipped"] is None for r in pool)
    index = sorted(int(Path(r["image"]).stem.rsplit("_", 1)[1]) for r in pool if "apple_" in r["image"])
    assert index == list(range(DRAWINGS, DRAWINGS + POOL_PER_FILE))  # after the kit's own doodles of that file
    held_out = {r["sha256"] for r in labelled if r["split"] == "val"}
    assert len(held_out) == 6 and not held_out & {r["sha256"] for r in pool}
    assert not {r["sha256"] for r in labelled} & {r["sha256"] for r in pool}
    assert f"unlabeled pool: {4 * POOL_PER_FILE} of {4 * POOL_PER_FILE} images kept" in stdout
    assert "teacher ran on 40, 0 from cache" in stdout
    # the data set (class folders) holds none of the pool's images
    in_dataset = {p.name for p in (run / "labels").rglob("*.png")}
    assert not in_dataset & {Path(r["image"]).name for r in pool}


def test_a_rerun_takes_the_pool_from_the_cache(drawn, tmp_path):
    kit, args, run, _ = drawn
    again = tmp_path / "again"
    shutil.copytree(run, again, symlinks=True)
    proc = run_dkit("label", str(kit), *args, "--out", str(again), "-q", env={"DKIT_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "teacher ran on 0, 40 from cache" in proc.stdout
    def same(path):  # apart from where the run folder is
        return [{k: v for k, v in r.items() if k != "source"} for r in _jsonl(path)]

    assert same(again / "labels" / "pool.jsonl") == same(run / "labels" / "pool.jsonl")


def test_the_student_trains_on_the_pool_too(drawn, tmp_path):
    pytest.importorskip("timm")
    from dkit.core.store import ModelStore
    from dkit.distill.students import student_module

    kit_path, args, run, _ = drawn
    run = Path(shutil.copytree(run, tmp_path / "run", symlinks=True))
    kit = load_kit(kit_path, overrides=args[1::2])
    student_module(kit).train(kit, run, store=ModelStore(offline=True), progress=False)
    images = json.loads((run / "student" / "student.json").read_text())["images"]
    assert (images["train"], images["pool"], images["val"]) == (4 * DRAWINGS - 6, 4 * POOL_PER_FILE, 6)
    # the pool is part of what a resumed run must match: a changed pool is refused, not mixed in
    pool = run / "labels" / "pool.jsonl"
    pool.write_text("".join(line + "\n" for line in pool.read_text().splitlines()[:-1]))
    from dkit.core.errors import UsageError

    with pytest.raises(UsageError, match="unlabeled-pool"):
        student_module(kit).train(kit, run, store=ModelStore(offline=True), progress=False)


def test_pool_images_identical_to_the_kits_are_left_out_and_the_pool_is_bounded(tmp_path):
    pytest.importorskip("open_clip")
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    from dkit.core.store import ModelStore
    from dkit.distill.label import label_images
    from tests.distill.test_clip_embed import KIT

    photos = sorted((ASSETS / "data" / "imagenet-sample").glob("*.JPEG"))
    kit_images = link_images(ASSETS / "data" / "imagenet-sample", "*.JPEG", 8, tmp_path / "kit-images")
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    for p in photos[6:14]:  # two of the kit's own, six new ones
        (pool / p.name).symlink_to(p)
    shutil.copyfile(photos[9], pool / "sub" / "again.jpg")  # one of the new ones again, under another name
    (pool / "sub" / "zz.jpg").symlink_to(photos[14])
    (pool / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "kit.yaml").write_text(KIT.format(images=kit_images, epochs=1))
    kit = load_kit(tmp_path / "kit.yaml", overrides=["data.unlabeled=[pool]", "data.unlabeled_max=10"])
    assert kit.data.unlabeled == [pool.resolve()]  # relative to the kit file
    result = label_images(kit, tmp_path / "run", store=ModelStore(offline=True), progress=False, report=False)
    c = result.counts
    # 11 files listed in name order (broken.jpg, the 8 photos, sub/again.jpg, sub/zz.jpg): the first 10 taken
    assert (c["pool_files"], c["pool_over_max"]) == (11, 1)
    assert (c["pool_in_kit"], c["pool_duplicates"], c["pool_skipped"], c["pool"]) == (2, 1, 1, 6)
    kept = _jsonl(tmp_path / "run" / "labels" / "pool.jsonl")
    assert sorted(r["image"] for r in kept) == sorted(p.name for p in photos[8:14])


def test_a_pool_is_refused_where_the_student_learns_labels(tmp_path):
    kit = tmp_path / "kit.yaml"
    shutil.copyfile(RECIPES / "coco128" / "kit.yaml", kit)
    (tmp_path / "pool").mkdir()
    with pytest.raises(KitError, match=r"data\.unlabeled: expected no unlabeled pool unless student.kind is "
                                       r"clip-embed"):
        load_kit(kit, overrides=["data.unlabeled=[pool]"])


def test_a_missing_pool_folder_is_named(tmp_path):
    kit = tmp_path / "kit.yaml"
    shutil.copyfile(RECIPES / "quickdraw" / "kit.yaml", kit)
    (tmp_path / "here").mkdir()
    with pytest.raises(KitError, match=r"data\.unlabeled\[1\]: no such folder or file: .*/nowhere") as e:
        load_kit(kit, overrides=["data.unlabeled=[here, nowhere]"])
    assert "(--set data.unlabeled=[here, nowhere])" in str(e.value)


def test_the_budget_is_spent_before_rendering_and_the_run_folder_is_never_scanned(tmp_path):
    pytest.importorskip("open_clip")
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    from dkit.core.store import ModelStore
    from dkit.distill.label import label_images

    npy = tmp_path / "npy"
    npy.mkdir()
    for name in ("apple", "bicycle", "diamond", "eye"):
        (npy / f"{name}.npy").symlink_to(ASSETS / "data" / "quickdraw" / f"{name}.npy")
    photos = link_images(ASSETS / "data" / "imagenet-sample", "*.JPEG", 3, tmp_path / "photos")
    kit_path, sets = _quickdraw_kit(tmp_path, npy)
    run = tmp_path / "photos" / "run"  # a run folder inside a pool folder: its copies must not join the pool
    sets = [s for s in sets if not s.startswith("data.unlabeled")] + [
        f"data.unlabeled=[{photos}, {npy}]", "data.unlabeled_per_file=1000", "data.unlabeled_max=11"]
    kit = load_kit(kit_path, overrides=sets)
    label_images(kit, run, store=ModelStore(offline=True), progress=False, report=False)
    result = label_images(kit, run, store=ModelStore(offline=True), progress=False, report=False)  # run/ exists now
    c = result.counts
    # 3 photos first (the entry listed first), then 11 - 3 = 8 doodles: 2 a file, not 1000 rendered and cut
    assert len(list((run / "pool" / "drawings-1").rglob("*.png"))) == 8
    assert (c["pool_files"], c["pool"], c["pool_over_max"]) == (11, 11, 0)
    assert not any(f"{run}/labels" in r.source or f"{run}/cache" in r.source for r in _records(run))


def _records(run: Path):
    from dkit.core.run import RunDir

    return RunDir(run).pool_records()
