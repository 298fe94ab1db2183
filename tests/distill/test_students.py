"""YOLO students (tiny real runs: train, resume, evaluate) and the evaluation arithmetic on known inputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ultralytics")

from dkit.core.errors import UsageError  # noqa: E402
from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.records import LabelRecord  # noqa: E402
from dkit.core.store import ModelStore  # noqa: E402
from dkit.distill import evaluate as ev  # noqa: E402
from dkit.distill.label import label_images  # noqa: E402
from dkit.distill.students import student_module  # noqa: E402
from dkit.distill.students import yolo as ys  # noqa: E402
from tests.conftest import ASSETS, RECIPES, link_images, run_dkit, yolo_store  # noqa: E402

TINY = ["data.val=4", "teacher.augment=false", "student.imgsz=64", "student.batch=8"]


@pytest.fixture(scope="module")
def labelled_once(tmp_path_factory):
    """16 real COCO-128 images labelled by the real YOLOv8n, once for the module. Never handed to a test as is:
    tests get a copy (`labelled`), so none sees what another trained or wrote."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS} (they live beside the project, never in it)")
    tmp = tmp_path_factory.mktemp("labelled")
    data = link_images(ASSETS / "data/coco128/images/train2017", "*.jpg", 16, tmp / "coco16")
    run = tmp / "run"
    kit = load_kit(RECIPES / "coco128" / "kit.yaml", data=data, overrides=TINY)
    label_images(kit, run, store=yolo_store(ASSETS, tmp / "store"), progress=False, report=False)
    assert not (run / "student").exists()
    return SimpleNamespace(run=run, data=data)


@pytest.fixture
def labelled(labelled_once, tmp_path):
    """This test's own copy of the labelled run (paths in it are relative; images stay links to the real ones) and
    its own model store holding yolov8n.pt."""
    run = tmp_path / "run"
    shutil.copytree(labelled_once.run, run, symlinks=True)
    data = labelled_once.data

    def kit(*extra):
        return load_kit(RECIPES / "coco128" / "kit.yaml", data=data, overrides=[*TINY, *extra])

    return SimpleNamespace(kit=kit, store=yolo_store(ASSETS, tmp_path / "store"), run=run, data=data,
                           gt=ASSETS / "data/coco128/labels/train2017")


def test_detector_trains_from_pretrained_weights_and_evaluates(labelled):
    kit = labelled.kit("student.epochs=1")
    summary = student_module(kit).train(kit, labelled.run, store=labelled.store, progress=False)
    out = labelled.run / "student"
    assert summary["started_from"] == "pretrained: yolov8n.pt" and summary["epochs"] == 1
    assert Path(summary["weights"]).is_file() and (out / "curves.png").stat().st_size > 1000
    assert json.loads((out / "student.json").read_text())["student"]["imgsz"] == 64
    log_text = (out / "train.log").read_text()
    epoch_lines = [ln for ln in log_text.splitlines() if "student epoch 1/1: loss" in ln]
    assert len(epoch_lines) == 1 and "held-out mAP50" in epoch_lines[0] and epoch_lines[0].endswith("the last epoch")
    # Ultralytics' final validation of best.pt (its epoch counter one past the end) is no "epoch 2/1 ... -1m left"
    assert "student epoch 2/1" not in log_text and "about -" not in log_text
    finals = [ln for ln in log_text.splitlines() if "student trained: best.pt on the held-out images, mAP50" in ln]
    assert len(finals) == 1

    again = student_module(kit).train(kit, labelled.run, store=labelled.store, progress=False)
    assert again["already_trained"] and again["seconds"] == 0.0  # a finished run is not trained again

    result = student_module(kit).evaluate(kit, labelled.run, store=labelled.store, ground_truth=labelled.gt)
    s, t = result["student"], result["teacher"]
    assert (result["task"], result["split"], result["images"]) == ("detect", "val", 4)
    for key in ("map50", "map50_95", "map50_vs_teacher", "map50_95_vs_teacher"):
        assert 0.0 <= s[key] <= 1.0
    assert 0.0 < t["map50"] <= 1.0
    assert s["params"] == t["params"]  # the same YOLOv8n architecture at another size
    assert t["gflops"] == pytest.approx(8.7, abs=0.1)  # YOLOv8n at 640: Ultralytics' published 8.7 GFLOPs
    assert s["gflops"] == pytest.approx(t["gflops"] * (64 / 640) ** 2, rel=0.05)  # FLOPs scale with pixels
    assert s["ms_per_image"] > 0 and t["ms_per_image"] > 0
    assert result["ratios"]["map50"] == pytest.approx(s["map50"] / t["map50"], abs=1e-3)


def test_scratch_when_the_store_has_no_weights(labelled, tmp_path):
    kit = labelled.kit("student.epochs=1")
    empty = ModelStore(tmp_path / "empty-store", offline=True)
    summary = student_module(kit).train(kit, labelled.run, store=empty, progress=False)
    assert summary["started_from"] == "scratch: yolov8n.yaml"


def test_interrupted_training_resumes(labelled, monkeypatch):
    from ultralytics.engine.trainer import BaseTrainer

    kit = labelled.kit("student.epochs=3")
    original = BaseTrainer.save_model

    def save_then_stop(self):
        saved = original(self)
        if self.epoch == 1:  # the second epoch is saved, then Ctrl-C
            raise KeyboardInterrupt
        return saved

    monkeypatch.setattr(BaseTrainer, "save_model", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        student_module(kit).train(kit, labelled.run, store=labelled.store, progress=False)
    assert ys._checkpoint_state(labelled.run / "student" / "weights" / "last.pt", 3) == "resumable"
    monkeypatch.setattr(BaseTrainer, "save_model", original)

    summary = student_module(kit).train(kit, labelled.run, store=labelled.store, progress=False)
    assert summary["resumed"] and summary["epochs"] == 3
    rows = ys._read_results(labelled.run / "student" / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # continued, not restarted

    fresh = student_module(kit).train(kit, labelled.run, store=labelled.store, restart=True, progress=False)
    assert not fresh["resumed"] and not fresh["already_trained"] and fresh["epochs"] == 3


def test_eval_before_training_and_train_before_labels(labelled, tmp_path):
    kit = labelled.kit()
    with pytest.raises(UsageError, match="run `dkit train` first"):
        student_module(kit).evaluate(kit, labelled.run, store=labelled.store)
    with pytest.raises(UsageError, match="run `dkit label` first"):
        student_module(kit).train(kit, tmp_path / "nothing", store=labelled.store)


def test_cli_train_and_eval(labelled):
    env = {"DKIT_HOME": str(labelled.store.root), "DKIT_OFFLINE": "1"}
    args = [str(RECIPES / "coco128" / "kit.yaml"), "--data", str(labelled.data), "--out", str(labelled.run)]
    sets = [a for s in [*TINY, "student.epochs=1"] for a in ("--set", s)]
    trained = run_dkit("train", *args, *sets, "-q", env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr
    assert "trained: 1 epochs, started from pretrained: yolov8n.pt" in trained.stdout
    evaluated = run_dkit("eval", *args, *sets, "--ground-truth", str(labelled.gt), "-q", env=env, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    doc = json.loads((labelled.run / "eval.json").read_text())
    assert doc["schema_version"] == 1 and doc["student"]["map50"] is not None
    assert "| map50 |" in (labelled.run / "eval.md").read_text()


# ------------------------------------------------------------------------------------------ known inputs


def test_profile_counts_a_convolution_by_hand():
    import torch

    conv = torch.nn.Conv2d(3, 8, kernel_size=3)  # (1, 3, 10, 10) -> (1, 8, 8, 8)
    params, gflops = ev.profile(conv, (1, 3, 10, 10))
    assert params == 8 * 3 * 3 * 3 + 8
    assert gflops == pytest.approx(2 * (8 * 8 * 8) * (3 * 3 * 3) / 1e9, abs=1e-6)  # 2 FLOPs per multiply-add


def test_timed_median_on_a_known_clock(monkeypatch):
    ticks = iter([0.0, 0.010, 1.0, 1.030, 2.0, 2.020, 3.0, 3.500])  # 10, 30, 20, 500 ms
    monkeypatch.setattr(ev.time, "perf_counter", lambda: next(ticks))
    median, outputs = ev.timed_median(lambda x: x * 2, [1, 2, 3, 4], warmup=0)
    assert median == pytest.approx(25.0) and outputs == [2, 4, 6, 8]


def test_classification_metrics_by_hand(tmp_path):
    kit = SimpleNamespace(ontology=SimpleNamespace(names=["cat", "dog"]))
    records = [LabelRecord(f"a/{n}.jpg", f"/a/{n}.jpg", "0" * 64, "t", "val", labels=({"class": c},))
               for n, c in (("x", "cat"), ("y", "dog"), ("z", "dog"))]
    predictions = [SimpleNamespace(probs=SimpleNamespace(top1=i), names={0: "cat", 1: "dog"}) for i in (0, 0, 1)]
    truth = tmp_path / "truth.csv"
    with truth.open("w", newline="") as f:
        csv.writer(f).writerows([["file", "class"], ["x.jpg", "dog"], ["y.jpg", "cat"]])  # z.jpg not listed
    result = {"student": {}}
    ys._classification_metrics(result, kit, records, predictions, truth)
    assert result["student"]["top1_agreement"] == pytest.approx(2 / 3)  # x and z agree with the teacher
    assert result["student"]["accuracy"] == pytest.approx(1 / 2)  # y right, x wrong


def test_eval_markdown_shows_every_figure():
    doc = {"kit": "k", "task": "detect", "images": 32, "random_teacher": False, "ground_truth": "gt/",
           "student": {"kind": "yolo-detect", "weights": "w.pt", "params": 3157200, "gflops": 2.186,
                       "ms_per_image": 20.5, "map50": 0.5, "map50_vs_teacher": 0.7},
           "teacher": {"id": "yolo:yolov8n.pt@640", "params": 3157200, "gflops": 8.744, "ms_per_image": 120.0,
                       "map50": 0.55},
           "ratios": {"speed": 5.854, "map50": 0.909}, "machine": {"cpus": 2, "platform": "Linux"}}
    md = ev.render_markdown(doc)
    assert "| map50 | 0.500 | 0.550 |" in md and "| params | 3,157,200 | 3,157,200 |" in md
    assert "map50 (student / teacher) 0.909" in md and "speed (teacher ms / student ms) 5.854" in md
    assert "UNTRAINED" not in md
    assert "UNTRAINED" in ev.render_markdown({**doc, "random_teacher": True})


def test_classifier_trains_from_scratch_and_evaluates(assets, tmp_path):
    """yolo-cls on classes a random CLIP teacher gave 24 real photos; no weights in the store: from scratch."""
    images = link_images(assets / "data/imagenet-sample", "*.JPEG", 24, tmp_path / "imgs")
    kit_file = tmp_path / "kit.yaml"
    kit_file.write_text(
        "name: cls\n"
        f"data: {{images: {images}, val: 6}}\n"
        "ontology: {classes: {animal: [an animal], thing: [a thing]}}\n"
        "teacher: {kind: clip, model: ViT-S-32, pretrained: random, abstain: {margin: 0.0}}\n"
        "student: {kind: yolo-cls, model: yolov8n-cls.pt, imgsz: 32, epochs: 1, batch: 8}\n"
    )
    kit = load_kit(kit_file)
    store = ModelStore(tmp_path / "empty-store", offline=True)
    run = tmp_path / "run"
    label_images(kit, run, store=store, progress=False, report=False)
    summary = student_module(kit).train(kit, run, store=store, progress=False)
    assert summary["started_from"] == "scratch: yolov8n-cls.yaml" and summary["epochs"] == 1
    result = student_module(kit).evaluate(kit, run, store=store)
    assert result["task"] == "classify" and result["images"] == 6 and result["random_teacher"]
    assert 0.0 <= result["student"]["top1_agreement"] <= 1.0 and result["student"]["accuracy"] is None
    assert result["teacher"]["params"] > result["student"]["params"] > 0


def test_profile_counts_attention_that_pytorch_would_fuse():
    """In eval mode PyTorch may run attention as one fused kernel the FLOP counter cannot see; profile must not."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    reference = FlopCounterMode(display=False)
    layer.train()  # the unfused path: every matmul visible
    with reference, torch.no_grad():
        layer(torch.zeros(1, 5, 16))
    params, gflops = ev.profile(layer, (1, 5, 16))
    assert gflops * 1e9 == reference.get_total_flops() > 0
    assert params == sum(p.numel() for p in layer.parameters())


def test_a_list_of_devices_goes_to_ultralytics_train(tmp_path, monkeypatch):
    """student.device: [0, 1] reaches Ultralytics' own train() as is (its DDP); the real train is stopped there."""
    from ultralytics.engine.model import Model

    kit_file = tmp_path / "kit.yaml"
    kit_file.write_text(
        "name: cls\n"
        "ontology: {classes: {animal: [an animal], thing: [a thing]}}\n"
        "teacher: {kind: clip, model: ViT-S-32, pretrained: random}\n"
        "student: {kind: yolo-cls, model: yolov8n-cls.yaml, imgsz: 32, epochs: 1, batch: 8, device: [0, 1]}\n"
    )
    kit = load_kit(kit_file)
    run = tmp_path / "run"
    (run / "labels").mkdir(parents=True)
    (run / "labels" / "data.yaml").write_text("names: {0: animal, 1: thing}\n")
    seen = []

    class Stop(Exception):
        pass

    def fake_train(self, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(Model, "train", fake_train)
    with pytest.raises(Stop):
        ys.train(kit, run, store=ModelStore(tmp_path / "store", offline=True), progress=False)
    assert seen[0]["device"] == [0, 1] and seen[0]["epochs"] == 1
