"""Issue #24, findings 2-5: what the teachers hand the labeler is what it claims to be.

- 2: the embedding width comes from the model's output for every open_clip class (CustomTextCLIP: PE-Core).
- 3: the abstain rule can fire without background prompts (the floor competes in the softmax); a CLIP kit
  whose rule can never fire where it must is refused, saying how to fix it.
- 4: a YOLO teacher mapping several classes onto one kit class runs NMS on the kit's classes.
- 5: CLIP sees the whole of a box (a square crop), and the crop mode is part of the teacher cache key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from dkit.core.errors import KitError  # noqa: E402
from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.store import ModelStore  # noqa: E402
from dkit.distill.teachers import build_teacher  # noqa: E402
from tests.conftest import ASSETS, run_dkit, yolo_store  # noqa: E402

# a one-class "find the forklift" detection kit, as users write it first: no background prompts, no floor
FORKLIFT = """\
name: forklift
ontology:
  classes:
    forklift: [a forklift]
teacher: {kind: clip, model: ViT-S-32, pretrained: random, proposer: {kind: sliding}}
student: {kind: yolo-detect, model: yolov8n.yaml, imgsz: 320}
"""


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "kit.yaml"
    path.write_text(text)
    return path


def _pairs_above(boxes: np.ndarray, classes: np.ndarray, iou: float) -> int:
    """Same-class box pairs overlapping by more than `iou`."""
    from torchvision.ops import box_iou

    b, c = torch.from_numpy(boxes).float(), torch.from_numpy(classes)
    over = (box_iou(b, b) > iou) & (c[:, None] == c[None, :])
    return int(torch.triu(over, diagonal=1).sum())


# ------------------------------------------------------------------------------------------ finding 2


def test_finding2_custom_text_clip_embedding_width_from_the_model_output(tmp_path):
    """PE-Core (open_clip's CustomTextCLIP: no `text_projection`) with no background prompts labels an image."""
    path = _write(tmp_path, """\
name: pe
ontology: {classes: {cat: [a cat], dog: [a dog]}}
teacher: {kind: clip, model: PE-Core-T-16-384, pretrained: random}
student: {kind: yolo-cls, model: yolov8n-cls.yaml, imgsz: 224}
""")
    teacher = build_teacher(load_kit(path), ModelStore(offline=True))
    assert not hasattr(teacher.model, "text_projection")  # the class this finding is about
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    raw = teacher.infer([image])[0]
    decision = teacher.decide(raw, image.shape[:2])  # crashed: "matmul ... size 1 is different from 512"
    assert decision.abstain_reason is None and len(decision.class_ids) == 1  # closed world: the argmax
    width = teacher.text.shape[1]
    assert raw["embedding"].shape == (width,) and teacher.background.shape == (0, width)
    assert teacher.dim == width and teacher.embed_images([]).shape == (0, width)


# ------------------------------------------------------------------------------------------ finding 3


@pytest.mark.parametrize("student", ["detect", "one-class classify"])
def test_finding3_clip_kit_that_cannot_abstain_is_refused_saying_how_to_fix_it(tmp_path, student):
    text = FORKLIFT if student == "detect" else FORKLIFT.replace(
        "student: {kind: yolo-detect, model: yolov8n.yaml, imgsz: 320}",
        "student: {kind: yolo-cls, model: yolov8n-cls.yaml, imgsz: 224}")
    path = _write(tmp_path, text)
    with pytest.raises(KitError) as info:
        load_kit(path)
    message = str(info.value)
    assert "teacher.abstain" in message and "ontology.background" in message and "teacher.abstain.floor" in message
    # either fix is accepted
    assert load_kit(path, overrides=["ontology.background=[an empty warehouse]"]).ontology.background
    assert load_kit(path, overrides=["teacher.abstain.floor=0.2"]).teacher.abstain.floor == pytest.approx(0.2)
    if student == "detect":  # what a user sees: `dkit check` refuses with exit code 2 and the same line
        result = run_dkit("check", str(path))
        assert result.returncode == 2, result.stderr
        assert "teacher.abstain" in result.stderr and "Add background prompts" in result.stderr


def test_finding3_closed_world_clip_classifier_is_noted_by_dkit_check(tmp_path):
    """Several classes, no background, no floor, margin 0: a closed-world argmax, allowed but said."""
    path = _write(tmp_path, FORKLIFT.replace("forklift: [a forklift]", "forklift: [a forklift]\n    pallet: [a pallet]")
                  .replace("student: {kind: yolo-detect, model: yolov8n.yaml, imgsz: 320}",
                           "student: {kind: yolo-cls, model: yolov8n-cls.yaml, imgsz: 224}"))
    result = run_dkit("check", str(path))
    assert result.returncode == 0 and "closed world" in result.stderr
    assert load_kit(path).abstain_note() is not None
    assert load_kit(path, overrides=["teacher.abstain.margin=0.1"]).abstain_note() is None


@pytest.fixture(scope="module")
def forklift(tmp_path_factory):
    """The one-class detection kit made valid by a floor: a random ViT-S-32 teacher with a sliding proposer."""
    path = _write(tmp_path_factory.mktemp("forklift"), FORKLIFT)
    return build_teacher(load_kit(path, overrides=["teacher.abstain.floor=0.0"]), ModelStore(offline=True))


def _with(teacher, monkeypatch, **abstain):
    cfg = teacher.cfg
    monkeypatch.setattr(teacher, "cfg", dataclasses.replace(cfg, abstain=dataclasses.replace(cfg.abstain, **abstain)))


def test_finding3_one_class_floor_competes_so_confidence_follows_the_cosine(forklift, monkeypatch):
    dim = forklift.text.shape[1]
    axis = forklift.text[0]
    other = np.linalg.qr(np.stack([axis, np.random.default_rng(0).normal(size=dim)]).T)[0][:, 1]

    def at(cos):  # a unit embedding whose cosine to the class is `cos`
        return (cos * axis + np.sqrt(1 - cos**2) * other).astype(np.float32)

    _with(forklift, monkeypatch, floor=0.2)
    decisions = [forklift.decide({"embedding": at(c)}, (100, 100)) for c in (0.1, 0.25, 0.4, 0.8)]
    assert "below floor 0.200" in decisions[0].abstain_reason and len(decisions[0].class_ids) == 0
    conf = [float(d.confidences[0]) for d in decisions[1:]]
    assert all(d.abstain_reason is None for d in decisions[1:])
    assert 0.5 < conf[0] < conf[1] < conf[2] <= 1.0  # not a constant 1.0: it grows with the cosine
    _with(forklift, monkeypatch, floor=0.2, margin=0.5)  # and the margin can fire with one class: a lead over the floor
    assert "margin" in forklift.decide({"embedding": at(0.25)}, (100, 100)).abstain_reason


def test_finding3_one_class_detection_with_a_floor_labels_some_windows_not_all(forklift, monkeypatch):
    from PIL import Image

    image = np.asarray(Image.open(_photo("pets.jpg")).convert("RGB"))
    raw = forklift.infer([image])[0]
    cos = raw["crops"] @ forklift.text[0]
    _with(forklift, monkeypatch, floor=float(np.median(cos)))
    d = forklift.decide(raw, image.shape[:2])
    assert 0 < len(d.class_ids) < len(raw["boxes"]) / 2 + 1  # the windows below the floor are "none"
    assert len(np.unique(d.confidences)) == len(d.confidences) > 1 and d.confidences.max() < 1.0  # no ties at 1.0


def _photo(name: str) -> Path:
    path = ASSETS / "data" / "photos" / name
    if not path.is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    return path


# ------------------------------------------------------------------------------------------ finding 4


@pytest.fixture(scope="module")
def vehicles(tmp_path_factory):
    """The real yolov8n with three COCO classes mapped onto one kit class."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    tmp = tmp_path_factory.mktemp("vehicles")
    path = _write(tmp, """\
name: vehicles
ontology: {classes: {vehicle: [car, truck, bus], person: [person]}}
teacher: {kind: yolo, model: yolov8n.pt, device: cpu}
student: {kind: yolo-detect, model: yolov8n.yaml, imgsz: 320}
""")
    return build_teacher(load_kit(path), yolo_store(ASSETS, tmp / "store"))


def test_finding4_yolo_teacher_mapped_classes_get_nms_on_the_kit_classes(vehicles):
    from PIL import Image

    # two coco128 images where yolov8n calls one vehicle both a car and a truck (3 pairs at IoU > 0.96)
    images = [np.asarray(Image.open(ASSETS / "data/coco128/images/train2017" / f"{stem}.jpg").convert("RGB"))
              for stem in ("000000000257", "000000000532")]
    raws = vehicles.infer(images)
    vehicle = 0  # the kit's first class
    raw_pairs = 0
    for raw, image in zip(raws, images, strict=True):
        mapped = vehicles.mapping[raw["cls"]]
        keep = (mapped == vehicle) & (raw["conf"] >= vehicles.cfg.conf)
        raw_pairs += _pairs_above(raw["boxes"][keep], mapped[keep], vehicles.cfg.iou)
        d = vehicles.decide(raw, image.shape[:2])
        assert _pairs_above(d.boxes, d.class_ids, vehicles.cfg.iou) == 0
        assert np.all(np.diff(d.confidences) <= 0)  # best first
    assert raw_pairs >= 2  # the teacher's own per-class NMS left duplicates there


def test_finding4_nms_keeps_the_best_of_a_car_truck_pair(vehicles):
    names = {v: k for k, v in vehicles.model.names.items()}
    raw = {"boxes": np.array([[10, 10, 110, 60], [12, 11, 111, 61], [300, 10, 400, 60]], np.float32),
           "conf": np.array([0.6, 0.8, 0.5], np.float32),
           "cls": np.array([names["car"], names["truck"], names["bus"]], np.int32)}
    d = vehicles.decide(raw, (480, 640))
    assert d.class_ids.tolist() == [0, 0] and d.confidences.tolist() == pytest.approx([0.8, 0.5])
    assert d.boxes[0].tolist() == [12, 11, 111, 61]


# ------------------------------------------------------------------------------------------ finding 5


def test_finding5_clip_sees_the_whole_tall_box(forklift, monkeypatch):
    """A 40x300 box whose top is red and bottom blue: both reach the model's input, in the right places."""
    image = np.full((400, 400, 3), 128, np.uint8)
    image[50:80, 180:220] = (255, 0, 0)  # top of the box
    image[80:320, 180:220] = (0, 255, 0)
    image[320:350, 180:220] = (0, 0, 255)  # bottom of the box
    box = np.array([[180, 50, 220, 350]], np.float32)
    monkeypatch.setattr(forklift.proposer, "propose", lambda images: [(box, np.ones(1, np.float32)) for _ in images])
    seen = []
    encode = forklift.model.encode_image
    monkeypatch.setattr(forklift.model, "encode_image", lambda x, *a, **k: seen.append(x.clone()) or encode(x, *a, **k))
    forklift.infer([image])
    crop = seen[-1][0]  # (3, S, S): the crop's batch, normalised
    normalize = next(t for t in forklift.preprocess.transforms if type(t).__name__ == "Normalize")
    rgb = crop * torch.tensor(normalize.std)[:, None, None] + torch.tensor(normalize.mean)[:, None, None]
    red = ((rgb[0] > 0.8) & (rgb[1] < 0.2) & (rgb[2] < 0.2)).nonzero()[:, 0]
    blue = ((rgb[2] > 0.8) & (rgb[0] < 0.2) & (rgb[1] < 0.2)).nonzero()[:, 0]
    size = crop.shape[1]
    assert len(red) and len(blue), "the top or the bottom of the box was cut off"
    assert red.max() < size / 2 < blue.min()  # top at the top, bottom at the bottom, nothing squashed away
    assert "|crop=square" in forklift.cache_key


def test_finding5_crop_mode_is_in_the_teacher_cache_key(tmp_path):
    path = _write(tmp_path, FORKLIFT)
    overrides = ["teacher.abstain.floor=0.0", "teacher.model=ViT-S-32-alt"]
    keys = {mode: build_teacher(load_kit(path, overrides=[*overrides, f"teacher.proposer.crop={mode}"]),
                                ModelStore(offline=True)).cache_key for mode in ("square", "letterbox")}
    assert keys["square"] != keys["letterbox"] and keys["letterbox"].endswith("|crop=letterbox")
    with pytest.raises(KitError, match="teacher.proposer.crop"):
        load_kit(path, overrides=[*overrides, "teacher.proposer.crop=centre"])


def test_finding5_crop_of_a_thin_box_across_a_huge_image_is_bounded():
    """A 2500 x 250 box pads to a 3000-pixel square (a 20000-pixel one across a 50-megapixel photo would need
    1.7 GB): the crop is cut already shrunk to MAX_CROP_SIDE, the same picture as the full-size crop shrunk."""
    import cv2

    from dkit.distill.proposers import MAX_CROP_SIDE, crop_boxes

    image = np.zeros((300, 3000, 3), np.uint8)  # (H, W, 3)
    image[:, :1500] = (200, 30, 30)  # left half red, right half blue
    image[:, 1500:] = (30, 30, 200)
    box = np.array([[250.0, 25.0, 2750.0, 275.0]])
    for mode in ("square", "letterbox"):
        (small,) = crop_boxes(image, box, pad=0.1, mode=mode)
        assert small.shape == (MAX_CROP_SIDE, MAX_CROP_SIDE, 3)
        (full,) = crop_boxes(image, box, pad=0.1, mode=mode, max_side=10**6)
        assert full.shape[0] >= 3000
        reference = cv2.resize(full, (MAX_CROP_SIDE, MAX_CROP_SIDE), interpolation=cv2.INTER_AREA)
        assert np.abs(small.astype(int) - reference.astype(int)).mean() < 2.0
