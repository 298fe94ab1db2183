"""`dkit label` end to end: a small random open_clip teacher (plumbing) and the real YOLOv8n (quality)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open_clip")
pytest.importorskip("ultralytics")

from dkit.core.errors import UsageError  # noqa: E402
from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.store import ModelStore  # noqa: E402
from dkit.distill.label import label_images  # noqa: E402
from dkit.distill.teachers import build_teacher  # noqa: E402
from tests.conftest import RECIPES, link_images, run_dkit  # noqa: E402
from tests.conftest import yolo_store as make_yolo_store  # noqa: E402
from tests.kits import toy_kit  # noqa: E402

# the toy kit (tests/kits.py) with the classes of the real photos and a small random CLIP teacher
PHOTO_CLASSES = "\n  classes:\n    animal: [an animal, a bird]\n    food: [food]\n    person: [a person]\n" \
                "  background: [an empty background]\n"
PHOTO_TEACHER = '{kind: clip, model: ViT-S-32, pretrained: random, templates: ["a photo of {}."], batch: 4}'


def clip_kit(tmp_path: Path, images: Path, *, student="yolo-cls", model="yolov8n-cls.yaml", seed=0, workers=0,
             overrides=()):
    path = tmp_path / "kit.yaml"
    path.write_text(toy_kit(data=f"{{images: {images}, val: 0.25, seed: {seed}, workers: {workers}}}",
                            ontology=PHOTO_CLASSES, teacher=PHOTO_TEACHER,
                            student=f"{{kind: {student}, model: {model}, imgsz: 224}}", judge=None))
    return load_kit(path, overrides=list(overrides))


@pytest.fixture
def photos(assets, tmp_path) -> Path:
    """A folder of the real photos (and the real text files beside them), plus bad and awkward files."""
    folder = tmp_path / "photos"
    shutil.copytree(assets / "data" / "photos", folder)
    (folder / "sub").mkdir()
    shutil.copy(folder / "owl.jpg", folder / "sub" / "owl.jpg")  # same stem in another folder: a collision
    data = (folder / "parrot.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.png").write_bytes(b"")
    from PIL import Image

    Image.open(folder / "hot_dog.jpg").convert("CMYK").save(folder / "cmyk.jpg")
    return folder


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore(offline=True)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------ classification


def test_classification_data_set_layout_records_and_report(photos, tmp_path, store):
    kit = clip_kit(tmp_path, photos)
    result = label_images(kit, tmp_path / "run", store=store, progress=False)
    out = result.labels_dir
    records = jsonl(out / "labels.jsonl")
    files = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file())
    assert [r["image"] for r in records] == files  # one line per file, in scan order

    skipped = {r["image"]: r["skipped"] for r in records if r["skipped"]}
    assert set(skipped) == {"COPYRIGHT", "LICENSE", "coco_labels.txt", "truncated.jpg", "empty.png"}
    assert "empty" in skipped["empty.png"] and "truncated" in skipped["truncated.jpg"]
    cmyk = next(r for r in records if r["image"] == "cmyk.jpg")
    assert "CMYK" in cmyk["normalised"]

    placed = [r for r in records if r["split"]]
    assert placed and all(len(r["labels"]) == 1 and not r["abstained"] for r in placed)
    assert {r["split"] for r in placed} == {"train", "val"}
    for r in placed:
        dest = out / r["dataset_image"]
        assert dest.parts[-3:-1] == (r["split"], r["labels"][0]["class"])  # {train,val}/<class>/
        if r["normalised"]:
            assert not dest.is_symlink() and dest.suffix == ".jpg"  # the normalised pixels, as a plain JPEG
        else:
            assert dest.is_symlink() and dest.resolve() == Path(r["source"]).resolve()  # linked, never moved
    stems = sorted(Path(r["dataset_image"]).stem for r in placed if "owl" in r["image"])
    assert stems == ["owl", "owl_1"]  # stems kept, a suffix only on a collision
    for split in ("train", "val"):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(kit.ontology.names)
    from ultralytics.data.utils import check_cls_dataset

    data = check_cls_dataset(str(out))  # Ultralytics accepts the folder as a classification data set
    assert data["nc"] == 3 and sorted(data["names"].values()) == sorted(kit.ontology.names)
    assert all(r["teacher"] == "clip:ViT-S-32/random (UNTRAINED)" for r in records)
    assert all(len(r["topk"]) == 3 and r["similarity"] is not None for r in placed)
    report = (out / "report.html").read_text()
    assert "UNTRAINED" in report and "truncated.jpg" in report
    assert sorted(p.name for p in tmp_path.joinpath("run").iterdir()) == ["cache", "labels"]  # no temp folders


def test_split_is_seeded_and_repeatable(photos, tmp_path, store):
    def splits(seed, run):
        kit = clip_kit(tmp_path, photos, seed=seed)
        records = label_images(kit, tmp_path / run, store=store, progress=False, report=False).records
        return {r.image: r.split for r in records}

    first = splits(0, "a")
    assert splits(0, "b") == first
    assert splits(1, "c") != first


def test_workers_decode_in_processes_with_identical_results(photos, tmp_path, store):
    runs = []
    for workers in (0, 2):
        kit = clip_kit(tmp_path, photos, workers=workers)
        records = label_images(kit, tmp_path / f"w{workers}", store=store, progress=False, report=False).records
        runs.append([(r.image, r.skipped, r.labels, r.split) for r in records])
    assert runs[0] == runs[1]


def test_abstained_images_are_listed_but_not_trained_on(photos, tmp_path, store):
    kit = clip_kit(tmp_path, photos, overrides=["teacher.abstain.margin=0.999"])  # nothing leads by that much
    with pytest.raises(UsageError, match="abstained on every image"):
        label_images(kit, tmp_path / "run", store=store, progress=False)
    assert not (tmp_path / "run" / "labels").exists()

    kit = clip_kit(tmp_path, photos, overrides=["teacher.abstain.floor=-1.0", "teacher.abstain.margin=0.0"])
    records = label_images(kit, tmp_path / "run2", store=store, progress=False).records
    abstained = [r for r in records if r.abstained]
    assert all(r.abstain_reason.startswith("background prompt") for r in abstained)  # the only rule left on
    assert all(r.split is None and not r.labels for r in abstained)
    assert any(r.split for r in records)


def test_empty_folder_is_a_clear_error(tmp_path, store):
    (tmp_path / "nothing").mkdir()
    kit = clip_kit(tmp_path, tmp_path / "nothing")
    with pytest.raises(UsageError, match="no files"):
        label_images(kit, tmp_path / "run", store=store, progress=False)


def test_folder_without_a_single_image(tmp_path, store):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("not an image")
    kit = clip_kit(tmp_path, tmp_path / "texts")
    with pytest.raises(UsageError, match="none of the 1 files"):
        label_images(kit, tmp_path / "run", store=store, progress=False)


# ------------------------------------------------------------------------------------------ cache and resume


class _Interrupting:
    """Wraps a teacher; raises KeyboardInterrupt on the `after`-th infer call, counts the images inferred."""

    def __init__(self, teacher, after: int | None):
        self.teacher, self.after, self.calls, self.inferred = teacher, after, 0, 0

    def __getattr__(self, name):
        return getattr(self.teacher, name)

    def infer(self, images):
        self.calls += 1
        if self.after is not None and self.calls == self.after:
            raise KeyboardInterrupt
        self.inferred += len(images)
        return self.teacher.infer(images)


def test_interrupted_run_leaves_nothing_half_written_and_resumes_from_the_cache(photos, tmp_path, store):
    kit = clip_kit(tmp_path, photos)  # batch 4
    teacher = build_teacher(kit, store)
    run = tmp_path / "run"
    first = _Interrupting(teacher, after=3)  # two batches (8 images) done, then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        label_images(kit, run, store=store, teacher=first, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["cache"]  # no labels, no temporary folder

    from dkit.distill.cache import TeacherCache

    with TeacherCache(run / "cache" / "teacher.sqlite") as cache:
        done = {sha for sha, _ in cache.items(teacher.cache_key)}
    assert 0 < len(done) <= 8  # the two finished batches (identical files share one entry)

    second = _Interrupting(teacher, after=None)
    result = label_images(kit, run, store=store, teacher=second, progress=False)
    good = [r for r in result.records if not r.skipped]
    new = {r.sha256 for r in good} - done
    assert second.inferred == len(new)  # only content not done yet, each once (owl.jpg and its copy: once)
    assert result.counts["cached"] == len(good) - len(new)

    third = _Interrupting(teacher, after=None)
    again = label_images(kit, run, store=store, teacher=third, progress=False)
    assert third.calls == 0 and again.counts["cached"] == len(good)  # a rerun recomputes nothing
    assert [r.labels for r in again.records] == [r.labels for r in result.records]


def test_folders_left_by_a_killed_labeler_are_removed(photos, tmp_path, store):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = tmp_path / "run"
    (run / f".labels-{dead.stdout.strip()}-abc" / "images").mkdir(parents=True)  # its process is gone
    (run / f".labels-{os.getpid()}-live").mkdir()  # a labeler still running (this process)
    kit = clip_kit(tmp_path, photos)
    label_images(kit, run, store=store, progress=False, report=False)
    assert sorted(p.name for p in run.iterdir()) == [f".labels-{os.getpid()}-live", "cache", "labels"]


def test_new_thresholds_reuse_the_cache(photos, tmp_path, store):
    kit = clip_kit(tmp_path, photos)
    label_images(kit, tmp_path / "run", store=store, progress=False, report=False)
    stricter = clip_kit(tmp_path, photos, overrides=["teacher.abstain.floor=-0.5", "teacher.review_below=0.9"])
    teacher = _Interrupting(build_teacher(stricter, store), after=None)
    result = label_images(stricter, tmp_path / "run", store=store, teacher=teacher, progress=False, report=False)
    assert teacher.calls == 0 and result.counts["cached"] > 0


# ------------------------------------------------------------------------------------------ detection via CLIP


@pytest.mark.parametrize("proposer", ["sliding", "yolo"])
def test_clip_detection_verifies_proposals(photos, tmp_path, assets, proposer, monkeypatch):
    kit = clip_kit(tmp_path, photos, student="yolo-detect", model="yolov8n.yaml", overrides=[
        f"teacher.proposer.kind={proposer}", "teacher.proposer.max_proposals=8", "teacher.min_box=16",
        "teacher.iou=0.5",
    ])
    result = label_images(kit, tmp_path / "run", store=make_yolo_store(assets, tmp_path / "store"), progress=False)
    out = result.labels_dir
    placed = [r for r in result.records if r.split]
    assert any(r.labels for r in placed), "a permissive random teacher keeps some boxes"
    for r in placed:
        boxes = np.array([lab["box"] for lab in r.labels]).reshape(-1, 4)
        cls = np.array([lab["class_id"] for lab in r.labels])
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        assert (sides >= 16 - 1e-3).all()
        for c in set(cls.tolist()):  # class-wise NMS left no same-class pair above the IoU threshold
            b = boxes[cls == c]
            for i in range(len(b)):
                for j in range(i + 1, len(b)):
                    assert _iou(b[i], b[j]) <= 0.5 + 1e-4
        label_file = out / "labels" / r.split / f"{Path(r.dataset_image).stem}.txt"
        assert len(label_file.read_text().splitlines()) == len(r.labels)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------------------------------ real YOLO teacher


@pytest.fixture
def coco16(assets, tmp_path) -> Path:
    """16 real COCO-128 images."""
    return link_images(assets / "data/coco128/images/train2017", "*.jpg", 16, tmp_path / "coco16")


@pytest.fixture(name="yolo_store")
def _yolo_store(assets, tmp_path) -> ModelStore:
    return make_yolo_store(assets, tmp_path / "store")


def test_yolo_teacher_labels_match_ultralytics_and_load_as_a_data_set(coco16, tmp_path, assets, yolo_store):
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset

    kit = load_kit(RECIPES / "coco128" / "kit.yaml", data=coco16, overrides=["data.val=4"])
    result = label_images(kit, tmp_path / "run", store=yolo_store, progress=False,
                          ground_truth=assets / "data/coco128/labels/train2017")
    out = result.labels_dir
    data = check_det_dataset(str(out / "data.yaml"))
    assert len(data["names"]) == 80 and Path(data["val"]).is_dir()
    assert sum(1 for r in result.records if r.split == "val") == 4

    model = YOLO(str(assets / "models" / "yolov8n.pt"))
    assert kit.teacher.augment and kit.teacher.conf == 0.35
    for rec in result.records[:6]:  # the labels are exactly what Ultralytics predicts with the kit's settings
        t = kit.teacher  # the recipe's TTA at conf 0.35; the cache holds conf >= 0.01, re-thresholded
        pred = model.predict(rec.source, imgsz=t.imgsz, conf=t.conf, iou=t.iou, augment=t.augment,
                             verbose=False, device="cpu")[0]
        ours = sorted((lab["class_id"], round(lab["confidence"], 3)) for lab in rec.labels)
        theirs = sorted((int(c), round(float(s), 3)) for c, s in zip(pred.boxes.cls, pred.boxes.conf, strict=True))
        assert ours == theirs
        lines = (out / "labels" / rec.split / f"{Path(rec.image).stem}.txt").read_text().splitlines()
        assert len(lines) == len(rec.labels)
    q = json.loads((out / "quality.json").read_text())
    assert q == result.quality and q["images"] == 16 and 0.2 < q["map50"] <= 1.0 and 0 < q["f1"] < 1


def test_yolo_ontology_names_must_be_teacher_classes(coco16, tmp_path, yolo_store):
    kit = load_kit(RECIPES / "coco128" / "kit.yaml", data=coco16, overrides=["ontology.classes.person=[persn]"])
    with pytest.raises(UsageError, match="'persn' is not a class of the teacher yolov8n.pt"):
        build_teacher(kit, yolo_store)


def test_yolo_subset_ontology_drops_unmapped_classes(coco16, tmp_path, yolo_store):
    kit_text = (RECIPES / "coco128" / "kit.yaml").read_text()
    head = kit_text.split("ontology:")[0]
    tail = "teacher:" + kit_text.split("teacher:", 1)[1]
    path = tmp_path / "kit.yaml"
    path.write_text(head + "ontology:\n  classes:\n    human: [person]\n    vehicle: [car, truck, bus]\n\n" + tail)
    kit = load_kit(path, data=coco16, overrides=["data.val=2"])
    records = label_images(kit, tmp_path / "run", store=yolo_store, progress=False, report=False).records
    assert {lab["class"] for r in records for lab in r.labels} <= {"human", "vehicle"}
    assert any(lab["class"] == "human" for r in records for lab in r.labels)
    assert "names" in (tmp_path / "run" / "labels" / "data.yaml").read_text()


# ------------------------------------------------------------------------------------------ CLI


def test_cli_label_and_bench(coco16, tmp_path, yolo_store):
    env = {"DKIT_HOME": str(yolo_store.root), "DKIT_OFFLINE": "1"}
    kit = str(RECIPES / "coco128" / "kit.yaml")
    fast = ("--set", "teacher.augment=false")  # the CLI's wiring is under test, not TTA (tested above): 3x less work
    six = tmp_path / "coco6"  # the wiring needs few images: the pipeline itself is tested above on all 16
    six.mkdir()
    for p in sorted(coco16.iterdir())[:6]:
        (six / p.name).symlink_to(p.resolve())
    result = run_dkit("label", kit, "--data", str(six), "--out", str(tmp_path / "run"), "--set", "data.val=2",
                      *fast, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "6 files" in result.stdout and "report.html" in result.stdout
    bench = run_dkit("bench", "label", kit, "--data", str(six), "-q", "--repeat", "1", *fast, env=env, timeout=300)
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["images"] == 6 and report["ips_label"] > 0 and report["ips_bare"] > 0
    assert report["ratio"] == pytest.approx(report["ips_label"] / report["ips_bare"], abs=0.01)
