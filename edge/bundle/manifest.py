"""The bundle manifest as typed, frozen dataclasses: the one contract between export and the device.

    from dkit.edge.bundle.manifest import Manifest

    m = Manifest.from_dict(json.loads(text))     # validated once; a ManifestError names the key at fault
    m.task, m.classes, m.preprocess.size, m.model("int8").file, m.thresholds.max_det, m.calibration.to_score(cos)
    m.to_dict()                                  # the JSON document (what dkit.export writes as manifest.json)

`dkit.export` builds a Manifest and writes it; `dkit.edge.bundle.verify` parses manifest.json into one, once, and
every consumer on the device (runtime, judge, pipeline, kiosk) reads these attributes: nothing else indexes the
JSON document or carries defaults of its own. The defaults that exist live here, next to the field they fill.
Sections that are free-form reports (parity figures, calibration percentiles, decode notes) stay mappings under
`info`; the device never reads them. A bundle whose decoder this runtime does not have (decode.type) is refused.

Schema (version 1, unchanged since the first bundle: an older bundle of version 1 parses exactly as before):
    schema_version, name, task (detect|classify|embed), teacher {id, random}, student {kind, model, imgsz, ...},
    models {role: {file, precision, inputs, outputs, ...}} (roles: student, student_fp16, student_int8, text, ...),
    preprocess {resize, size, pad_value, interpolation, crop, channels, scale, mean, std, layout},
    decode {...}, classes [...], thresholds {conf, iou, max_det, top_k}, runtime {providers, threads, max_fps},
    files {name: sha256}; embed bundles add prompts {file, dim, rows, templates}, calibration {cosine, score, ...},
    tokenizer {type, file, context_length}, logit_scale, judge {prompt, prompts, text_prompts, ...};
    checks {reference, min_agreement, machine} (held-out images and the fp32 results on them, for the on-device
    accuracy check of reduced-precision models: dkit.edge.infer.device_check).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import AfterValidator, BeforeValidator

from dkit.edge.bundle.kiosk_config import KioskConfig
from dkit.edge.bundle.schema import (
    EXTRA,
    INTERNAL,
    Document,
    Int,
    Invalid,
    Number,
    Numbers,
    Section,
    Str,
    Strings,
    Triple,
    WholeNumber,
    dump,
    frozen_dict,
    omit,
)

SCHEMA_VERSION = 1
TASKS = ("detect", "classify", "embed")
PRECISIONS = ("fp32", "fp16", "int8")
PROMPT_ROLES = ("class", "background", "prompt", "text", "unsafe")
MAX_PROMPT_CHARS = 300  # a judge prompt, typed on the device or written in a kit (dkit.edge.infer.judge.check_prompt)
RESIZE_MODES = ("letterbox", "shortest")
_DEFAULT_INTERPOLATION = {"letterbox": "linear", "shortest": "area"}
LETTERBOX_MODES = ("square", "minimal")  # minimal: padded only to a multiple of `stride` (Ultralytics' auto=True)
MODEL_FORMATS = ("onnx", "ncnn")


class ManifestError(ValueError):
    """The manifest document is not a valid bundle manifest; the message starts with the key at fault."""


class _Section(Section):
    """A manifest section (dkit.edge.bundle.schema.Section): `from_dict` raises ManifestError naming the key."""

    error: ClassVar[type[ValueError]] = ManifestError


def _refuse(section: _Section, key: str, detail: str) -> None:
    """A section's own check failed: ManifestError `<section>.<key>: <detail>` (the whole path under from_dict)."""
    raise _Refused(detail, key, section.where)


class _Refused(Invalid, ManifestError):
    """A section's check (in `__post_init__`): a ManifestError that also carries its key for from_dict's path."""


def _none(name: str):
    return lambda s: getattr(s, name) is None


def _falsy(name: str):
    return lambda s: not getattr(s, name)


# ------------------------------------------------------------------------------------------ sections


def _letterbox_only(p: Preprocess) -> bool:
    return p.resize != "letterbox"


def _square(p: Preprocess) -> bool:
    return p.resize != "letterbox" or p.letterbox == "square"  # absent: square (every bundle before minimal)


def _size(value: Any) -> Any:
    """`size`: an integer (a square) or [H, W]."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok:
        raise Invalid("expected a JSON array of 2 numbers")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class Preprocess(_Section):
    """What the device does to a frame before the model (dkit.edge.infer.preprocess reproduces the training side).
    `to_dict()` writes `size` as it was read (an integer or [H, W]) and only the keys its resize mode uses."""

    where: ClassVar[str] = "preprocess."

    resize: Str  # letterbox (detectors) | shortest (+ centre crop: classifiers, embedding students)
    size: Annotated[tuple[int, int], BeforeValidator(_size)] = field(
        metadata=dump(lambda p, v: v[0] if p.size_is_int else list(v)))  # (H, W) of the model input
    pad_value: WholeNumber = field(default=114, metadata=omit(_letterbox_only))
    # letterbox resize: square (always size) | minimal (models with dynamic H, W)
    letterbox: Str = field(default="square", metadata=omit(_square))
    stride: WholeNumber = field(default=32, metadata=omit(_square))  # minimal letterbox: sides a multiple of this
    crop: Str = field(default="center", metadata=omit(lambda p: p.resize == "letterbox"))
    interpolation: Str = ""  # "": the mode's default (letterbox: linear, shortest: area)
    channels: Str = "RGB"
    scale: Number = 1 / 255
    mean: Triple = (0.0, 0.0, 0.0)
    std: Triple = (1.0, 1.0, 1.0)
    layout: Str = "NCHW"
    size_is_int: bool = field(default=False, repr=False, compare=False, metadata=INTERNAL)  # how `size` was written
    extra: Document = field(default_factory=dict, compare=False, metadata=EXTRA)  # keys this version does not read

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            _refuse(self, "resize", f"expected one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.resize == "shortest" and self.crop != "center":
            _refuse(self, "crop", f"expected 'center', got {self.crop!r}")
        if self.channels not in ("RGB", "BGR"):
            _refuse(self, "channels", f"expected RGB or BGR, got {self.channels!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            _refuse(self, "size", f"expected positive sides, got {self.size!r}")
        if not self.interpolation:
            object.__setattr__(self, "interpolation", _DEFAULT_INTERPOLATION[self.resize])
        if self.letterbox not in LETTERBOX_MODES:
            _refuse(self, "letterbox", f"expected one of {', '.join(LETTERBOX_MODES)}, got {self.letterbox!r}")
        if self.stride < 1:
            _refuse(self, "stride", f"expected a positive integer, got {self.stride!r}")

    @classmethod
    def prepare(cls, doc: Any) -> Any:
        """`size` written as one integer is a square, and written back as one."""
        out = super().prepare(doc)
        if isinstance(out, dict) and isinstance(out.get("size"), int) and not isinstance(out["size"], bool):
            out["size_is_int"] = True
        return out


def as_preprocess(spec: Preprocess | Mapping) -> Preprocess:
    """A Preprocess from itself or from its JSON form (a manifest's `preprocess` section, as dkit.edge.infer.preprocess
    also accepts it); a ManifestError names the key at fault."""
    return spec if isinstance(spec, Preprocess) else Preprocess.from_dict(spec)


@dataclass(frozen=True)
class ModelEntry(_Section):
    """One model file of the bundle (`models.<role>`): `file` required, `format` one of MODEL_FORMATS; the other keys
    (reports: opset, parity, vs_fp32, ...) go to `info`."""

    role: str = field(metadata=INTERNAL | {"input": True})  # its key under `models`, not written inside the entry
    file: Str = field()
    precision: Str = "fp32"
    format: Str = field(default="onnx", metadata=omit(lambda m: m.format == "onnx"))  # onnx | ncnn (.param, .bin)
    weights: Str = field(default="", metadata=omit(_falsy("weights")))  # a second file some formats keep weights in
    info: Document = field(default_factory=dict, metadata=EXTRA)  # opset, parity, vs_fp32, ...: reports
    inputs: tuple[Document, ...] = field(default=(), metadata=omit(_falsy("inputs")))
    outputs: tuple[Document, ...] = field(default=(), metadata=omit(_falsy("outputs")))

    def __post_init__(self):
        if self.format not in MODEL_FORMATS:
            raise _Refused(f"expected one of {', '.join(MODEL_FORMATS)}, got {self.format!r}", "format",
                           f"models.{self.role}.")


def model_role(precision: str = "fp32", fmt: str = "onnx") -> str:
    """The `models` key of a student model: student, student_fp16, student_int8, student_ncnn, student_ncnn_fp16."""
    base = "student" if fmt == "onnx" else f"student_{fmt}"
    return base if precision == "fp32" else f"{base}_{precision}"


DECODERS = {"detect": "yolov8-detect", "classify": "classify", "embed": "embedding"}  # what this runtime decodes


@dataclass(frozen=True)
class Decode(_Section):
    """How the model's output is read (`decode.type`; "" in a document: the task's decoder, filled in by Manifest);
    the rest (shapes, notes) is a report under `info`."""

    where: ClassVar[str] = "decode."

    type: Str = ""
    info: Document = field(default_factory=dict, metadata=EXTRA)


@dataclass(frozen=True)
class Thresholds(_Section):
    """The device's starting thresholds (the kit's `edge:` section, whose defaults are these); each overridable on
    the device. A bundle lists the ones its task uses (USED); one without them starts from these defaults."""

    where: ClassVar[str] = "thresholds."

    conf: Number = 0.25  # detect, classify
    iou: Number = 0.45  # detect: NMS
    max_det: WholeNumber = 100  # detect
    top_k: WholeNumber = 5  # classify

    USED: ClassVar[dict[str, tuple[str, ...]]] = {"detect": ("conf", "iou", "max_det"), "classify": ("conf", "top_k"),
                                                  "embed": ()}

    def to_dict(self, task: str) -> dict[str, Any]:
        """The thresholds `task` uses (USED[task]) as JSON, e.g. `{"conf": 0.25, "top_k": 5}` for classify."""
        return {k: v for k, v in super().to_dict().items() if k in self.USED.get(task, ())}


@dataclass(frozen=True)
class RuntimeHints(_Section):
    """How the device runs the model unless told otherwise (the kit's `edge:` providers, threads, max_fps)."""

    where: ClassVar[str] = "runtime."

    providers: Strings = ()  # empty: the best available
    threads: Int = 0  # 0: onnxruntime's default
    max_fps: Number = 0.0  # 0: as fast as frames come


@dataclass(frozen=True)
class PromptRow(_Section):
    """One row of prompts.npy (`prompts.rows[i]`): its text and role; a role not in PROMPT_ROLES raises
    ManifestError on construction."""

    where: ClassVar[str] = "prompts.rows"

    text: Str
    role: Str  # class | background | prompt | text | unsafe
    # class rows: the ontology prompts averaged into it
    prompts: Strings | None = field(default=None, metadata=omit(_none("prompts")))

    def __post_init__(self):
        if self.role not in PROMPT_ROLES:
            _refuse(self, "", f"role {self.role!r} is not one of {', '.join(PROMPT_ROLES)}")


@dataclass(frozen=True)
class Prompts(_Section):
    """prompts.npy: one (D,) normalised embedding per row, in row order (`prompts`: file, dim, rows, templates); a
    ManifestError names the row at fault, e.g. `prompts.rows[3].role`."""

    where: ClassVar[str] = "prompts."

    file: Str
    dim: Int
    rows: tuple[PromptRow, ...]
    templates: Strings
    ensemble: Str = field(default="", metadata=omit(_falsy("ensemble")))

    def texts(self, *roles: str) -> list[str]:
        """The rows' texts in row order, only those of `roles` when given, e.g. `texts("class")`."""
        return [r.text for r in self.rows if not roles or r.role in roles]


@dataclass(frozen=True)
class Calibration(_Section):
    """Raw cosine -> 0-100 score: piecewise-linear through (cosine[i], score[i]) knots (dkit.export.judge.calibrate)."""

    where: ClassVar[str] = "calibration."
    first: ClassVar[tuple[str, ...]] = ("method",)

    cosine: Numbers
    score: Numbers
    method: Str = "piecewise-linear"
    info: Document = field(default_factory=dict, metadata=EXTRA)  # anchors, percentiles, teacher's curve, agreement

    def __post_init__(self):
        if len(self.cosine) < 2 or len(self.cosine) != len(self.score):
            raise _Refused("expected at least two (cosine, score) knots of equal count", "", "calibration")
        if any(b <= a for a, b in zip(self.cosine, self.cosine[1:], strict=False)):
            _refuse(self, "cosine", "knots must increase")

    def to_score(self, cosine: float | np.ndarray) -> float | np.ndarray:
        """Map raw cosine similarity (a float or an array) to the 0-100 score; clamped to the end knots outside them."""
        return np.interp(cosine, self.cosine, self.score)


@dataclass(frozen=True)
class TokenizerSpec(_Section):
    """`tokenizer`: the text tokenizer file of a judge bundle (`type` clip-bpe), with the text model's
    context length (77); no validation beyond the key types."""

    where: ClassVar[str] = "tokenizer."
    first: ClassVar[tuple[str, ...]] = ("type",)

    file: Str
    context_length: Int = 77
    type: Str = "clip-bpe"


@dataclass(frozen=True)
class DeviceChecks(_Section):
    """`checks`: the export's held-out images and fp32 results (`reference`, a JSON file of the bundle), which a
    device of another CPU architecture runs a reduced-precision model against (dkit.edge.infer.device_check)."""

    where: ClassVar[str] = "checks."

    reference: Str  # e.g. checks/reference.json
    min_agreement: Number  # the export's accuracy guard
    machine: Str  # the CPU architecture the reference and the export's checks ran on (platform.machine())

    def __post_init__(self):
        if not 0.0 <= self.min_agreement <= 1.0:
            _refuse(self, "min_agreement", f"expected a number in [0, 1], got {self.min_agreement!r}")


def _kiosk(value: Any) -> Any:
    """`judge.kiosk`: valid KioskConfig keys (dkit.edge.bundle.kiosk_config), or the key at fault."""
    if not isinstance(value, Mapping):
        raise Invalid(f"expected a JSON object, got {type(value).__name__}")
    try:
        KioskConfig.from_dict(value)
    except (ValueError, TypeError) as e:
        key, sep, detail = str(e).removeprefix("kiosk.").partition(": ")
        raise (Invalid(detail, key) if sep and " " not in key else Invalid(str(e))) from e
    return frozen_dict(dict(value))


_OptStrings = Annotated[Strings, BeforeValidator(lambda v: v or [])]  # null or absent: none


@dataclass(frozen=True)
class JudgeConfig(_Section):
    """The kiosk judge's prompts and moderation thresholds (the kit's `judge:`; dkit.edge.infer.moderation applies
    them). The kit's `judge:` section takes its numeric defaults from here; a judge bundle made from a kit without a
    `judge:` section uses these (no moderation prompts: none were embedded into it). `judge.kiosk` must be valid
    KioskConfig keys, or a ManifestError names the key at fault."""

    where: ClassVar[str] = "judge."

    prompt: Str | None = None
    prompts: _OptStrings = ()
    text_prompts: _OptStrings = ()
    unsafe_prompts: _OptStrings = ()
    text_penalty: Number = 0.5
    text_margin: Number = 0.0
    unsafe_margin: Number = 0.0
    no_match_score: Number = 15.0
    # the kiosk's limits (dkit.edge.bundle.kiosk_config.KioskConfig keys); absent from the JSON when empty
    kiosk: Annotated[Mapping[str, Any], BeforeValidator(_kiosk)] = field(
        default_factory=lambda: MappingProxyType({}), metadata=omit(_falsy("kiosk")))

    @classmethod
    def from_dict(cls, doc: Any, where: str | None = None) -> JudgeConfig:
        """Parse `judge` (None: the defaults)."""
        return cls() if doc is None else super().from_dict(doc, where)


# ------------------------------------------------------------------------------------------ the manifest

UNTRAINED_WARNING = ("made from an UNTRAINED (random) teacher: its scores and labels are meaningless (tests only); "
                     "export a bundle from a kit with real teacher weights before a real event")


def _with_roles(value: Any) -> Any:
    """`models`: each entry learns its role (its key)."""
    if not isinstance(value, Mapping):
        return value
    return {role: {**m, "role": role} if isinstance(m, Mapping) else m for role, m in value.items()}


Models = Annotated[dict[str, ModelEntry], BeforeValidator(_with_roles), AfterValidator(frozen_dict)]


@dataclass(frozen=True)
class Manifest(_Section):
    """The whole manifest.json of a bundle, validated on construction: a known task, a `models.student`
    entry, and prompts and calibration for an embed bundle (else ManifestError). Read one with
    `Manifest.from_dict(json.load(f))`; `to_dict()` gives the JSON document back."""

    name: Str
    task: Str
    teacher: Document  # id, random
    student: Document  # kind, model, imgsz, weights_sha256
    models: Models
    preprocess: Preprocess
    classes: Strings
    thresholds: Thresholds = field(default=Thresholds(), metadata=dump(lambda m, v: v.to_dict(m.task)))
    runtime: RuntimeHints = RuntimeHints()
    decode: Decode | None = field(  # None: the task's decoder (DECODERS)
        default=None, metadata=dump(lambda m, v: (v or Decode(DECODERS[m.task])).to_dict()))
    tokenizer: TokenizerSpec | None = field(default=None, metadata=omit(_none("tokenizer")))  # embed (judge)
    prompts: Prompts | None = field(default=None, metadata=omit(_none("prompts")))  # embed
    logit_scale: Number | None = field(default=None, metadata=omit(_none("logit_scale")))
    calibration: Calibration | None = field(default=None, metadata=omit(_none("calibration")))  # embed
    # embed; None: the bundle's kit had no `judge:` section
    judge: JudgeConfig | None = field(default=None, metadata=omit(_none("judge")))
    # None: no on-device accuracy check shipped (older bundles)
    checks: DeviceChecks | None = field(default=None, metadata=omit(_none("checks")))
    files: Document = field(default_factory=dict)  # name -> sha256 (filled in when written)
    info: Document = field(default_factory=dict, metadata=EXTRA)  # created, dkit_version, refused_variants, ...
    schema_version: Int = SCHEMA_VERSION

    first: ClassVar[tuple[str, ...]] = ("schema_version", "name", "task", "info", "teacher", "student", "models",
                                        "preprocess", "decode")

    def __post_init__(self):
        if self.task not in TASKS:
            raise ManifestError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if "student" not in self.models:
            raise ManifestError("models.student: missing required key")
        if self.task == "embed" and (self.prompts is None or self.calibration is None):
            raise ManifestError(f"{'prompts' if self.prompts is None else 'calibration'}: missing required key "
                                "for an embed bundle")
        wanted = DECODERS[self.task]
        if self.decode is not None and not self.decode.type:
            object.__setattr__(self, "decode", dataclasses.replace(self.decode, type=wanted))
        if self.decode is not None and self.decode.type != wanted:
            raise ManifestError(f"decode.type: this runtime decodes the output of {self.task} models as {wanted!r}, "
                                f"the bundle says {self.decode.type!r}; update dkit on the device")

    @property
    def judge_config(self) -> JudgeConfig:
        """The bundle's judge settings, or the JudgeConfig defaults when it has no `judge` section."""
        return self.judge if self.judge is not None else JudgeConfig()

    @property
    def untrained(self) -> bool:
        """True when the bundle was made from an untrained (random) teacher (`teacher.random`, or a teacher id the
        export marked "(UNTRAINED)"): its outputs are meaningless, and every operator-facing view says so."""
        return bool(self.teacher.get("random")) or "(UNTRAINED)" in str(self.teacher.get("id") or "")

    def precisions(self, fmt: str = "onnx") -> list[str]:
        """The precisions the bundle has a student model of in format `fmt`, in PRECISIONS order."""
        return [p for p in PRECISIONS if self.model(p, fmt) is not None]

    def formats(self) -> list[str]:
        """The model formats (MODEL_FORMATS order) the bundle has at least one student model in."""
        return [f for f in MODEL_FORMATS if self.precisions(f)]

    def model(self, precision: str = "fp32", fmt: str = "onnx") -> ModelEntry | None:
        """The student model of one precision and format, or None when the bundle has none."""
        return self.models.get(model_role(precision, fmt))

    @classmethod
    def prepare(cls, doc: Any) -> Any:
        """An absent `decode` is the task's decoder (filled in by __post_init__)."""
        out = super().prepare(doc)
        if isinstance(out, dict):
            out.setdefault("decode", {})
        return out

    @classmethod
    def from_dict(cls, doc: Any, where: str | None = None) -> Manifest:
        """Parse and validate a manifest document, e.g. `Manifest.from_dict(json.load(f))`; a ManifestError names the
        key at fault, and a schema_version other than SCHEMA_VERSION is refused. Unknown top-level keys go to `info`."""
        if not isinstance(doc, dict):
            raise ManifestError("expected a JSON object")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"schema_version {version!r} is not supported by this runtime (it reads "
                                f"{SCHEMA_VERSION}); export the bundle again with a matching dkit, or update dkit "
                                "on the device")
        if doc.get("files") is None:
            raise ManifestError("files: missing required key")
        return super().from_dict(doc, "" if where is None else where)
