"""Student kinds are declared once (dkit.core.student_kinds): a kind registered in one place is a kit's
`student.kind` for `dkit check`, a student plugin, an exporter and (with a converter) an NCNN kind; its
`student.train_args` are checked by its own model when the kit loads."""

from __future__ import annotations

from pathlib import Path

import pytest

import dkit.core.student_kinds.registry as registry
from dkit.cli.main import main
from dkit.core.errors import KitError, UsageError
from dkit.core.kit import load_kit
from dkit.core.student_kinds import (
    BUILT_IN,
    NonNegative,
    StudentKind,
    StudentKindError,
    TrainArgs,
    YoloTrainArgs,
    register_student_kind,
    student_kind,
    student_kinds,
)
from dkit.distill.students import STUDENTS, student_plugin
from dkit.edge.bundle.manifest import Decode, ModelEntry, Preprocess
from dkit.export.exporters import EXPORTERS, Exported, exporter_for, resolve
from dkit.export.ncnn import ncnn_kinds
from tests.conftest import RECIPES
from tests.kits import toy_kit

# ------------------------------------------------------------------------- a new kind, all in one place


class TinyArgs(TrainArgs):
    """The dummy kind's train_args."""

    lr: NonNegative = 1e-3


def train(kit, run_dir, **kwargs) -> dict:
    """The dummy kind's training: what it was asked to do."""
    return {"kind": kit.student.kind, "lr": kit.student.args.lr, "run": run_dir}


def evaluate(kit, run_dir, **kwargs) -> dict:
    """The dummy kind's evaluation."""
    return {"task": kit.student.spec.task}


def export_tiny(kit, run, bundle_dir, store) -> Exported:
    """The dummy kind's exporter."""
    return Exported(ModelEntry("student", "student.onnx"), Preprocess("shortest", (32, 32)), Decode("classify"),
                    classes=kit.ontology.names)


def convert_tiny(kit, run, bundle_dir, stem, *, half):
    """The dummy kind's NCNN converter."""
    return bundle_dir / f"{stem}.ncnn.param", bundle_dir / f"{stem}.ncnn.bin", None


# Its declaration names this module for training and export: dkit.distill and dkit.export import it only when
# the kind is trained or exported, which `dkit check` never does.
TINY = StudentKind(key="tiny-cls", task="classify", config=TinyArgs, name="tiny", teachers=("clip",),
                   train=__name__, exporter=f"{__name__}:export_tiny", ncnn=f"{__name__}:convert_tiny")


@pytest.fixture
def kinds(monkeypatch):
    """The registry as the package declares it, for this test only (a registration does not outlive it)."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))


def write_kit(tmp_path: Path, kind: str, train_args: str = "{}") -> Path:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    path = tmp_path / "kit.yaml"
    path.write_text(toy_kit(student=f"{{kind: {kind}, model: tiny, imgsz: 64, train_args: {train_args}}}", judge=None))
    return path


def test_a_kind_registered_in_one_place_is_accepted_by_dkit_check(kinds, tmp_path, capsys):
    path = write_kit(tmp_path, "tiny-cls", "{lr: 0.01}")
    assert main(["check", str(path)]) == 2  # not declared yet: the kit's kind list does not know it
    assert "student.kind: expected one of 'yolo-detect', 'yolo-cls' or 'clip-embed'" in capsys.readouterr().err

    register_student_kind(TINY)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid." in out and "kind: tiny-cls" in out and "train_args: {lr: 0.01}" in out
    kit = load_kit(path)
    assert kit.student.spec is TINY and kit.task == "classify" and kit.student.args == TinyArgs(lr=0.01)

    # every derived view sees it: the kit's kinds, the student plugins, the exporters, the NCNN kinds
    assert list(student_kinds()) == ["yolo-detect", "yolo-cls", "clip-embed", "tiny-cls"]
    assert STUDENTS["tiny-cls"] == student_plugin(kit)
    assert (STUDENTS["tiny-cls"].module, STUDENTS["tiny-cls"].task) == (__name__, "classify")
    assert EXPORTERS["tiny-cls"] == f"{__name__}:export_tiny"
    assert "tiny-cls" in ncnn_kinds() and student_kind("tiny-cls").formats == ("onnx", "ncnn")
    # ... and reach its implementations
    assert student_plugin(kit).train(kit, tmp_path) == {"kind": "tiny-cls", "lr": 0.01, "run": tmp_path}
    assert student_plugin(kit).evaluate(kit, tmp_path) == {"task": "classify"}
    assert exporter_for(kit)(kit, None, tmp_path, None).classes == ["cat", "dog"]
    assert resolve(student_kind("tiny-cls").ncnn) is convert_tiny


def test_a_registered_kinds_own_rules_are_the_kits(kinds, tmp_path):
    register_student_kind(TINY)
    with pytest.raises(KitError, match=r"student\.train_args\.lr: expected a number >= 0, got -1"):
        load_kit(write_kit(tmp_path, "tiny-cls", "{lr: -1}"))
    with pytest.raises(KitError, match=r"student\.train_args\.mosaic: unknown key; the keys here are: lr"):
        load_kit(write_kit(tmp_path, "tiny-cls", "{mosaic: 0.5}"))
    with pytest.raises(KitError, match=r"student\.kind: expected a yolo-detect student for a yolo teacher, got "
                                       r"'tiny-cls'"):
        load_kit(write_kit(tmp_path, "tiny-cls"), overrides=["teacher.kind=yolo", "teacher.model=yolov8n.pt"])
    with pytest.raises(KitError, match="judge: expected no judge section unless student.kind is clip-embed"):
        load_kit(write_kit(tmp_path, "tiny-cls"), overrides=["judge.prompt=a cat"])
    with pytest.raises(KitError, match=r"student.device: .* for a tiny student: a list of devices is for YOLO "
                                       r"students, got \[0, 1\]"):
        load_kit(write_kit(tmp_path, "tiny-cls"), overrides=["student.device=[0, 1]"])


def test_the_registry_refuses_a_key_declared_twice(kinds):
    register_student_kind(TINY)
    with pytest.raises(StudentKindError, match="'tiny-cls' is declared twice"):
        register_student_kind(TINY)
    with pytest.raises(StudentKindError, match="'yolo-cls' is declared twice"):
        register_student_kind(StudentKind(key="yolo-cls", task="classify", config=TinyArgs, train="x",
                                          exporter="x:y"))
    assert student_kind("yolo-cls") is BUILT_IN[1]


@pytest.mark.parametrize(("field", "value", "words"), [
    ("key", "Tiny Cls", "key: expected lower-case words"),
    ("task", "segment", "task: expected one of detect, classify, embed"),
    ("config", dict, "config: expected a TrainArgs subclass"),
    ("exporter", "tests.core.test_student_kinds", "exporter: expected 'module:function'"),
    ("ncnn", "not a path:f", "ncnn: expected 'module:function' or None"),
    ("teachers", ("dino",), "teachers: expected a non-empty tuple of clip, yolo"),
    ("imgsz_multiple", 0, "imgsz_multiple: expected an integer >= 1"),
])
def test_a_malformed_declaration_is_refused_naming_its_field(field, value, words):
    fields = {"key": "tiny-cls", "task": "classify", "config": TinyArgs, "train": "m", "exporter": "m:f"}
    with pytest.raises(StudentKindError, match=words):
        StudentKind(**(fields | {field: value}))


def test_unknown_kind_is_a_usage_error_naming_the_known_ones():
    with pytest.raises(UsageError, match="unknown student kind 'nope'; known: yolo-detect, yolo-cls, clip-embed"):
        student_plugin("nope")


def test_the_built_in_kinds_derive_what_was_written_out_before():
    assert list(STUDENTS) == list(EXPORTERS) == ["yolo-detect", "yolo-cls", "clip-embed"] == ncnn_kinds()
    assert dict(EXPORTERS) == {"yolo-detect": "dkit.export.yolo:export_yolo_detect",
                               "yolo-cls": "dkit.export.yolo:export_yolo_cls",
                               "clip-embed": "dkit.export.judge:export_clip_embed"}
    assert {k: (p.task, p.module, p.weights_in_store) for k, p in STUDENTS.items()} == {
        "yolo-detect": ("detect", "dkit.distill.students.yolo", True),
        "yolo-cls": ("classify", "dkit.distill.students.yolo", True),
        "clip-embed": ("embed", "dkit.distill.students.clip_embed", False),
    }
    for kind in BUILT_IN:  # every implementation a built-in declaration names is there (no import: no torch)
        for target in (kind.exporter, kind.ncnn):
            module, name = target.split(":")
            source = Path(__file__).parents[2] / module.removeprefix("dkit.").replace(".", "/")
            assert f"def {name}(" in source.with_suffix(".py").read_text(), target


@pytest.mark.parametrize(("train_args", "key", "words"), [
    ("{momentum: 0.9}", "student.train_args.momentum", ["unknown key", "the keys here are: lr, weight_decay"]),
    ("{lr: fast}", "student.train_args.lr", ["expected a number >= 0", "'fast'"]),
    ("{kd_weight: true}", "student.train_args.kd_weight", ["expected a number >= 0", "True"]),
    ("{seed: 1.5}", "student.train_args.seed", ["expected an integer", "1.5"]),
    ("{workers: -1}", "student.train_args.workers", [">= 0", "-1"]),
])
def test_clip_embed_train_args_are_checked_when_the_kit_loads(tmp_path, train_args, key, words):
    with pytest.raises(KitError) as info:
        load_kit(write_kit(tmp_path, "clip-embed", train_args))
    assert info.value.key == key
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_clip_embed_train_args_keep_their_values_as_written(tmp_path):
    kit = load_kit(write_kit(tmp_path, "clip-embed", "{lr: 1, kd_weight: 0}"))
    assert kit.student.train_args == {"lr": 1, "kd_weight": 0}
    args = kit.student.args.model_dump()
    assert args == {"lr": 1, "weight_decay": 0.05, "kd_weight": 0, "seed": 0, "workers": 0}
    assert type(args["lr"]) is int  # the run's fingerprint holds the dict: 1 stays 1, not 1.0


def test_yolo_train_args_take_any_ultralytics_argument_and_type_the_common_ones(tmp_path):
    coco = load_kit(RECIPES / "coco128" / "kit.yaml", data=tmp_path)
    assert coco.student.train_args == {"warmup_epochs": 0, "mosaic": 0.5}  # passed on as written
    kit = load_kit(write_kit(tmp_path, "yolo-cls", "{optimizer: SGD, freeze: 10, cache: ram}"))
    assert kit.student.train_args == {"optimizer": "SGD", "freeze": 10, "cache": "ram"}
    for train_args, key, words in [("{mosaic: 1.5}", "student.train_args.mosaic", ["<= 1.0", "1.5"]),
                                   ("{cos_lr: 'yes'}", "student.train_args.cos_lr", ["true or false", "'yes'"]),
                                   ("{close_mosaic: 2.5}", "student.train_args.close_mosaic", ["an integer"])]:
        with pytest.raises(KitError) as info:
            load_kit(write_kit(tmp_path, "yolo-cls", train_args))
        assert info.value.key == key and all(w in str(info.value) for w in words), str(info.value)


def test_yolo_train_args_are_typed_as_ultralytics_types_them():
    cfg = pytest.importorskip("ultralytics.cfg")
    groups = {"fraction": cfg.CFG_FRACTION_KEYS, "number": cfg.CFG_FLOAT_KEYS, "int": cfg.CFG_INT_KEYS,
              "bool": cfg.CFG_BOOL_KEYS}
    for name, field in YoloTrainArgs.model_fields.items():
        meta = {type(m).__name__ for m in field.metadata}
        ours = ("bool" if field.annotation is bool else "int" if field.annotation is int
                else "fraction" if any(getattr(m, "le", None) == 1.0 for m in field.metadata) else "number")
        assert name in groups[ours], f"train_args.{name}: typed as {ours} here ({meta}), not by Ultralytics"
