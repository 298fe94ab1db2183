"""Issue #24 findings 1, 9c, 9e, 14b, 14d: the students' class names, training views and the figures eval reports."""

from __future__ import annotations

import json
import math
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("ultralytics")
torch = pytest.importorskip("torch")

from dkit.core.errors import UsageError  # noqa: E402
from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.records import LabelRecord  # noqa: E402
from dkit.distill import evaluate as ev  # noqa: E402
from dkit.distill.students import student_module  # noqa: E402
from dkit.distill.students import yolo as ys  # noqa: E402
from dkit.edge.bundle.manifest import Preprocess  # noqa: E402
from tests.conftest import ASSETS, RECIPES, link_images, yolo_store  # noqa: E402

# ------------------------------------------------------------------------------------------ finding 1


def test_finding1_classifier_agreement_uses_the_models_own_class_names(tmp_path):
    """Ontology [dog, cat]; Ultralytics numbers a classifier trained from folders alphabetically (0 cat, 1 dog).
    A student predicting "cat" on an image the teacher labelled "cat" agrees (the starting code read index 0 in
    the ontology's order, "dog", and scored 0.0)."""
    kit = SimpleNamespace(ontology=SimpleNamespace(names=["dog", "cat"]))
    records = [LabelRecord(f"a/{n}.jpg", f"/a/{n}.jpg", "0" * 64, "t", "val", labels=({"class": c},))
               for n, c in (("x", "cat"), ("y", "dog"), ("z", "cat"))]
    predictions = [SimpleNamespace(probs=SimpleNamespace(top1=i), names={0: "cat", 1: "dog"}) for i in (0, 1, 0)]
    truth = tmp_path / "truth.csv"
    truth.write_text("file,class\nx.jpg,cat\ny.jpg,cat\n")
    result = {"student": {}}
    ys._classification_metrics(result, kit, records, predictions, truth)
    assert result["student"]["top1_agreement"] == 1.0
    assert result["student"]["accuracy"] == 0.5  # x right, y ("dog", truth "cat") wrong


def test_finding1_student_class_ids_are_mapped_by_name():
    """Every YOLO student's class index goes through its own names onto the kit's ontology, or is refused."""
    assert ys._kit_class_ids({0: "cat", 1: "dog"}, ["dog", "cat"]).tolist() == [1, 0]
    assert ys._kit_class_ids({0: "person", 1: "car"}, ["person", "car"]).tolist() == [0, 1]
    with pytest.raises(UsageError, match=r"the student's classes \['bird'\] are not in the kit's ontology"):
        ys._kit_class_ids({0: "cat", 1: "bird"}, ["dog", "cat"])


def test_finding1_classification_data_yaml_numbers_classes_as_ultralytics_does(tmp_path):
    """labels/data.yaml of a classifier kit names the classes in the order Ultralytics numbers the folders."""
    from ultralytics.data.utils import check_cls_dataset

    from dkit.distill.label import _write_layout

    kit = SimpleNamespace(task="classify", ontology=SimpleNamespace(names=["dog", "cat", "bird"]))
    _write_layout([LabelRecord("a.jpg", "/a.jpg", "0" * 64, "t")], kit, tmp_path)
    import cv2
    import yaml

    for cls in ("dog", "cat", "bird"):  # Ultralytics checks that the folders hold images
        cv2.imwrite(str(tmp_path / "train" / cls / "a.png"), np.full((8, 8, 3), 128, np.uint8))

    written = yaml.safe_load((tmp_path / "data.yaml").read_text())["names"]
    assert written == check_cls_dataset(str(tmp_path))["names"] == {0: "bird", 1: "cat", 2: "dog"}


# ------------------------------------------------------------------------------------------ finding 9e


class _Rng:
    """A fixed draw for the training view: half the area, square, top-left, no flip, no jitter."""

    def uniform(self, low, high):
        return 0.5 if (low, high) == (0.5, 1.0) else 0.0 if low < 0 < high else 1.0

    def integers(self, low, high):
        return 0

    def random(self):
        return 0.9


def test_finding9e_clip_embed_training_view_is_one_resize_from_the_source_pixels(monkeypatch):
    """A 1280x720 photo, a 64 px student: the training view of a crop of half the image is that crop of the
    source pixels resized once to 64x64 (the starting code shrank to 114x64, cropped 60x60 and enlarged it)."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    from dkit.distill.images import load_image
    from dkit.distill.students.clip_embed import data
    from dkit.edge.infer.preprocess import normalize, resize

    photo = ASSETS / "data" / "photos" / "cat_720p.jpg"
    li = load_image(photo, photo.parent)
    spec = Preprocess.from_dict({"resize": "shortest", "size": 64, "crop": "center", "interpolation": "area",
                                 "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "layout": "NCHW",
                                 "channels": "RGB", "dtype": "float32"})
    rec = LabelRecord(photo.name, str(photo), li.sha256, "t", "train", width=1280, height=720)
    monkeypatch.setattr(data.np.random, "default_rng", lambda *_: _Rng())
    side = round(math.sqrt(0.5 * 1280 * 720))  # 679 source pixels
    expected = normalize(resize(li.rgb[:side, :side], (64, 64), "area"), spec)
    for memory in (None, [li.rgb]):  # decoded per item, and kept in memory
        view = data._Images([rec], np.zeros((1, 8), np.float32), spec, train=True, seed=0, memory=memory)[0][0]
        assert np.array_equal(view.numpy(), expected)


# ------------------------------------------------------------------------------------------ findings 9c, 14d


def detect_result(**student) -> dict:
    return {"kit": "coco128", "task": "detect", "split": "val", "images": 32, "random_teacher": False,
            "ground_truth": None,
            "student": {"kind": "yolo-detect", "weights": "w.pt", "imgsz": 320, "params": 3157200, "gflops": 2.186,
                        "ms_per_image": 20.0, "map50_vs_teacher": 0.823, **student},
            "teacher": {"id": "yolo:yolov8n.pt@640+tta", "imgsz": 640, "augment": True, "params": 3157200,
                        "gflops": 8.744, "ms_per_image": 118.0},
            "ratios": {"speed": 5.9}}


def test_finding9c_eval_says_how_the_held_out_split_was_formed_and_that_it_chose_the_weights(tmp_path):
    from dkit.distill.split import SplitSummary, write_summary

    run = tmp_path / "run"
    (run / "labels").mkdir(parents=True)
    write_summary(run / "labels", SplitSummary(
        method="group", seed=0, asked=32, val_images=32, train_images=96, groups=126, val_groups=31,
        grouped_images=4, largest_group=2, near_duplicate_bits=6,
        reasons={"identical": 1, "video": 0, "near_duplicate": 1}))
    json_path, md_path = ev.write_eval(run, detect_result())
    doc = json.loads(json_path.read_text())
    assert doc["held_out"]["method"] == "group" and doc["held_out"]["seed"] == 0
    assert doc["held_out"]["val_images"] == 32 and doc["held_out"]["selected_weights"] is True
    md = md_path.read_text()
    assert ("Held-out images: 32 held-out and 96 training images, split by group (identical files, frames of one "
            "video, pHash near-duplicates within 6 bits) with seed 0: 31 of 126 groups held out whole") in md
    assert "The same held-out images chose the student's weights" in md and doc["notes"]["selection"] in md

    shutil.rmtree(run / "labels")  # labels made before split.json: eval says it does not know
    (run / "labels").mkdir()
    md = ev.write_eval(run, detect_result())[1].read_text()
    assert "how they were chosen is not recorded" in md


def test_finding14d_speed_up_is_explained_from_the_measured_parameter_counts(tmp_path):
    """The coco128 recipe's student is the teacher's own network: eval.md and the bundle README say the speed-up
    comes from 320 px against 640 px with TTA; a smaller student is described by its parameter share."""
    from dkit.export.readme import _eval_lines

    (tmp_path / "labels").mkdir()
    json_path, md_path = ev.write_eval(tmp_path, detect_result())
    same = ("The student is the teacher's own network (3,157,200 parameters each): its 5.9x speed-up comes from its "
            "input size (320 px against the teacher's 640 px with test-time augmentation), not from a smaller model.")
    assert same in md_path.read_text()
    assert any(same in line for line in _eval_lines(json.loads(json_path.read_text())))
    smaller = detect_result(params=1_000_000)
    assert "1,000,000 parameters against the teacher's 3,157,200 (31.7%)" in ev.speed_note(smaller)


# ------------------------------------------------------------------------------------------ finding 14b


def test_finding14b_eval_reproduces_the_training_figure_and_says_what_differs(tmp_path):
    """`dkit train` ends with Ultralytics' validator figure; `dkit eval` reports that same figure (equal to the
    train.log line) beside its own single-image map50_vs_teacher, and both places say what differs."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    from dkit.distill.label import label_images

    data = link_images(ASSETS / "data/coco128/images/train2017", "*.jpg", 10, tmp_path / "coco10")
    kit = load_kit(RECIPES / "coco128" / "kit.yaml", data=data, overrides=[
        "data.val=4", "teacher.augment=false", "student.imgsz=64", "student.batch=4", "student.epochs=1"])
    store = yolo_store(ASSETS, tmp_path / "store")
    run = tmp_path / "run"
    label_images(kit, run, store=store, progress=False, report=False)
    student_module(kit).train(kit, run, store=store, progress=False)
    closing = re.search(r"student trained: best\.pt on the held-out images, mAP50 ([0-9.]+) against the teacher's "
                        r"labels \(these images also chose best\.pt; (.*)\)",
                        (run / "student" / "train.log").read_text())
    assert closing and "(multi-label NMS) and feeds the held-out images in rectangular batches" in closing.group(2)
    result = student_module(kit).evaluate(kit, run, store=store)
    assert result["student"]["validator_map50_vs_teacher"] == pytest.approx(float(closing.group(1)), abs=1e-4)
    md = ev.write_eval(run, result)[1].read_text()
    assert f"Ultralytics' validator {result['student']['validator_map50_vs_teacher']:.4f} (validator_map50" in md
    assert "keeps one class per box and feeds one image at a time letterboxed to the nearest stride (64 x 64" in md
    assert "a square image at 64 px is fed 96 x 96" in md
