"""clip-embed student: train and evaluate end to end on real photos with a small random open_clip teacher.

The teacher (ViT-S-32, random weights) is meaningless as a judge but its embeddings are a real function of
the pixels, so a student that learns them must beat its own untrained init on held-out images: that is
the machinery proof. One labelled and trained run (module fixture) is copied by the tests that need one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open_clip")
pytest.importorskip("timm")
torch = pytest.importorskip("torch")

from dkit.core.errors import DkitError, UsageError  # noqa: E402
from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.store import ModelStore  # noqa: E402
from dkit.distill.label import label_images  # noqa: E402
from dkit.distill.students import clip_embed, student_module  # noqa: E402
from dkit.edge.bundle.manifest import JudgeConfig  # noqa: E402
from tests.conftest import ASSETS  # noqa: E402

log = logging.getLogger(__name__)
EPOCHS = 6
KIT = """\
name: embed-toy
data: {{images: {images}, val: 0.25, seed: 0}}
ontology:
  classes:
    animal: [an animal, a bird]
    food: [food]
    vehicle: [a car, a boat]
  background: [an empty background]
teacher: {{kind: clip, model: ViT-S-32, pretrained: random, templates: ["a photo of {{}}."], batch: 16}}
student: {{kind: clip-embed, model: mobilenetv3_small_050, imgsz: 64, epochs: {epochs}, batch: 16, patience: 10}}
judge: {{prompt: a cat, prompts: [a cat, a dog, a boat], unsafe_prompts: [a weapon]}}
"""


def make_kit(folder: Path, images: Path, *, epochs: int = EPOCHS, overrides=()):
    path = folder / "kit.yaml"
    path.write_text(KIT.format(images=images, epochs=epochs))
    return load_kit(path, overrides=list(overrides))


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "student" / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def copy_run(src: Path, dest: Path, *, student: bool = True) -> Path:
    shutil.copytree(src, dest, symlinks=True, ignore=None if student else shutil.ignore_patterns("student"))
    return dest


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: this 2-core runner is shared, and two spinning threads beside a busy neighbour are 50x
    slower; it also makes the interrupted and the uninterrupted run bit-identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store() -> ModelStore:
    return ModelStore(offline=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store) -> tuple:
    """120 real ImageNet photos labelled by the random teacher (90 train, 30 held out), then trained once."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    base = tmp_path_factory.mktemp("embed")
    images = base / "images"
    images.mkdir()
    for photo in sorted((ASSETS / "data" / "imagenet-sample").glob("*.JPEG"))[:120]:
        (images / photo.name).symlink_to(photo)
    kit = make_kit(base, images)
    labelled = base / "labelled"
    label_images(kit, labelled, store=store, progress=False, report=False)
    run = copy_run(labelled, base / "run")
    summary = clip_embed.train(kit, run, store=store, progress=False)
    return kit, labelled, run, summary


# ------------------------------------------------------------------------------------------ end to end


def test_train_writes_the_student_folder(trained):
    kit, _, run, summary = trained
    out = run / "student"
    assert summary["weights"] == str(out / "weights" / "best.pt")
    assert summary["epochs"] == EPOCHS and 1 <= summary["best_epoch"] <= EPOCHS
    assert summary["resumed"] is False and summary["already_trained"] is False
    assert summary["started_from"] == "scratch" and 0.5 < summary["val_cosine"] <= 1.0
    for name in ("weights/best.pt", "weights/last.pt", "student.json", "results.csv", "curves.png", "train.log"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left behind

    table = rows(run)
    assert [int(r["epoch"]) for r in table] == list(range(1, EPOCHS + 1))
    assert list(table[0]) == ["epoch", "train_loss", "val_cosine", "lr", "seconds"]
    best_row = max(table, key=lambda r: float(r["val_cosine"]))
    assert int(best_row["epoch"]) == summary["best_epoch"]
    log_lines = (out / "train.log").read_text().splitlines()
    assert len(log_lines) == EPOCHS and log_lines[-1].startswith(f"epoch {EPOCHS}/{EPOCHS}") and "ETA" in log_lines[0]

    config = json.loads((out / "student.json").read_text())
    assert config["student"]["model"] == "mobilenetv3_small_050" and config["started_from"] == "scratch"
    assert config["teacher"]["id"] == "clip:ViT-S-32/random (UNTRAINED)" and config["teacher"]["cache_key"]
    assert config["preprocess"] == clip_embed.preprocess_spec(kit).to_dict()  # the JSON form of the Preprocess
    assert (config["epochs_run"], config["best_epoch"]) == (EPOCHS, summary["best_epoch"])
    assert config["best_val_cosine"] == pytest.approx(summary["val_cosine"])
    assert config["images"]["train"] == 90 and config["images"]["val"] == 30
    assert config["prompts"] == 3 + 1 + 8  # classes, background, judge: a cat, a dog, a boat, 4 text prompts, a weapon

    best = torch.load(out / "weights" / "best.pt", weights_only=True)
    last = torch.load(out / "weights" / "last.pt", weights_only=True)
    assert (best["backbone"], best["dim"], best["preprocess"]) == ("mobilenetv3_small_050", 384, config["preprocess"])
    assert best["epoch"] == summary["best_epoch"] and "optimizer" not in best
    assert last["epoch"] == EPOCHS and last["finished"] and {"optimizer", "scheduler", "history"} <= set(last)


def test_evaluate_trained_student_beats_its_untrained_init(trained, store):
    kit, _, run, _ = trained
    assert student_module(kit) is clip_embed
    report = clip_embed.evaluate(kit, run, store=store)
    json.dumps(report, allow_nan=False)  # the eval.json contract is plain JSON
    assert (report["task"], report["split"], report["images"], report["kit"]) == ("embed", "val", 30, "embed-toy")
    assert report["random_teacher"] is True
    student, teacher, baseline = report["student"], report["teacher"], report["baseline"]
    assert student["kind"] == "clip-embed" and student["weights"].endswith("best.pt")
    assert set(student) >= {"params", "gflops", "ms_per_image", "cosine_mean", "spearman_mean", "top1_agreement",
                            "moderation_agreement"}
    assert set(baseline) == {"cosine_mean", "spearman_mean", "top1_agreement"}
    assert teacher["id"] == "clip:ViT-S-32/random (UNTRAINED)"
    assert 0 < student["params"] < teacher["params"] and 0 < student["gflops"] < teacher["gflops"]
    assert teacher["gflops"] == pytest.approx(2.24, abs=0.05)  # ViT-S-32 image tower at 224 px, attention included
    assert student["ms_per_image"] > 0 and teacher["ms_per_image"] > 0
    assert 0.0 <= student["top1_agreement"] <= 1.0 and 0.0 <= student["moderation_agreement"] <= 1.0

    log.info("held out: trained %s | untrained %s", student, baseline)  # shown when the test fails
    assert student["cosine_mean"] > baseline["cosine_mean"] + 0.4
    assert student["cosine_mean"] == pytest.approx(trained[3]["val_cosine"], abs=1e-4)  # eval's preprocess = training's
    assert student["spearman_mean"] > baseline["spearman_mean"] + 0.2


def test_evaluate_without_a_trained_student_says_train_first(trained, store, tmp_path):
    kit, labelled, _, _ = trained
    with pytest.raises(UsageError, match="no trained student in .*: run `dkit train` first"):
        clip_embed.evaluate(kit, labelled, store=store)


# ------------------------------------------------------------------------------------------ resume, restart


def test_interrupted_training_resumes_where_it_stopped(trained, store, tmp_path, monkeypatch):
    kit, labelled, full_run, _ = trained
    run = copy_run(labelled, tmp_path / "run", student=False)
    real_epoch, calls = clip_embed._run_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of epoch 3
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(clip_embed.training, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        clip_embed.train(kit, run, store=store, progress=False)
    before = rows(run)
    assert [int(r["epoch"]) for r in before] == [1, 2]
    assert torch.load(run / "student" / "weights" / "last.pt", weights_only=True)["epoch"] == 2

    monkeypatch.setattr(clip_embed.training, "_run_epoch", real_epoch)
    summary = clip_embed.train(kit, run, store=store, progress=False)
    assert summary["resumed"] is True and summary["already_trained"] is False and summary["epochs"] == EPOCHS
    after = rows(run)
    assert [int(r["epoch"]) for r in after] == list(range(1, EPOCHS + 1))
    assert after[:2] == before
    # model, optimizer, LR schedule, data order and augmentations all resumed: the same run as never interrupted
    for resumed, straight in zip(after, rows(full_run), strict=True):
        assert float(resumed["val_cosine"]) == pytest.approx(float(straight["val_cosine"]), abs=1e-5)
        assert float(resumed["lr"]) == pytest.approx(float(straight["lr"]))


def test_finished_run_is_not_trained_again_unless_restarted(trained, store, tmp_path, monkeypatch):
    kit, _, full_run, first = trained
    run = copy_run(full_run, tmp_path / "run")
    best = run / "student" / "weights" / "best.pt"
    stamp = best.stat().st_mtime_ns
    monkeypatch.setattr(clip_embed.training, "_run_epoch",
                        lambda *a, **k: pytest.fail("a finished run was trained again"))
    summary = clip_embed.train(kit, run, store=store, progress=False)
    assert summary["already_trained"] is True and summary["resumed"] is False
    assert {k: summary[k] for k in ("weights", "epochs", "best_epoch", "val_cosine")} == {
        "weights": str(best), "epochs": EPOCHS, "best_epoch": first["best_epoch"], "val_cosine": first["val_cosine"]}
    assert best.stat().st_mtime_ns == stamp

    shorter = make_kit(tmp_path, kit.data.images, epochs=2)
    with pytest.raises(UsageError, match="restart"):  # other settings: never mixed into the old run silently
        clip_embed.train(shorter, run, store=store, progress=False)

    monkeypatch.undo()
    (run / "student" / "stale.txt").write_text("from an older run")
    summary = clip_embed.train(shorter, run, store=store, restart=True, progress=False)
    assert summary["already_trained"] is False and summary["resumed"] is False and summary["epochs"] == 2
    assert len(rows(run)) == 2 and not (run / "student" / "stale.txt").exists()


def test_early_stopping_ends_a_run_that_stopped_improving(trained, store, tmp_path, monkeypatch):
    kit, labelled, _, _ = trained
    run = copy_run(labelled, tmp_path / "run", student=False)
    patient = make_kit(tmp_path, kit.data.images, overrides=["student.patience=2"])
    monkeypatch.setattr(clip_embed.training, "_run_epoch", lambda *a, **k: 0.5)  # the weights never change after init
    summary = clip_embed.train(patient, run, store=store, progress=False)
    assert (summary["epochs"], summary["best_epoch"]) == (3, 1)  # epochs 2 and 3 did not beat epoch 1
    config = json.loads((run / "student" / "student.json").read_text())
    assert config["stopped_early"] is True and config["finished"] is True and len(rows(run)) == 3
    assert clip_embed.train(patient, run, store=store, progress=False)["already_trained"] is True


def test_a_teacher_built_afresh_trains_the_same_weights_as_the_one_shared_in_process(trained, store, tmp_path,
                                                                                     monkeypatch):
    """Training's teacher comes from the process's model cache (dkit.distill.teachers.clip_models) when an earlier
    stage built it: the student is bit for bit the one a freshly built teacher gives."""
    from dkit.distill.teachers import clip as clip_teacher
    from dkit.distill.teachers.clip_models import ClipModels

    kit, labelled, _, _ = trained
    short = make_kit(tmp_path, kit.data.images, epochs=1)
    clip_embed.train(short, copy_run(labelled, tmp_path / "warm", student=False), store=store, progress=False)
    monkeypatch.setattr(clip_teacher, "MODELS", ClipModels(size=2))  # nothing cached: the teacher is built again
    clip_embed.train(short, copy_run(labelled, tmp_path / "cold", student=False), store=store, progress=False)
    assert len(clip_teacher.MODELS._models) == 1
    warm, cold = (torch.load(tmp_path / r / "student/weights/best.pt", weights_only=False) for r in ("warm", "cold"))
    assert warm["model"].keys() == cold["model"].keys()
    assert all(torch.equal(warm["model"][k], cold["model"][k]) for k in warm["model"])
    assert warm["val_cosine"] == cold["val_cosine"] and warm["teacher_cache_key"] == cold["teacher_cache_key"]


# (student.train_args are checked when the kit loads: tests/core/test_student_kinds.py)
@pytest.mark.parametrize("overrides, match", [
    ([], "no labels in .*: run `dkit label` first"),
])
def test_train_refuses_with_a_usage_error(overrides, match, tmp_path, store, assets):
    kit = make_kit(tmp_path, assets / "data" / "photos", overrides=overrides)
    with pytest.raises(UsageError, match=match):
        clip_embed.train(kit, tmp_path / "run", store=store, progress=False)


# ------------------------------------------------------------------------------------------ data


def test_a_set_over_the_memory_budget_is_decoded_per_epoch_into_the_same_inputs(trained, monkeypatch):
    kit, labelled, _, _ = trained
    records = clip_embed.labelled_records(labelled)
    train_recs = [r for r in records if r.split == "train"][:5]
    val_recs = [r for r in records if r.split == "val"][:4]
    spec = clip_embed.preprocess_spec(kit)
    targets = np.zeros((9, 384), np.float32)

    def datasets():
        return clip_embed._datasets(train_recs, val_recs, targets[:5], targets[5:], spec, 0, 1)

    kept_train, kept_val, in_memory = datasets()
    monkeypatch.setattr(clip_embed.data, "MEMORY_BUDGET", 0)
    streamed_train, streamed_val, streamed = datasets()
    assert in_memory and not streamed and streamed_train.memory is None
    for kept, fresh in ((kept_train, streamed_train), (kept_val, streamed_val)):
        kept.epoch = fresh.epoch = 3
        for i in range(len(kept)):  # the same augmented view for the same (seed, epoch, image)
            assert torch.equal(kept[i][0], fresh[i][0])
    assert not torch.equal(kept_train[0][0], streamed_train[1][0])
    through_workers = torch.cat([x for x, _ in clip_embed._loader(streamed_val, 3, workers=1)])
    assert torch.equal(through_workers, torch.stack([kept_val[i][0] for i in range(4)]))
    held_out = clip_embed.preprocess(clip_embed.decode_record(val_recs[0]), spec)
    assert np.array_equal(kept_val[0][0].numpy(), held_out)  # validation sees exactly preprocess()

    changed = dataclasses.replace(val_recs[0], sha256="0" * 64)
    with pytest.raises(DkitError, match="changed since it was labelled: run dkit label again"):
        clip_embed.decode_record(changed)


# ------------------------------------------------------------------------------------------ preprocessing


def test_preprocess_equals_a_straightforward_reference_on_a_real_photo(assets, tmp_path):
    """cat_720p.jpg is 1280x720; at size 90 the shorter side shrinks exactly 8x, so INTER_AREA is an 8x8 mean."""
    from dkit.distill.images import load_image

    photo = assets / "data" / "photos" / "cat_720p.jpg"
    rgb = load_image(photo, photo.parent).rgb  # (720, 1280, 3)
    assert rgb.shape == (720, 1280, 3)
    kit = make_kit(tmp_path, assets / "data" / "photos", overrides=["student.imgsz=90"])
    spec = clip_embed.preprocess_spec(kit)  # a Preprocess; the manifest carries its to_dict() as plain JSON
    assert json.loads(json.dumps(spec.to_dict())) == {
        "resize": "shortest", "size": 90, "crop": "center", "interpolation": "area", "scale": 1 / 255,
        "mean": pytest.approx([0.485, 0.456, 0.406]), "std": pytest.approx([0.229, 0.224, 0.225]),
        "layout": "NCHW", "channels": "RGB", "dtype": "float32"}

    x = clip_embed.preprocess(rgb, spec)
    assert x.shape == (3, 90, 90) and x.dtype == np.float32 and x.flags.c_contiguous
    mean, std = np.array(spec.mean), np.array(spec.std)
    assert (x.min(axis=(1, 2)) >= -mean / std - 1e-6).all() and (x.max(axis=(1, 2)) <= (1 - mean) / std + 1e-6).all()

    blocks = rgb.astype(np.float64).reshape(90, 8, 160, 8, 3).mean(axis=(1, 3))  # (90, 160, 3) shorter side 90
    left = (160 - 90) // 2  # 35
    reference = ((blocks[:, left : left + 90] / 255 - mean) / std).transpose(2, 0, 1)
    assert np.abs(x - reference).max() <= 0.5 / 255 / std.min() + 1e-6  # within half a grey level (uint8 rounding)

    # by hand: output pixel (row 0, col 0) is the mean of the 8x8 block at rows 0-7, columns 280-287 of the photo
    block = rgb[0:8, 280:288].reshape(-1, 3).astype(np.float64).mean(axis=0)
    assert x[:, 0, 0] == pytest.approx((np.round(block) / 255 - mean) / std, abs=0.5 / 255 / std.min() + 1e-6)


@pytest.mark.parametrize("name", ["cat_720p.jpg", "pets.jpg", "squat.bmp", "owl.jpg", "sunflower.bmp"])
@pytest.mark.parametrize("size", [32, 64, 224])
def test_preprocess_shape_and_range_on_real_photos(assets, name, size):
    from dkit.distill.images import load_image
    from dkit.edge.bundle.manifest import Preprocess

    photo = assets / "data" / "photos" / name
    rgb = load_image(photo, photo.parent).rgb
    spec = Preprocess.from_dict({"resize": "shortest", "size": size, "crop": "center", "interpolation": "area",
                                 "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "layout": "NCHW",
                                 "channels": "RGB", "dtype": "float32"})
    x = clip_embed.preprocess(rgb, spec)
    assert x.shape == (3, size, size) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05  # a real picture, not a blank
    view = clip_embed._augment(clip_embed.resize_shortest(rgb, spec), spec, np.random.default_rng(0))
    assert view.shape == x.shape and view.dtype == np.float32  # the training view has the eval input's shape


# ------------------------------------------------------------------------------------------ moderation


E = np.eye(4, dtype=np.float32)  # unit embeddings: e0, e1 prompts; e2 a flag prompt (text / unsafe)


def unit(*weights: float) -> np.ndarray:
    v = np.asarray(weights, np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("case, student, teacher, expected, text_margin", [
    ("same embeddings", [unit(1, 0, 0.2, 0)], [unit(1, 0, 0.2, 0)], 1.0, 0.0),
    # teacher: e0 beats the flag (ok), e1 loses to it (flag); student: flag beats both prompts (flag, flag)
    ("half the verdicts differ", [unit(0.2, 0, 1, 0)], [unit(1, 0, 0.5, 0)], 0.5, 0.0),
    ("every verdict differs", [unit(0, 0, 1, 0)], [unit(1, 1, 0, 0)], 0.0, 0.0),
    # two images: the first agrees on both prompts, the second on one of two -> 3 of 4 pairs
    ("two images", [unit(1, 1, 0, 0), unit(0.1, 0, 1, 0)], [unit(1, 1, 0, 0), unit(1, 0, 0.5, 0)], 0.75, 0.0),
    # the device's margins apply: with text_margin 0.6 the teacher's e1 verdict turns ok, the student's stays text
    ("a text margin, as on the device", [unit(0.2, 0, 1, 0)], [unit(1, 0, 0.5, 0)], 0.0, 0.6),
    # e3 is the unsafe prompt: blocked differs from text, though both are "flagged"
    ("blocked is not text", [unit(0, 0, 0, 1)], [unit(0, 0, 1, 0)], 0.0, 0.0),
])
def test_moderation_agreement(case, student, teacher, expected, text_margin):
    prompts, text, unsafe = E[[0, 1]], E[[2]], E[[3]]
    got = clip_embed.moderation_agreement(np.stack(student), np.stack(teacher), prompts, text, unsafe,
                                          JudgeConfig(text_margin=text_margin))
    assert got == pytest.approx(expected), case


def test_moderation_agreement_needs_something_to_compare():
    emb, cfg = E[[0]], JudgeConfig()
    assert clip_embed.moderation_agreement(emb, emb, E[[0]], E[:0], E[:0], cfg) is None  # no moderation prompts
    assert clip_embed.moderation_agreement(emb[:0], emb[:0], E[[0]], E[[2]], E[:0], cfg) is None  # no images
