"""The kit YAML contract: every recipe validates, and every kind of mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dkit.core.errors import KitError, UsageError
from dkit.core.kit import Kit, load_kit
from tests.conftest import RECIPES, run_dkit
from tests.kits import TOY_KIT

GOOD = TOY_KIT  # tests/kits.py: the one toy kit


@pytest.fixture
def kit_dir(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    return tmp_path


def write(kit_dir: Path, text: str) -> Path:
    path = kit_dir / "kit.yaml"
    path.write_text(text)
    return path


def edit(old: str, new: str) -> str:
    assert old in GOOD, old  # the table must keep matching GOOD
    return GOOD.replace(old, new, 1)


# (case id, kit text, key path the error names, words the message must contain)
ERRORS = [
    ("unknown top-level key", GOOD + "tacher: {}\n", "tacher", ["unknown key", "did you mean 'teacher'"]),
    ("unknown nested key", edit("imgsz: 224", "imgsz: 224, epoch: 3"), "student.epoch",
     ["unknown key", "did you mean 'epochs'", "imgsz"]),
    ("string for an integer", edit("imgsz: 224", "imgsz: big"), "student.imgsz", ["expected an integer", "'big'"]),
    ("quoted integer", edit("imgsz: 224", "imgsz: '224'"), "student.imgsz", ["expected an integer", "'224'"]),
    ("float for an integer", edit("imgsz: 224", "epochs: 1.5"), "student.epochs", ["expected an integer", "1.5"]),
    ("word for a boolean", edit("pretrained: random", "pretrained: random, augment: 'yes'"), "teacher.augment",
     ["expected true or false", "'yes'"]),
    ("number out of range", edit("pretrained: random", "pretrained: random, conf: 1.5"), "teacher.conf",
     ["<= 1.0", "1.5"]),
    ("negative size", edit("imgsz: 224", "imgsz: -32"), "student.imgsz", ["> 0", "-32"]),
    ("unknown teacher kind", edit("kind: clip,", "kind: clipp,"), "teacher.kind", ["'clip'", "'yolo'", "'clipp'"]),
    ("unknown precision", GOOD + "export: {precisions: [fp32, int4]}\n", "export.precisions[1]",
     ["'int8'", "'int4'"]),
    ("empty ontology", edit("classes:\n    cat: [a cat, a kitten]\n    dog: a dog", "classes: {}"),
     "ontology.classes", ["at least one class", "{}"]),
    ("class without prompts", edit("dog: a dog", "dog: []"), "ontology.classes.dog", ["non-empty"]),
    ("classes as a list", edit("classes:\n    cat: [a cat, a kitten]\n    dog: a dog", "classes: [cat, dog]"),
     "ontology.classes", ["expected a mapping"]),
    ("missing section", GOOD.split("student:")[0] + "judge: {prompt: a cat}\n", "student", ["required key is missing"]),
    ("missing image folder", edit("images: imgs", "images: nope"), "data.images",
     ["no such folder", "nope", "relative to the kit file"]),
    ("bad held-out share", edit("val: 0.25", "val: 1.5"), "data.val", ["between 0 and 1", "1.5"]),
    ("template without {}", edit("pretrained: random", "pretrained: random, templates: [a photo]"),
     "teacher.templates[0]", ["exactly one '{}'", "'a photo'"]),
    ("clip teacher without weights", edit("pretrained: random", "imgsz: 224"), "teacher.pretrained",
     ["open_clip pretrained tag", "'random'"]),
    ("checkpoint path that is missing", edit("pretrained: random", "pretrained: weights/clip.pt"),
     "teacher.pretrained", ["existing checkpoint file", "clip.pt"]),
    ("yolo teacher, embedding student", edit("kind: clip,", "kind: yolo,"), "student.kind",
     ["yolo teacher", "'clip-embed'"]),
    ("judge without clip-embed", edit("kind: clip-embed", "kind: yolo-cls").replace("imgsz: 224", "imgsz: 256"),
     "judge", ["clip-embed"]),
    ("yolo student size", edit("kind: clip-embed", "kind: yolo-cls").replace("judge: {prompt: a cat}\n", "")
     .replace("imgsz: 224", "imgsz: 200"), "student.imgsz", ["multiple of 32", "200"]),
    ("run name with a space", edit("name: toy", "name: 'my kit'"), "name", ["letters, digits", "'my kit'"]),
    ("not a mapping", "- a\n- b\n", "", ["expected a mapping", "['a', 'b']"]),
    ("invalid YAML", GOOD + "oops: [a, b\nmore: 1\n", "",
     ["invalid YAML", "kit.yaml:12:5", "flow sequence at line 11"]),
    ("bad indentation", GOOD + " extra: 1\n", "", ["invalid YAML", "kit.yaml:11:2", "expected <block end>"]),
    ("duplicate key", GOOD + "name: again\n", "", ["invalid YAML", "duplicate key 'name'", "kit.yaml:11:1"]),
]


@pytest.mark.parametrize(("text", "key", "words"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_kit_errors_name_file_key_and_expectation(kit_dir: Path, text: str, key: str, words: list[str]):
    path = write(kit_dir, text)
    with pytest.raises(KitError) as info:
        load_kit(path)
    err = info.value
    message = str(err)
    assert err.exit_code == 2
    assert "\n" not in message
    assert message.startswith(str(path))
    assert err.key == key
    if key:
        assert f": {key}: " in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
    ("overrides", "data", "key", "words"),
    [
        (["student.imgsz=abc"], None, "student.imgsz", ["--set student.imgsz=abc", "expected an integer"]),
        (["student.imgzs=3"], None, "student.imgzs", ["--set student.imgzs=3", "did you mean 'imgsz'"]),
        (["name.first=1"], None, "name", ["--set name.first=1", "a section"]),
        (["export.precisions=[fp32, int4]"], None, "export.precisions[1]", ["'int4'"]),
        ([], "no/such/dir", "data.images", ["--data no/such/dir", "no such folder"]),
    ],
    ids=["bad value", "unknown key", "through a scalar", "bad list item", "missing --data folder"],
)
def test_command_line_overrides_are_validated_like_the_file(kit_dir, overrides, data, key, words):
    with pytest.raises(KitError) as info:
        load_kit(write(kit_dir, GOOD), data=data, overrides=overrides)
    assert info.value.key == key
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("item", ["teacher.imgsz", "=3", "teacher..imgsz=3", "a.b=[unclosed"])
def test_malformed_set_is_a_usage_error(kit_dir, item):
    with pytest.raises(UsageError, match="--set"):
        load_kit(write(kit_dir, GOOD), overrides=[item])


@pytest.mark.parametrize(("text", "value"), [("1e-9", 1e-9), ("5E-1", 0.5), ("-2e-1", -0.2), ("1.5e-1", 0.15)])
def test_exponent_numbers_are_numbers_in_files_and_overrides(kit_dir, text, value):
    in_file = load_kit(write(kit_dir, edit("pretrained: random", f"pretrained: random, abstain: {{floor: {text}}}")))
    assert in_file.teacher.abstain.floor == pytest.approx(value)
    overridden = load_kit(write(kit_dir, GOOD), overrides=[f"teacher.abstain.floor={text}"])
    assert overridden.teacher.abstain.floor == pytest.approx(value)


def test_not_every_e_is_an_exponent(kit_dir):
    assert load_kit(write(kit_dir, GOOD), overrides=["name=1e3x"]).name == "1e3x"


def test_overrides_parse_yaml_values_and_create_sections(kit_dir):
    kit = load_kit(write(kit_dir, GOOD), overrides=[
        "teacher.imgsz=336", "teacher.augment=true", "export.precisions=[fp32, int8]",
        "edge.max_fps=12.5", "teacher.templates=['a photo of {}.', 'art of {}']",
    ])
    assert kit.teacher.imgsz == 336 and kit.teacher.augment is True
    assert kit.export.precisions == ["fp32", "int8"]
    assert kit.edge.max_fps == 12.5
    assert kit.teacher.templates == ["a photo of {}.", "art of {}"]


def test_paths_resolve_relative_to_the_kit_file_and_data_to_the_cwd(kit_dir, tmp_path, monkeypatch):
    (kit_dir / "weights").mkdir()
    (kit_dir / "weights" / "clip.pt").write_bytes(b"x")
    kit = load_kit(write(kit_dir, edit("pretrained: random", "pretrained: weights/clip.pt")))
    assert kit.data.images == (kit_dir / "imgs").resolve()
    assert kit.teacher.pretrained == str((kit_dir / "weights" / "clip.pt").resolve())
    assert not kit.teacher.is_random

    elsewhere = tmp_path / "cwd"
    (elsewhere / "photos").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    kit = load_kit(kit_dir / "kit.yaml", data="photos")
    assert kit.data.images == (elsewhere / "photos").resolve()
    assert kit.run_dir() == elsewhere / "runs" / "toy"
    assert kit.run_dir("out/run1") == (elsewhere / "out" / "run1").resolve()


def test_defaults_and_shorthands(kit_dir):
    kit = load_kit(write(kit_dir, edit("data: {images: imgs, val: 0.25}", "data: imgs")))
    assert isinstance(kit, Kit)
    assert kit.ontology.classes == {"cat": ["a cat", "a kitten"], "dog": ["a dog"]}  # a string is one prompt
    assert kit.ontology.names == ["cat", "dog"]
    assert kit.data.val == 0.2 and kit.data.seed == 0
    assert kit.teacher.templates == ["{}"] and kit.teacher.is_random
    assert kit.export.precisions == ["fp32"] and kit.export.opset == 17
    assert kit.judge is not None and kit.judge.prompt == "a cat"


def test_data_may_be_one_file_such_as_a_video(kit_dir):
    (kit_dir / "cam1.mp4").write_bytes(b"\0" * 16)  # read when labelling (dkit.distill.video), not here
    kit = load_kit(write(kit_dir, GOOD), data=kit_dir / "cam1.mp4")
    assert kit.data.images == (kit_dir / "cam1.mp4").resolve() and kit.data.video.fps == 1.0


def test_held_out_count_stays_an_integer(kit_dir):
    kit = load_kit(write(kit_dir, edit("val: 0.25", "val: 32")))
    assert kit.data.val == 32 and isinstance(kit.data.val, int)


def test_kit_is_immutable(kit_dir):
    kit = load_kit(write(kit_dir, GOOD))
    with pytest.raises(AttributeError):
        kit.teacher.imgsz = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*/kit.yaml")), ids=lambda p: p.parent.name)
def test_every_recipe_validates(recipe: Path):
    kit = load_kit(recipe)
    assert kit.name == recipe.parent.name


def test_coco128_recipe_matches_the_real_teacher(assets):
    """The ontology is YOLOv8n's 80 classes in its order, each mapped to itself; 32 images held out."""
    ultralytics = pytest.importorskip("ultralytics")
    kit = load_kit(RECIPES / "coco128" / "kit.yaml", data=assets / "data/coco128/images/train2017")
    teacher = ultralytics.YOLO(str(assets / "models" / "yolov8n.pt"))
    names = [teacher.names[i] for i in range(len(teacher.names))]
    assert kit.ontology.names == names
    assert all(prompts == [name] for name, prompts in kit.ontology.classes.items())
    assert (kit.teacher.kind, kit.teacher.model, kit.teacher.imgsz) == ("yolo", "yolov8n.pt", 640)
    assert (kit.student.kind, kit.student.imgsz) == ("yolo-detect", 320)
    assert kit.data.val == 32 and kit.data.images.is_dir()


def test_default_kit_uses_a_clip_teacher_with_prompts():
    kit = load_kit(RECIPES / "imagenette" / "kit.yaml")
    assert kit.teacher.kind == "clip" and not kit.teacher.is_random
    assert kit.data.url is not None and kit.data.images is None
    assert len(kit.ontology.classes) == 10 and kit.ontology.background


# ------------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("case", ["unknown nested key", "missing image folder", "invalid YAML", "missing section"])
def test_cli_reports_kit_errors_in_one_line_with_exit_code_2(kit_dir, case):
    text, key = next((c[1], c[2]) for c in ERRORS if c[0] == case)
    path = write(kit_dir, text)
    for command in ("check", "label"):
        result = run_dkit(command, str(path))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"dkit: error: {path}")
        assert f": {key}: " in lines[0] or not key


def test_cli_check_prints_the_resolved_kit(kit_dir):
    import yaml

    result = run_dkit("check", str(write(kit_dir, GOOD)), "--set", "teacher.imgsz=336")
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    assert doc["teacher"]["imgsz"] == 336
    assert doc["data"]["images"] == str((kit_dir / "imgs").resolve())
    assert doc["export"]["precisions"] == ["fp32"]  # defaults are filled in
    assert "UNTRAINED" in result.stderr  # a random teacher is announced loudly


def test_cli_missing_kit_file(tmp_path):
    result = run_dkit("check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "kit file not found" in result.stderr


YOLO_STUDENT = "student: {kind: yolo-cls, model: yolov8n-cls.pt, imgsz: 224}"


def as_yolo() -> str:
    """GOOD with a yolo-cls student (and so no judge section)."""
    return edit("student: {kind: clip-embed, model: mobilenetv3_small_100, imgsz: 224}", YOLO_STUDENT).replace(
        "judge: {prompt: a cat}\n", "")


@pytest.mark.parametrize(
    ("student", "overrides", "key", "words"),
    [
        (YOLO_STUDENT, ["student.device=[]"], "student.device", ["non-empty list of GPU indices", "[]"]),
        (YOLO_STUDENT, ["student.device=[a]"], "student.device[0]", ["--set student.device=[a]", "an integer", "'a'"]),
        (YOLO_STUDENT, ["student.device=[0, -1]"], "student.device[1]", [">= 0", "-1"]),
        (YOLO_STUDENT, ["student.device=1"], "student.device", ["'auto', a device name", "got 1"]),
        (None, ["student.device=[0, 1]"], "student.device", ["a list of devices is for YOLO students", "torchrun"]),
        (YOLO_STUDENT, ["student.pretrained=mnv3.safetensors"], "student.pretrained",
         ["YOLO student", "student.model"]),
        (None, ["student.pretrained=weights/mnv3.safetensors"], "student.pretrained", ["file name", "not a path"]),
        (None, ["student.pretrained=mnv3.onnx"], "student.pretrained", [".safetensors", "'mnv3.onnx'"]),
    ],
    ids=["empty list", "not an index", "negative index", "a number", "list for clip-embed", "pretrained for yolo",
         "pretrained path", "pretrained suffix"],
)
def test_student_device_list_and_pretrained_are_checked(kit_dir, student, overrides, key, words):
    text = GOOD if student is None else as_yolo()
    with pytest.raises(KitError) as info:
        load_kit(write(kit_dir, text), overrides=overrides)
    assert info.value.key == key
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_student_device_may_list_gpus_and_pretrained_names_a_store_file(kit_dir):
    kit = load_kit(write(kit_dir, as_yolo()), overrides=["student.device=[0, 1]"])
    assert kit.student.device == [0, 1] and kit.student.single_device == "cuda:0"
    assert kit.student.pretrained is None
    kit = load_kit(write(kit_dir, GOOD), overrides=["student.pretrained=mnv3.safetensors", "student.device=cuda:1"])
    assert kit.student.pretrained == "mnv3.safetensors" and kit.student.single_device == "cuda:1"
    assert load_kit(write(kit_dir, GOOD)).student.device == "auto"


@pytest.mark.parametrize("override, key", [
    ("judge.prompt=" + "a" * 301, "judge.prompt"),
    ("judge.prompts=[a cat, '" + "b" * 301 + "']", "judge.prompts[1]"),
    ("ontology.background=['" + "c" * 301 + "']", "ontology.background[0]"),
])
def test_judge_prompts_longer_than_the_device_takes_are_named_at_load(override, key):
    """A judge kit's prompt the device would refuse (over MAX_PROMPT_CHARS) is a KitError naming its key when the
    kit loads, not a bare ValueError deep inside `dkit export`."""
    with pytest.raises(KitError, match=rf"{key.replace('[', '.').replace(']', '.')}: expected a non-empty prompt of "
                                       "at most 300 characters"):
        load_kit(RECIPES / "quickdraw" / "kit.yaml", overrides=[override])


def test_a_kind_that_does_not_fit_the_teacher_is_said_before_its_train_args():
    """coco128 (a yolo teacher, YOLO train_args) switched to clip-embed: the error is the kind/teacher mismatch on
    the --set that made it, not the train_args the new kind does not take (review of #26)."""
    with pytest.raises(KitError) as e:
        load_kit(RECIPES / "coco128" / "kit.yaml", overrides=["student.kind=clip-embed"])
    assert "(--set student.kind=clip-embed): student.kind: expected a yolo-detect student for a yolo teacher" in str(
        e.value)
    with pytest.raises(KitError, match=r"student\.train_args\.mosaic: expected a number <= 1\.0, got 2"):
        load_kit(RECIPES / "coco128" / "kit.yaml", overrides=["student.train_args.mosaic=2"])
