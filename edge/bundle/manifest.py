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

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
TASKS = ("detect", "classify", "embed")
PRECISIONS = ("fp32", "fp16", "int8")
PROMPT_ROLES = ("class", "background", "prompt", "text", "unsafe")
MAX_PROMPT_CHARS = 300  # a judge prompt, typed on the device or written in a kit (dkit.edge.infer.judge.check_prompt)
RESIZE_MODES = ("letterbox", "shortest")
_DEFAULT_INTERPOLATION = {"letterbox": "linear", "shortest": "area"}
_PREPROCESS_KEYS = {"resize", "size", "interpolation", "pad_value", "crop", "channels", "scale", "mean", "std",
                    "layout", "letterbox", "stride"}
LETTERBOX_MODES = ("square", "minimal")  # minimal: padded only to a multiple of `stride` (Ultralytics' auto=True)
MODEL_FORMATS = ("onnx", "ncnn")


class ManifestError(ValueError):
    """The manifest document is not a valid bundle manifest; the message starts with the key at fault."""


# ------------------------------------------------------------------------------------------ reading helpers


def _get(doc: Mapping, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    """doc[key] checked against `kind` (bool is not a number), or `default` when absent (required if none)."""
    if key not in doc or doc[key] is None and default is not ...:
        if default is ...:
            raise ManifestError(f"{where}{key}: missing required key")
        return default
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ManifestError(f"{where}{key}: expected {_type_name(kinds)}, got {type(value).__name__}")
    return value


def _section(doc: Mapping, key: str, where: str = "", *, required: bool = True) -> Mapping | None:
    value = _get(doc, key, dict, where, ... if required else None)
    return value


def _strings(values: Any, where: str) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ManifestError(f"{where}: expected a JSON array of strings")
    return tuple(values)


def _numbers(values: Any, where: str, length: int | None = None) -> tuple[float, ...]:
    ok = isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok or (length is not None and len(values) != length):
        raise ManifestError(f"{where}: expected a JSON array of {length or 'some'} numbers")
    return tuple(float(v) for v in values)


def _type_name(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "a number"
    names = {"dict": "a JSON object", "list": "a JSON array", "str": "a string", "int": "an integer",
             "float": "a number", "bool": "true or false"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in kinds)


def _frozen(doc: Mapping) -> Mapping[str, Any]:
    return MappingProxyType(dict(doc))


# ------------------------------------------------------------------------------------------ sections


@dataclass(frozen=True)
class Preprocess:
    """What the device does to a frame before the model (dkit.edge.infer.preprocess reproduces the training side)."""

    resize: str  # letterbox (detectors) | shortest (+ centre crop: classifiers, embedding students)
    size: tuple[int, int]  # (H, W) of the model input
    interpolation: str = ""  # "": the mode's default (letterbox: linear, shortest: area)
    pad_value: int = 114
    crop: str = "center"
    channels: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    letterbox: str = "square"  # letterbox resize: square (always size) | minimal (models with dynamic H, W)
    stride: int = 32  # minimal letterbox: each side padded to a multiple of this
    size_is_int: bool = field(default=False, repr=False, compare=False)  # how `size` was written (round trip)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # keys this version does not read

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ManifestError(f"preprocess.resize: expected one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.resize == "shortest" and self.crop != "center":
            raise ManifestError(f"preprocess.crop: expected 'center', got {self.crop!r}")
        if self.channels not in ("RGB", "BGR"):
            raise ManifestError(f"preprocess.channels: expected RGB or BGR, got {self.channels!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ManifestError(f"preprocess.size: expected positive sides, got {self.size!r}")
        if not self.interpolation:
            object.__setattr__(self, "interpolation", _DEFAULT_INTERPOLATION[self.resize])
        if self.letterbox not in LETTERBOX_MODES:
            raise ManifestError(f"preprocess.letterbox: expected one of {', '.join(LETTERBOX_MODES)}, "
                                f"got {self.letterbox!r}")
        if self.stride < 1:
            raise ManifestError(f"preprocess.stride: expected a positive integer, got {self.stride!r}")

    @classmethod
    def from_dict(cls, doc: Mapping, where: str = "preprocess.") -> Preprocess:
        """Parse the `preprocess` section (`size` an int or [H, W]); a ManifestError names the key at fault.
        Keys this version does not read are kept in `extra`, so `to_dict()` writes them back."""
        raw = doc.get("size")
        if isinstance(raw, int) and not isinstance(raw, bool):
            size, as_int = (raw, raw), True
        else:
            size, as_int = tuple(int(v) for v in _numbers(raw, f"{where}size", 2)), False
        return cls(resize=_get(doc, "resize", str, where), size=size,
                   interpolation=_get(doc, "interpolation", str, where, ""),
                   pad_value=int(_get(doc, "pad_value", (int, float), where, 114)),
                   crop=_get(doc, "crop", str, where, "center"), channels=_get(doc, "channels", str, where, "RGB"),
                   scale=float(_get(doc, "scale", (int, float), where, 1 / 255)),
                   mean=_numbers(doc.get("mean", [0.0, 0.0, 0.0]), f"{where}mean", 3),
                   std=_numbers(doc.get("std", [1.0, 1.0, 1.0]), f"{where}std", 3),
                   layout=_get(doc, "layout", str, where, "NCHW"),
                   letterbox=_get(doc, "letterbox", str, where, "square"),
                   stride=int(_get(doc, "stride", int, where, 32)), size_is_int=as_int,
                   extra=_frozen({k: v for k, v in doc.items() if k not in _PREPROCESS_KEYS}))

    def to_dict(self) -> dict[str, Any]:
        """The `preprocess` section as JSON: `size` as it was written, only the keys its resize mode uses."""
        doc: dict[str, Any] = {"resize": self.resize, "size": self.size[0] if self.size_is_int else list(self.size)}
        if self.resize == "letterbox":
            doc["pad_value"] = self.pad_value
            if self.letterbox != "square":  # absent: square (every bundle before the minimal letterbox)
                doc |= {"letterbox": self.letterbox, "stride": self.stride}
        else:
            doc["crop"] = self.crop
        return doc | {"interpolation": self.interpolation, "channels": self.channels, "scale": self.scale,
                      "mean": list(self.mean), "std": list(self.std), "layout": self.layout, **dict(self.extra)}


def as_preprocess(spec: Preprocess | Mapping) -> Preprocess:
    """A Preprocess from itself or from its dict form (the training side keeps it in checkpoints as a dict)."""
    return spec if isinstance(spec, Preprocess) else Preprocess.from_dict(spec)


@dataclass(frozen=True)
class ModelEntry:
    """One model file of the bundle (`models.<role>`)."""

    role: str
    file: str
    precision: str = "fp32"
    format: str = "onnx"  # onnx | ncnn (file: the .param, weights: the .bin)
    weights: str = ""  # a second file some formats keep their weights in
    inputs: tuple[Mapping[str, Any], ...] = ()
    outputs: tuple[Mapping[str, Any], ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)  # opset, parity, vs_fp32, ...: reports

    @classmethod
    def from_dict(cls, role: str, doc: Any) -> ModelEntry:
        """Parse `models.<role>`: `file` required, `format` one of MODEL_FORMATS; other keys (reports) go to `info`."""
        where = f"models.{role}."
        if not isinstance(doc, dict):
            raise ManifestError(f"models.{role}: expected a JSON object")
        known = {"file", "precision", "inputs", "outputs", "format", "weights"}
        fmt = _get(doc, "format", str, where, "onnx")
        if fmt not in MODEL_FORMATS:
            raise ManifestError(f"{where}format: expected one of {', '.join(MODEL_FORMATS)}, got {fmt!r}")
        return cls(role, _get(doc, "file", str, where), _get(doc, "precision", str, where, "fp32"), fmt,
                   _get(doc, "weights", str, where, ""),
                   tuple(_get(doc, "inputs", list, where, [])), tuple(_get(doc, "outputs", list, where, [])),
                   _frozen({k: v for k, v in doc.items() if k not in known}))

    def to_dict(self) -> dict[str, Any]:
        """The `models.<role>` entry as JSON; `format`, `weights`, `inputs` and `outputs` only when set."""
        return {"file": self.file, "precision": self.precision,
                **({"format": self.format} if self.format != "onnx" else {}),
                **({"weights": self.weights} if self.weights else {}), **dict(self.info),
                **({"inputs": [dict(i) for i in self.inputs]} if self.inputs else {}),
                **({"outputs": [dict(o) for o in self.outputs]} if self.outputs else {})}


def model_role(precision: str = "fp32", fmt: str = "onnx") -> str:
    """The `models` key of a student model: student, student_fp16, student_int8, student_ncnn, student_ncnn_fp16."""
    base = "student" if fmt == "onnx" else f"student_{fmt}"
    return base if precision == "fp32" else f"{base}_{precision}"


DECODERS = {"detect": "yolov8-detect", "classify": "classify", "embed": "embedding"}  # what this runtime decodes


@dataclass(frozen=True)
class Decode:
    """How the model's output is read (`decode.type`); the rest (shapes, notes) is a report under `info`."""

    type: str
    info: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping, task: str) -> Decode:
        """Parse `decode` for `task`; a missing type means the task's decoder, a different one is a ManifestError
        (this runtime cannot read that model's output)."""
        wanted = DECODERS.get(task)
        kind = _get(doc, "type", str, "decode.", wanted)
        if wanted is not None and kind != wanted:
            raise ManifestError(f"decode.type: this runtime decodes the output of {task} models as {wanted!r}, "
                                f"the bundle says {kind!r}; update dkit on the device")
        return cls(kind, _frozen({k: v for k, v in doc.items() if k != "type"}))

    def to_dict(self) -> dict[str, Any]:
        """The `decode` section as JSON: `type` and the report keys of `info`."""
        return {"type": self.type, **dict(self.info)}


@dataclass(frozen=True)
class Thresholds:
    """The device's starting thresholds (the kit's `edge:` section, whose defaults are these); each overridable on
    the device. A bundle lists the ones its task uses (USED); one without them starts from these defaults."""

    conf: float = 0.25  # detect, classify
    iou: float = 0.45  # detect: NMS
    max_det: int = 100  # detect
    top_k: int = 5  # classify

    USED = {"detect": ("conf", "iou", "max_det"), "classify": ("conf", "top_k"), "embed": ()}

    @classmethod
    def from_dict(cls, doc: Mapping) -> Thresholds:
        """Parse `thresholds`; each value must be a number, an absent one takes its default."""
        given = {f.name: _get(doc, f.name, (int, float), "thresholds.", None) for f in fields(cls)}
        return cls(**{k: v for k, v in given.items() if v is not None})

    def to_dict(self, task: str) -> dict[str, Any]:
        """The thresholds `task` uses (USED[task]) as JSON, e.g. `{"conf": 0.25, "top_k": 5}` for classify."""
        return {k: getattr(self, k) for k in self.USED.get(task, ())}


@dataclass(frozen=True)
class RuntimeHints:
    """How the device runs the model unless told otherwise (the kit's `edge:` providers, threads, max_fps)."""

    providers: tuple[str, ...] = ()  # empty: the best available
    threads: int = 0  # 0: onnxruntime's default
    max_fps: float = 0.0  # 0: as fast as frames come

    @classmethod
    def from_dict(cls, doc: Mapping) -> RuntimeHints:
        """Parse `runtime`: providers a list of strings, threads an integer, max_fps a number; absent keys default."""
        return cls(_strings(doc.get("providers") or [], "runtime.providers"),
                   int(_get(doc, "threads", int, "runtime.", 0)), float(_get(doc, "max_fps", (int, float),
                                                                                "runtime.", 0.0)))

    def to_dict(self) -> dict[str, Any]:
        """The `runtime` section as JSON."""
        return {"providers": list(self.providers), "threads": self.threads, "max_fps": self.max_fps}


@dataclass(frozen=True)
class PromptRow:
    """One row of prompts.npy (`prompts.rows[i]`): its text and role; a role not in PROMPT_ROLES raises
    ManifestError on construction."""

    text: str
    role: str  # class | background | prompt | text | unsafe
    prompts: tuple[str, ...] | None = None  # class rows: the ontology prompts averaged into it

    def __post_init__(self):
        if self.role not in PROMPT_ROLES:
            raise ManifestError(f"prompts.rows: role {self.role!r} is not one of {', '.join(PROMPT_ROLES)}")


@dataclass(frozen=True)
class Prompts:
    """prompts.npy: one (D,) normalised embedding per row, in row order."""

    file: str
    dim: int
    rows: tuple[PromptRow, ...]
    templates: tuple[str, ...]
    ensemble: str = ""

    @classmethod
    def from_dict(cls, doc: Mapping) -> Prompts:
        """Parse `prompts` (file, dim, rows, templates); a ManifestError names the row at fault,
        e.g. `prompts.rows[3].role`."""
        rows = []
        for i, r in enumerate(_get(doc, "rows", list, "prompts.")):
            if not isinstance(r, dict):
                raise ManifestError(f"prompts.rows[{i}]: expected a JSON object")
            extra = r.get("prompts")
            try:
                rows.append(PromptRow(_get(r, "text", str, f"prompts.rows[{i}]."),
                                      _get(r, "role", str, f"prompts.rows[{i}]."),
                                      None if extra is None else _strings(extra, f"prompts.rows[{i}].prompts")))
            except ManifestError as e:
                raise ManifestError(str(e).replace("prompts.rows:", f"prompts.rows[{i}]:", 1)) from e
        return cls(_get(doc, "file", str, "prompts."), int(_get(doc, "dim", int, "prompts.")), tuple(rows),
                   _strings(_get(doc, "templates", list, "prompts."), "prompts.templates"),
                   _get(doc, "ensemble", str, "prompts.", ""))

    def texts(self, *roles: str) -> list[str]:
        """The rows' texts in row order, only those of `roles` when given, e.g. `texts("class")`."""
        return [r.text for r in self.rows if not roles or r.role in roles]

    def to_dict(self) -> dict[str, Any]:
        """The `prompts` section as JSON; a row's `prompts` and `ensemble` only when set."""
        rows = [{"text": r.text, "role": r.role, **({"prompts": list(r.prompts)} if r.prompts is not None else {})}
                for r in self.rows]
        return {"file": self.file, "dim": self.dim, "rows": rows, "templates": list(self.templates),
                **({"ensemble": self.ensemble} if self.ensemble else {})}


@dataclass(frozen=True)
class Calibration:
    """Raw cosine -> 0-100 score: piecewise-linear through (cosine[i], score[i]) knots (dkit.export.judge.calibrate)."""

    cosine: tuple[float, ...]
    score: tuple[float, ...]
    method: str = "piecewise-linear"
    info: Mapping[str, Any] = field(default_factory=dict)  # anchors, percentiles, teacher's curve, agreement

    def __post_init__(self):
        if len(self.cosine) < 2 or len(self.cosine) != len(self.score):
            raise ManifestError("calibration: expected at least two (cosine, score) knots of equal count")
        if any(b <= a for a, b in zip(self.cosine, self.cosine[1:], strict=False)):
            raise ManifestError("calibration.cosine: knots must increase")

    @classmethod
    def from_dict(cls, doc: Mapping) -> Calibration:
        """Parse `calibration` (cosine, score knots, method); the free-form report keys go to `info`."""
        known = {"cosine", "score", "method"}
        return cls(_numbers(doc.get("cosine"), "calibration.cosine"), _numbers(doc.get("score"), "calibration.score"),
                   _get(doc, "method", str, "calibration.", "piecewise-linear"),
                   _frozen({k: v for k, v in doc.items() if k not in known}))

    def to_score(self, cosine: float | np.ndarray) -> float | np.ndarray:
        """Map raw cosine similarity (a float or an array) to the 0-100 score; clamped to the end knots outside them."""
        return np.interp(cosine, self.cosine, self.score)

    def to_dict(self) -> dict[str, Any]:
        """The `calibration` section as JSON: method, knots and the report keys of `info`."""
        return {"method": self.method, "cosine": list(self.cosine), "score": list(self.score), **dict(self.info)}


@dataclass(frozen=True)
class TokenizerSpec:
    """`tokenizer`: the text tokenizer file of a judge bundle (`type` clip-bpe), with the text model's
    context length; no validation beyond the key types checked by from_dict."""

    file: str
    context_length: int = 77
    type: str = "clip-bpe"

    @classmethod
    def from_dict(cls, doc: Mapping) -> TokenizerSpec:
        """Parse `tokenizer`: `file` required, `context_length` (77) and `type` (clip-bpe) default."""
        return cls(_get(doc, "file", str, "tokenizer."), int(_get(doc, "context_length", int, "tokenizer.", 77)),
                   _get(doc, "type", str, "tokenizer.", "clip-bpe"))

    def to_dict(self) -> dict[str, Any]:
        """The `tokenizer` section as JSON."""
        return {"type": self.type, "file": self.file, "context_length": self.context_length}


@dataclass(frozen=True)
class DeviceChecks:
    """`checks`: the export's held-out images and fp32 results (`reference`, a JSON file of the bundle), which a
    device of another CPU architecture runs a reduced-precision model against (dkit.edge.infer.device_check)."""

    reference: str  # e.g. checks/reference.json
    min_agreement: float  # the export's accuracy guard
    machine: str  # the CPU architecture the reference and the export's checks ran on (platform.machine())

    def __post_init__(self):
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ManifestError(f"checks.min_agreement: expected a number in [0, 1], got {self.min_agreement!r}")

    @classmethod
    def from_dict(cls, doc: Mapping) -> DeviceChecks:
        """Parse `checks`: reference, min_agreement and machine are all required."""
        return cls(_get(doc, "reference", str, "checks."), float(_get(doc, "min_agreement", (int, float), "checks.")),
                   _get(doc, "machine", str, "checks."))

    def to_dict(self) -> dict[str, Any]:
        """The `checks` section as JSON."""
        return {"reference": self.reference, "min_agreement": self.min_agreement, "machine": self.machine}


@dataclass(frozen=True)
class JudgeConfig:
    """The kiosk judge's prompts and moderation thresholds (the kit's `judge:`; dkit.edge.infer.moderation applies
    them). The kit's `judge:` section takes its numeric defaults from here; a judge bundle made from a kit without a
    `judge:` section uses these (no moderation prompts: none were embedded into it)."""

    prompt: str | None = None
    prompts: tuple[str, ...] = ()
    text_prompts: tuple[str, ...] = ()
    unsafe_prompts: tuple[str, ...] = ()
    text_penalty: float = 0.5
    text_margin: float = 0.0
    unsafe_margin: float = 0.0
    no_match_score: float = 15.0
    # the kiosk's limits (dkit.edge.bundle.kiosk_config.KioskConfig keys); absent from the JSON when empty
    kiosk: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_dict(cls, doc: Mapping | None) -> JudgeConfig:
        """Parse `judge` (None: the defaults); `judge.kiosk` must be valid KioskConfig keys, or a ManifestError
        names the key at fault."""
        if doc is None:
            return cls()
        w = "judge."
        kiosk = _get(doc, "kiosk", dict, w, {})
        try:
            from dkit.edge.bundle.kiosk_config import KioskConfig

            KioskConfig.from_dict(kiosk)
        except (ValueError, TypeError) as e:
            raise ManifestError(f"judge.{e}") from e
        return cls(_get(doc, "prompt", str, w, None),
                   *(_strings(doc.get(k) or [], f"{w}{k}") for k in ("prompts", "text_prompts", "unsafe_prompts")),
                   *(float(_get(doc, k, (int, float), w, getattr(cls, k)))
                     for k in ("text_penalty", "text_margin", "unsafe_margin", "no_match_score")),
                   MappingProxyType(dict(kiosk)))

    def to_dict(self) -> dict[str, Any]:
        """The `judge` section as JSON: every field, `kiosk` only when it has keys."""
        doc = {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}
        doc["kiosk"] = dict(self.kiosk)
        if not doc["kiosk"]:
            del doc["kiosk"]
        return doc


# ------------------------------------------------------------------------------------------ the manifest

UNTRAINED_WARNING = ("made from an UNTRAINED (random) teacher: its scores and labels are meaningless (tests only); "
                     "export a bundle from a kit with real teacher weights before a real event")


@dataclass(frozen=True)
class Manifest:
    """The whole manifest.json of a bundle, validated on construction: a known task, a `models.student`
    entry, and prompts and calibration for an embed bundle (else ManifestError). Read one with
    `Manifest.from_dict(json.load(f))`; `to_dict()` gives the JSON document back."""

    name: str
    task: str
    teacher: Mapping[str, Any]  # id, random
    student: Mapping[str, Any]  # kind, model, imgsz, weights_sha256
    models: Mapping[str, ModelEntry]
    preprocess: Preprocess
    classes: tuple[str, ...]
    thresholds: Thresholds
    runtime: RuntimeHints = RuntimeHints()
    decode: Decode | None = None  # None: the task's decoder (DECODERS)
    files: Mapping[str, str] = field(default_factory=dict)  # name -> sha256 (filled in when written)
    prompts: Prompts | None = None  # embed
    calibration: Calibration | None = None  # embed
    tokenizer: TokenizerSpec | None = None  # embed (judge)
    judge: JudgeConfig | None = None  # embed; None: the bundle's kit had no `judge:` section
    logit_scale: float | None = None
    checks: DeviceChecks | None = None  # None: no on-device accuracy check shipped (older bundles)
    info: Mapping[str, Any] = field(default_factory=dict)  # created, dkit_version, refused_variants, ...
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.task not in TASKS:
            raise ManifestError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if "student" not in self.models:
            raise ManifestError("models.student: missing required key")
        if self.task == "embed" and (self.prompts is None or self.calibration is None):
            raise ManifestError(f"{'prompts' if self.prompts is None else 'calibration'}: missing required key "
                                "for an embed bundle")

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
    def from_dict(cls, doc: Any) -> Manifest:
        """Parse and validate a manifest document, e.g. `Manifest.from_dict(json.load(f))`; a ManifestError names the
        key at fault, and a schema_version other than SCHEMA_VERSION is refused. Unknown top-level keys go to `info`."""
        if not isinstance(doc, dict):
            raise ManifestError("expected a JSON object")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"schema_version {version!r} is not supported by this runtime (it reads "
                                f"{SCHEMA_VERSION}); export the bundle again with a matching dkit, or update dkit "
                                "on the device")
        task = _get(doc, "task", str, "")
        models = {role: ModelEntry.from_dict(role, m) for role, m in _get(doc, "models", dict, "").items()}
        files = _get(doc, "files", dict, "")
        opt = {k: _section(doc, k, required=False) for k in ("prompts", "calibration", "tokenizer")}
        known = {f.name for f in fields(cls)} - {"info"}
        return cls(
            name=_get(doc, "name", str, ""), task=task, teacher=_frozen(_get(doc, "teacher", dict, "")),
            student=_frozen(_get(doc, "student", dict, "")), models=_frozen(models),
            preprocess=Preprocess.from_dict(_get(doc, "preprocess", dict, "")),
            classes=_strings(_get(doc, "classes", list, ""), "classes"),
            thresholds=Thresholds.from_dict(_section(doc, "thresholds", required=False) or {}),
            runtime=RuntimeHints.from_dict(_section(doc, "runtime", required=False) or {}),
            decode=Decode.from_dict(_section(doc, "decode", required=False) or {}, task), files=_frozen(files),
            prompts=None if opt["prompts"] is None else Prompts.from_dict(opt["prompts"]),
            calibration=None if opt["calibration"] is None else Calibration.from_dict(opt["calibration"]),
            tokenizer=None if opt["tokenizer"] is None else TokenizerSpec.from_dict(opt["tokenizer"]),
            judge=None if doc.get("judge") is None else JudgeConfig.from_dict(_section(doc, "judge")),
            logit_scale=_get(doc, "logit_scale", (int, float), "", None),
            checks=None if doc.get("checks") is None else DeviceChecks.from_dict(_section(doc, "checks")),
            info=_frozen({k: v for k, v in doc.items() if k not in known}), schema_version=version)

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json document (what dkit.export writes); optional sections only when present."""
        doc: dict[str, Any] = {"schema_version": self.schema_version, "name": self.name, "task": self.task,
                               **dict(self.info), "teacher": dict(self.teacher), "student": dict(self.student),
                               "models": {r: m.to_dict() for r, m in self.models.items()},
                               "preprocess": self.preprocess.to_dict(),
                               "decode": (self.decode or Decode(DECODERS[self.task])).to_dict(),
                               "classes": list(self.classes), "thresholds": self.thresholds.to_dict(self.task),
                               "runtime": self.runtime.to_dict()}
        for key in ("tokenizer", "prompts", "logit_scale", "calibration", "judge", "checks"):
            value = getattr(self, key)
            if value is not None:
                doc[key] = value if isinstance(value, (int, float)) else value.to_dict()
        return doc | {"files": dict(self.files)}
