"""Teacher internals: CLIP prompt ensembles and the abstain rule, proposers, and label-quality arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.records import LabelRecord  # noqa: E402
from dkit.core.store import ModelStore  # noqa: E402
from dkit.distill.proposers import crop_boxes, windows  # noqa: E402
from dkit.distill.quality import detection_quality  # noqa: E402
from dkit.distill.teachers import build_teacher  # noqa: E402

KIT = """\
name: t
ontology:
  classes:
    cat: [a cat, a kitten]
    dog: [a dog]
    car: [a car]
  background: [nothing, an empty wall]
teacher: {kind: clip, model: ViT-S-32, pretrained: random, templates: ["a photo of {}.", "art of {}."]}
student: {kind: yolo-cls, model: yolov8n-cls.yaml, imgsz: 224}
"""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("kit") / "kit.yaml"
    path.write_text(KIT)
    return build_teacher(load_kit(path), ModelStore(offline=True))


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_prompts(teacher):
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32", pretrained=None).eval()  # the same seeded random weights
    tokenizer = open_clip.get_tokenizer("ViT-S-32")
    texts = ["a photo of a cat.", "art of a cat.", "a photo of a kitten.", "art of a kitten."]
    with torch.no_grad():
        emb = model.encode_text(tokenizer(texts)).float()
    emb = emb / emb.norm(dim=-1, keepdim=True)
    expected = (emb.mean(0) / emb.mean(0).norm()).numpy()
    assert teacher.text.shape == (3, emb.shape[1]) and teacher.background.shape == (2, emb.shape[1])
    np.testing.assert_allclose(teacher.text[0], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(teacher.text, axis=1), 1.0, atol=1e-5)


@pytest.fixture
def axes(teacher, monkeypatch):
    """Replace the prompt embeddings by orthonormal axes so scores are known exactly."""
    dim = teacher.text.shape[1]
    eye = np.eye(dim, dtype=np.float32)
    monkeypatch.setattr(teacher, "text", eye[:3])  # cat, dog, car
    monkeypatch.setattr(teacher, "background", eye[3:5])  # nothing, an empty wall
    monkeypatch.setattr(teacher, "logit_scale", 100.0)
    return eye


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def _embedding(axes, weights: dict[int, float]):
    v = np.zeros(axes.shape[0], np.float32)
    for k, w in weights.items():
        v[k] = w
    return {"embedding": _unit(v)}


# (case, weights on the axes cat=0 dog=1 car=2 nothing=3 wall=4, floor, margin, expected class, reason words)
ABSTAIN = [
    ("clear cat", {0: 1.0, 1: 0.2}, None, 0.0, "cat", None),
    ("background wins", {4: 1.0, 0: 0.3}, None, 0.0, None, "background prompt 'an empty wall'"),
    ("below the floor", {0: 0.3, 5: 1.0}, 0.5, 0.0, None, "below floor 0.500"),
    ("above the floor", {0: 0.6, 5: 0.5}, 0.5, 0.0, "cat", None),
    ("too close to call", {0: 1.0, 1: 0.999}, None, 0.2, None, "margin"),
    ("close but margin off", {0: 1.0, 1: 0.999}, None, 0.0, "cat", None),
]


@pytest.mark.parametrize(("weights", "floor", "margin", "expected", "reason"), [a[1:] for a in ABSTAIN],
                         ids=[a[0] for a in ABSTAIN])
def test_abstain_rule(teacher, axes, monkeypatch, weights, floor, margin, expected, reason):
    from dataclasses import replace

    monkeypatch.setattr(teacher, "cfg", replace(teacher.cfg, abstain=replace(teacher.cfg.abstain, floor=floor,
                                                                             margin=margin)))
    d = teacher.decide(_embedding(axes, weights), (100, 100))
    if expected is None:
        assert len(d.class_ids) == 0 and reason in d.abstain_reason
    else:
        assert d.abstain_reason is None and teacher.class_names[int(d.class_ids[0])] == expected
        assert 0 < d.confidences[0] <= 1
    assert [c for c, _ in d.topk][0] == int(np.argmax([weights.get(k, 0) for k in range(3)]))
    assert d.similarity == pytest.approx(max(_embedding(axes, weights)["embedding"][:3]), abs=1e-5)


def test_crop_boxes_on_detection_verifies_each_crop(teacher, axes, monkeypatch):
    from dataclasses import replace

    monkeypatch.setattr(teacher, "cfg", replace(teacher.cfg, min_box=10.0, iou=0.5))
    raw = {
        "embedding": _unit(axes[0]),
        "boxes": np.array([[0, 0, 50, 50], [2, 2, 52, 52], [60, 60, 100, 100], [0, 0, 5, 5], [10, 60, 40, 95]],
                          np.float32),
        "objectness": np.ones(5, np.float32),
        "crops": np.stack([_unit(axes[0] + 0.1 * axes[1]), _unit(axes[0] + 0.3 * axes[1]), _unit(axes[2]),
                           _unit(axes[1]), _unit(axes[4])]),
    }
    d = teacher.decide(raw, (100, 100))
    # box 1 overlaps box 0 (same class, less sure): NMS; box 3 is 5 px: too small; box 4 is background
    assert d.class_ids.tolist() == [0, 2] or d.class_ids.tolist() == [2, 0]
    assert sorted(map(tuple, d.boxes.tolist())) == [(0, 0, 50, 50), (60, 60, 100, 100)]


# ------------------------------------------------------------------------------------------ proposers


@pytest.mark.parametrize(("h", "w", "scales", "overlap"), [(480, 640, [0.5], 0.5), (300, 300, [0.3, 1.0], 0.25),
                                                           (100, 900, [0.9], 0.0)])
def test_sliding_windows_cover_the_image_edge_to_edge(h, w, scales, overlap):
    boxes = windows(h, w, scales, overlap, limit=10_000)
    for s in scales:
        side = s * min(h, w)
        b = boxes[np.isclose(boxes[:, 2] - boxes[:, 0], side)]
        assert len(b) and b[:, 0].min() == 0 and b[:, 1].min() == 0
        assert b[:, 2].max() == pytest.approx(w) and b[:, 3].max() == pytest.approx(h)
        xs = np.unique(b[:, 0])
        assert np.all(np.diff(xs) <= side * (1 - overlap) + 1e-3)  # no gaps between neighbours
    assert len(windows(h, w, scales, overlap, limit=3)) == 3


def test_crop_boxes_pad_and_clip():
    image = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    fill = image.reshape(-1, 3).mean(0).round().astype(np.uint8)
    boxes = np.array([[10, 10, 30, 50], [190, 90, 200, 100]], np.float32)
    # square: a 20x40 box, its longer side + half of it on each side: 80 px around its centre (20, 30),
    # x -20..60, y -10..70; what lies outside the image is the image's mean colour
    crops = crop_boxes(image, boxes, pad=0.5, mode="square")
    assert crops[0].shape == (80, 80, 3) and crops[1].shape == (20, 20, 3)
    np.testing.assert_array_equal(crops[0][10:, 20:], image[0:70, 0:60])
    assert (crops[0][:10] == fill).all() and (crops[0][:, :20] == fill).all()
    # letterbox: the box + half its size on each side (x 0..40, y -10..70), then bars to a square
    crops = crop_boxes(image, boxes, pad=0.5, mode="letterbox")
    assert crops[0].shape == (80, 80, 3)
    np.testing.assert_array_equal(crops[0][10:, 20:60], image[0:70, 0:40])
    assert (crops[0][:, :20] == fill).all() and (crops[0][:, 60:] == fill).all()


# ------------------------------------------------------------------------------------------ quality


def _write_gt(folder: Path, stem: str, rows: list[tuple[int, float, float, float, float]]):
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}.txt").write_text("".join(" ".join(str(v) for v in r) + "\n" for r in rows))


def test_quality_numbers_by_hand(tmp_path):
    gt = tmp_path / "gt"
    # image a (100x100): a cat at [10,10,50,50], a dog at [60,60,90,90]; image b: nothing
    _write_gt(gt, "a", [(0, 0.3, 0.3, 0.4, 0.4), (1, 0.75, 0.75, 0.3, 0.3)])
    records = [
        {"image": "x/a.jpg", "width": 100, "height": 100, "skipped": None, "labels": [
            {"class_id": 0, "confidence": 0.9, "box": [10, 10, 50, 50]},  # exact: TP
            {"class_id": 0, "confidence": 0.8, "box": [60, 60, 90, 90]},  # right place, wrong class: FP
            {"class_id": 1, "confidence": 0.3, "box": [0, 0, 9, 9]},  # nowhere: FP
        ]},
        {"image": "b.jpg", "width": 100, "height": 100, "skipped": None, "labels": []},
        {"image": "bad.jpg", "width": 0, "height": 0, "skipped": "truncated", "labels": []},
    ]
    records = [LabelRecord.from_dict({"source": "/x", "sha256": "0" * 64, "teacher": "t", **r}) for r in records]
    q = detection_quality(records, gt, ["cat", "dog"])
    assert (q["images"], q["gt_boxes"], q["label_boxes"]) == (2, 2, 3)
    assert q["precision"] == pytest.approx(1 / 3) and q["recall"] == pytest.approx(1 / 2)
    assert q["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # cat: found at rank 1 -> AP ~1 (Ultralytics' 101-point interpolation gives 0.995); dog: never found -> 0
    assert q["map50"] == pytest.approx(0.995 / 2, abs=1e-3)
    assert q["map50_95"] == pytest.approx(0.995 / 2, abs=1e-3)  # the exact box matches at every IoU threshold


@pytest.mark.parametrize("teacher_line", [
    "teacher: {kind: clip, model: ViT-S-32, pretrained: random}\nstudent: {kind: yolo-cls, model: yolov8n-cls.yaml}",
    "teacher: {kind: yolo, model: yolov8n.pt, pretrained: random, device: cpu}\n"
    "student: {kind: yolo-detect, model: yolov8n.yaml}",
])
def test_a_random_teacher_is_the_same_every_time_and_leaves_the_global_rng_alone(tmp_path, teacher_line):
    pytest.importorskip("ultralytics")
    path = tmp_path / "kit.yaml"
    path.write_text(KIT.split("teacher:")[0] + teacher_line + "\n")
    kit = load_kit(path)
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    first = build_teacher(kit, ModelStore(offline=True))
    assert torch.equal(torch.random.get_rng_state(), state)  # library code seeds no global generator
    second = build_teacher(kit, ModelStore(offline=True))
    weights = [dict(t.model.named_parameters()) if hasattr(t.model, "named_parameters") else
               dict(t.model.model.named_parameters()) for t in (first, second)]
    assert weights[0].keys() == weights[1].keys() and weights[0]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
