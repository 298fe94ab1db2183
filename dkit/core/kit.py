"""The kit YAML: one file per data set, parsed once into typed, frozen dataclasses.

    from dkit.core.kit import load_kit

    kit = load_kit("datasets/coco128/kit.yaml", data="../shared/assets/data/coco128/images/train2017",
                   overrides=["teacher.imgsz=1280"])

Sections: `name`, `data`, `ontology`, `teacher`, `student`, `export`, `edge`, `judge`, `label` (see the
dataclasses below and the recipes in datasets/). Validation is pydantic in strict mode (an integer
is never a string, a boolean is never "yes"); every problem becomes one `KitError` line naming the
file, the key path and what was expected. Paths in a kit resolve relative to the kit file; `--data`
is relative to the current directory. `--set KEY.PATH=VALUE` values are parsed as YAML scalars or
flow lists (`--set export.precisions=[fp32,int8]`) and validated exactly like the file.
`student.kind` is a kind declared in dkit.core.student_kinds; that declaration answers the cross-checks (which
teachers, image-size multiple, multi-GPU, unlabeled pool, judge) and its model checks `student.train_args`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import pydantic
import yaml
from pydantic import AfterValidator, BeforeValidator, Field, Strict, StringConstraints
from pydantic.dataclasses import dataclass

from dkit.core.errors import KitError, UsageError
from dkit.core.student_kinds import StudentKind, TrainArgs, student_kind, student_kinds
from dkit.edge.bundle.manifest import MAX_PROMPT_CHARS, JudgeConfig, Thresholds
from dkit.edge.bundle.schema import STRICT, Bool, Float, Int

DEVICE_THRESHOLDS, DEVICE_JUDGE = Thresholds(), JudgeConfig()

RANDOM = "random"  # teacher.pretrained value that builds an untrained teacher: tests only
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
BACKBONE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # student.pretrained: timm checkpoints

# Sections are plain mappings in YAML; scalars are strict: 640 is an integer, "640" is not, "yes" is no boolean (the
# strict scalars and the pydantic config are the bundle manifest's own: dkit.edge.bundle.schema)


def _as_list(value: Any) -> Any:
    """A single prompt may be written as a plain string."""
    return [value] if isinstance(value, str) else value


Text = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1)]
Prompts = Annotated[list[Text], BeforeValidator(_as_list), Field(min_length=1)]
OptPrompts = Annotated[list[Text], BeforeValidator(_as_list)]
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
PosInt = Annotated[int, Strict(), Field(gt=0)]
FilePath = Annotated[Path, Field(strict=False)]
Name = Annotated[str, Strict(), StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
GpuList = Annotated[list[Annotated[int, Strict(), Field(ge=0)]], Field(min_length=1)]  # [0, 1]: GPU indices


def _device(value: Any) -> Any:
    """student.device: a name, or a non-empty list (its items are checked as GPU indices by GpuList)."""
    if not isinstance(value, (str, list)) or value == []:
        raise _Invalid("", "'auto', a device name ('cpu', 'cuda:0') or a non-empty list of GPU indices ([0, 1])",
                       value)
    return value


Device = Annotated[Text | GpuList, BeforeValidator(_device)]


def _known_kind(value: str) -> str:
    """student.kind: a declared student kind (dkit.core.student_kinds)."""
    if value not in student_kinds():
        raise _Invalid("", "one of " + _either([repr(k) for k in student_kinds()]), value)
    return value


StudentKindKey = Annotated[str, Strict(), AfterValidator(_known_kind)]


@dataclass(frozen=True, config=STRICT)
class Video:
    """Video files among the inputs (.mp4, .mov, .mkv, ...): frames sampled, near-duplicates skipped."""

    fps: Annotated[float, Strict(), Field(gt=0.0, le=120.0, allow_inf_nan=False)] = 1.0  # frames kept per second
    # a sampled frame within this many bits (of 64) of the perceptual hash of a frame already kept from the same
    # video is a near-duplicate and skipped; 0 skips only identical hashes, -1 keeps every sampled frame
    near_duplicate: Annotated[int, Strict(), Field(ge=-1, le=64)] = 6
    max_frames: PosInt = 5000  # sampled frames per video at most (a day of footage at 1 fps is 86,400)
    max_pixels: PosInt = 40_000_000  # a video whose frames are larger is skipped (8K is 33 megapixels)


@dataclass(frozen=True, config=STRICT)
class Data:
    """Where the unlabeled images come from, and how they are split."""

    images: FilePath | None = None  # folder of images and videos (searched recursively), or one file; `--data`
    url: Text | None = None  # archive downloaded into the model store when `images` is not set
    sha256: Text | None = None  # of that archive
    subdir: Text | None = None  # folder inside the extracted archive that holds the images
    val: Int | Float = 0.2  # held-out share (0 < val < 1) or a count of images (an integer >= 1)
    seed: Int = 0  # the split is deterministic for a seed
    # the split keeps groups whole (dkit.distill.split): identical files, frames of one video, and images whose
    # perceptual hashes are within this many bits (of 64; 6: a re-encode or resize); -1: no near-duplicate groups
    split_near_duplicate: Annotated[int, Strict(), Field(ge=-1, le=64)] = 6
    workers: Annotated[int, Strict(), Field(ge=0)] = 0  # image-decoding processes; 0: one per spare core
    link: Literal["symlink", "copy"] = "symlink"  # how images enter the data set (never moved)
    drawings_per_file: PosInt = 200  # a folder of Quick, Draw! .npy files: doodles rendered from each
    drawing_size: PosInt = 256  # ... at this many pixels a side, dark strokes on white
    video: Video = dataclasses.field(default_factory=Video)  # video files among the images (dkit.distill.video)
    # clip-embed students: more images the student learns the teacher's embeddings of (folders, videos, Quick,
    # Draw! .npy files; relative to the kit file), never labelled, held out or shown in the report (dkit.distill.pool)
    unlabeled: list[FilePath] = dataclasses.field(default_factory=list)
    unlabeled_per_file: PosInt = 1000  # doodles rendered from each pool .npy (after those the kit's images took)
    unlabeled_max: PosInt = 200_000  # pool images at most (the first ones listed); more are left out, with a warning

    def __post_init__(self) -> None:
        if not (isinstance(self.val, int) and self.val >= 1 or isinstance(self.val, float) and 0 < self.val < 1):
            raise _Invalid("val", "a share between 0 and 1 (0.2) or a count of images (32)", self.val)
        if self.sha256 is not None and (len(self.sha256) != 64 or not _is_hex(self.sha256)):
            raise _Invalid("sha256", "64 hexadecimal digits", self.sha256)
        if self.subdir is not None and self.url is None:
            raise _Invalid("subdir", "to be used together with data.url", self.subdir)


@dataclass(frozen=True, config=STRICT)
class Label:
    """Where `dkit label` runs the teacher: this process (`local`) or a Ray cluster (`ray`, dkit.distill.engines)."""

    engine: Literal["local", "ray"] = "local"  # local: this process; ray: Ray Data and teacher actors; `--engine`
    # ray: "auto" (the cluster `ray start` runs on this machine), "ray://HOST:10001" (a remote one); unset: a Ray
    # started for this run on this machine and stopped after it; `--address`
    address: Text | None = None
    # ray: teacher actors; 0: one per GPU, else one per cpus_per_actor CPUs (one CPU left for decoding)
    actors: Annotated[int, Strict(), Field(ge=0)] = 0
    # ray: CPUs each teacher actor reserves
    cpus_per_actor: Annotated[float, Strict(), Field(gt=0.0, le=256.0, allow_inf_nan=False)] = 1.0  # also its threads
    # GPUs per teacher actor; unset: 1 when the cluster has GPUs, else 0
    gpus_per_actor: Annotated[float, Strict(), Field(ge=0.0, le=8.0, allow_inf_nan=False)] | None = None


@dataclass(frozen=True, config=STRICT)
class Ontology:
    """What the teacher looks for: class name -> prompts, plus prompts that mean "none of these".

    For a CLIP teacher the prompts are text (several are averaged, a prompt ensemble); for a YOLO
    teacher they are the teacher's own class names that map onto the class (unmapped ones are dropped).
    """

    classes: dict[Text, Prompts]  # class name -> its prompts (one string or a list); at least one class
    background: OptPrompts = dataclasses.field(default_factory=list)  # prompts meaning "none of these" (CLIP)

    def __post_init__(self) -> None:
        if not self.classes:
            raise _Invalid("classes", "at least one class (name: [prompts])", self.classes)

    @property
    def names(self) -> list[str]:
        return list(self.classes)


@dataclass(frozen=True, config=STRICT)
class Abstain:
    """When a CLIP teacher says "none" instead of forcing the argmax (a softmax always picks something).

    The candidates are the classes, the `ontology.background` prompts and, when set, the `floor`: a
    "none" candidate whose cosine is the floor. They compete in one softmax of their cosines (times the
    model's logit scale). An image (or a crop) is labelled only if a class wins, that is its cosine beats
    every background prompt and reaches `floor`, and its probability leads the runner-up (the floor
    included) by `margin`; that probability is the label's confidence. With one class and no background
    the floor is the only thing the class competes with, so a one-class kit gets confidences that grow
    with the cosine above the floor instead of a constant 1.0.

    A kit in which the rule can never fire is refused (`Kit`): a detection kit (most proposals are not
    objects) or a one-class kit needs background prompts or a floor. Cosines depend on the CLIP model:
    read the similarity histogram in report.html and set `floor` from it (-1.0 keeps everything).
    """

    floor: Annotated[float, Strict(), Field(ge=-1.0, le=1.0)] | None = None  # cosine floor; null: off
    margin: Fraction = 0.0  # softmax probability lead of the best class over the runner-up

    def can_fire(self, classes: int, background: int) -> bool:
        """Whether the rule can ever abstain for a kit with this many classes and background prompts."""
        return background > 0 or self.floor is not None or (classes > 1 and self.margin > 0)


@dataclass(frozen=True, config=STRICT)
class Proposer:
    """Where a CLIP teacher looks for objects: each proposed box is cropped and verified by CLIP."""

    kind: Literal["yolo", "sliding"] = "yolo"  # yolo: a class-agnostic detector's boxes; sliding: windows, no weights
    model: Text = "yolov8n.pt"  # yolo: any Ultralytics detector, used class-agnostically
    conf: Fraction = 0.05  # yolo: objectness floor of a proposal
    scales: Annotated[list[Annotated[float, Strict(), Field(gt=0.0, le=1.0)]], Field(min_length=1)] = (
        dataclasses.field(default_factory=lambda: [0.3, 0.5, 0.75])
    )  # sliding: window side as a share of the image's shorter side
    overlap: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.5  # sliding: overlap of neighbouring windows
    max_proposals: PosInt = 100  # per image
    pad: Annotated[float, Strict(), Field(ge=0.0, le=1.0)] = 0.1  # context added around a crop, share of its size
    # how a box becomes the square image CLIP sees, whole box always inside (dkit.distill.proposers.crop_boxes):
    # square: a square of the image centred on the box (side: its longer side plus pad), image context around it;
    # letterbox: the padded box itself, filled out to a square with the image's mean colour.
    # Outside the image both fill with the image's mean colour.
    crop: Literal["square", "letterbox"] = "square"


@dataclass(frozen=True, config=STRICT)
class TeacherSection:
    """The big zero-shot model that labels the images."""

    kind: Literal["clip", "yolo"]  # clip: open_clip with the ontology's text prompts; yolo: an Ultralytics detector
    model: Text  # clip: open_clip architecture (ViT-B-32); yolo: weights file name or path (yolov8n.pt)
    pretrained: Text | None = None  # clip: open_clip tag, local checkpoint path, or "random" (tests only)
    templates: OptPrompts = dataclasses.field(default_factory=lambda: ["{}"])  # clip prompt templates
    imgsz: PosInt = 640  # yolo teacher and proposer inference size; a CLIP model uses its own input size
    conf: Fraction = 0.25  # yolo teacher and proposer: confidence floor of a box
    iou: Fraction = 0.7  # IoU of class-wise NMS on the kit's classes
    batch: PosInt = 16  # images per teacher forward pass
    augment: Bool = False  # test-time augmentation: labeling is offline, quality beats speed
    max_det: PosInt = 300  # boxes per image at most
    min_box: Annotated[float, Strict(), Field(ge=0.0)] = 4.0  # boxes with a side shorter than this (pixels) are dropped
    abstain: Abstain = dataclasses.field(default_factory=Abstain)
    proposer: Proposer = dataclasses.field(default_factory=Proposer)  # clip teacher, detection students
    review_below: Fraction = 0.5  # report.html lists labels less confident than this for review
    device: Text = "auto"  # "auto" (a GPU when there is one), "cpu", "cuda:0", ...

    def __post_init__(self) -> None:
        if self.kind == "clip" and self.pretrained is None:
            raise _Invalid("pretrained", "an open_clip pretrained tag, a checkpoint path, or 'random'")
        for i, template in enumerate(self.templates):
            if template.count("{}") != 1:
                raise _Invalid(f"templates[{i}]", "a template with exactly one '{}'", template)

    @property
    def is_random(self) -> bool:
        """True when the teacher is built untrained: every artefact made from it says so."""
        return self.pretrained == RANDOM


@dataclass(frozen=True, config=STRICT)
class Student:
    """The small model trained on the teacher's labels."""

    # yolo-detect: a YOLO detector; yolo-cls: a YOLO classifier; clip-embed: an image encoder reproducing the CLIP
    # teacher's embeddings (the kiosk judge)
    kind: StudentKindKey  # a declared kind (dkit.core.student_kinds)
    model: Text  # yolo: yolov8n.pt (pretrained, from the store) or yolov8n.yaml (from scratch); clip-embed: backbone
    imgsz: PosInt = 320  # input size in pixels (a multiple of 32 for a YOLO student)
    epochs: PosInt = 50  # training epochs at most (early stopping may end sooner)
    batch: PosInt = 16  # images per training step
    patience: PosInt = 20  # early stopping: epochs without improvement
    # "auto", "cpu", "cuda:0", ...; YOLO students also take a list of GPU indices ([0, 1]: Ultralytics' own DDP)
    device: Device = "auto"
    # clip-embed: a timm checkpoint file (.safetensors/.pth/.pt/.bin) in the model store, by file name, that the
    # backbone starts from; None: from scratch. (YOLO students take pretrained weights through `model`.)
    pretrained: Text | None = None
    # the kind's own training settings, as written; validated against its model (`args`) when the kit loads.
    # YOLO: any Ultralytics training argument, passed on to its train(); clip-embed: lr, weight_decay, ...
    train_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.spec
        if self.imgsz % spec.imgsz_multiple:
            raise _Invalid("imgsz", f"a multiple of {spec.imgsz_multiple} for a {spec.name} student", self.imgsz)
        if isinstance(self.device, list) and spec.multi_gpu != "device-list":
            lists = _either(list(dict.fromkeys(k.name for k in student_kinds().values()
                                               if k.multi_gpu == "device-list")), "and")
            how = (f" (multi-GPU {spec.name} training is launched with torchrun: torchrun --nproc_per_node N -m dkit "
                   "train KIT, one GPU a process)" if spec.multi_gpu == "torchrun" else "")
            raise _Invalid("device", f"one device ('auto', 'cpu', 'cuda:0') for a {spec.name} student: a list of "
                           f"devices is for {lists} students{how}", self.device)
        if self.pretrained is not None:
            if spec.model_file:
                raise _Invalid("pretrained", f"no student.pretrained for a {spec.name} student: its pretrained "
                               "weights are student.model (a weights file such as yolov8n.pt, from the model store)",
                               self.pretrained)
            if _looks_like_path(self.pretrained, require_sep=True) or not self.pretrained.lower().endswith(
                    BACKBONE_SUFFIXES):
                raise _Invalid("pretrained", "the file name of a timm checkpoint in the model store ("
                               + ", ".join(BACKBONE_SUFFIXES) + "), not a path", self.pretrained)

    @property
    def spec(self) -> StudentKind:
        """The declaration of this student's kind (dkit.core.student_kinds): task, traits, implementations."""
        return student_kind(self.kind)

    @property
    def args(self) -> TrainArgs:
        """`train_args` validated by the kind's model, its defaults filled in (`.model_dump()`: a dict)."""
        return self.spec.config.model_validate(self.train_args)

    @property
    def single_device(self) -> str:
        """The device for work on one model (evaluation, a check): `device`, or the first GPU of a list."""
        return f"cuda:{self.device[0]}" if isinstance(self.device, list) else self.device


@dataclass(frozen=True, config=STRICT)
class Export:
    """What goes into the bundle."""

    # model precisions in the bundle; fp16 and int8 are checked against fp32 on the held-out images
    precisions: Annotated[list[Literal["fp32", "fp16", "int8"]], Field(min_length=1)] = dataclasses.field(
        default_factory=lambda: ["fp32"]
    )
    tensorrt: Bool = False  # build an engine when TensorRT and a GPU are present, else document the command
    opset: Annotated[int, Strict(), Field(ge=17)] = 17  # ONNX opset of the exported models
    calibration_images: PosInt = 64  # int8 calibration: the kit's own images
    # int8 signedness (activations, weights), QDQ: s8s8 is onnxruntime's first choice, what its Arm kernels (dot
    # product instructions: Raspberry Pi 5, Jetson) and TensorRT run; u8s8 is faster on x86 AVX2 without VNNI
    int8_format: Literal["s8s8", "u8s8"] = "s8s8"
    accuracy_guard: Fraction = 0.95  # a reduced-precision variant agreeing less than this with fp32 is refused
    parity_atol: Annotated[float, Strict(), Field(gt=0.0)] = 0.05  # ONNX vs PyTorch: largest raw output difference
    archive: Bool = True  # also write bundle.tar.gz
    # held-out images shipped in the bundle (checks/) with the fp32 model's results on them: a device of another
    # CPU architecture checks a reduced-precision model against them before --precision auto uses it (0: none)
    device_checks: Annotated[int, Strict(), Field(ge=0, le=256)] = 32
    # model formats in the bundle: onnx (always; onnxruntime and OpenVINO read it) and ncnn (.param/.bin by pnnx,
    # for Arm boards), each non-ONNX one checked against the ONNX model before it is shipped
    backends: Annotated[list[Literal["onnx", "ncnn"]], Field(min_length=1)] = dataclasses.field(
        default_factory=lambda: ["onnx"]
    )

    def __post_init__(self) -> None:
        if "onnx" not in self.backends:
            raise _Invalid("backends", "a list that includes onnx (every other format is checked against it)",
                           self.backends)


@dataclass(frozen=True, config=STRICT)
class Edge:
    """Defaults the device runtime starts with (all overridable on the device)."""

    # the defaults of conf, iou and max_det are the device's own (dkit.edge.bundle.manifest.Thresholds)
    conf: Fraction = DEVICE_THRESHOLDS.conf  # detectors: confidence floor of a box
    iou: Fraction = DEVICE_THRESHOLDS.iou  # detectors: IoU of class-wise NMS
    max_det: PosInt = DEVICE_THRESHOLDS.max_det  # detectors: boxes per frame at most
    providers: list[Text] = dataclasses.field(default_factory=list)  # empty: TensorRT > CUDA > ... > CPU
    threads: Annotated[int, Strict(), Field(ge=0)] = 0  # 0: onnxruntime's default
    max_fps: Annotated[float, Strict(), Field(ge=0.0)] = 0.0  # 0: as fast as frames come
    # detectors: minimal pads each frame only to a multiple of the model's stride (16:9 at 320 -> 320x192, as
    # Ultralytics' predict does), square always to imgsz x imgsz (fixed-shape engines)
    letterbox: Literal["minimal", "square"] = "minimal"


def _kiosk_settings(value: Any) -> dict[str, Any]:
    """The kit's `judge.kiosk:` mapping, checked against the kiosk's own settings (KioskConfig)."""
    from dkit.edge.bundle.kiosk_config import KioskConfig

    if not isinstance(value, dict):
        raise ValueError("expected a mapping of kiosk settings")
    KioskConfig.from_dict(value)
    return dict(value)


@dataclass(frozen=True, config=STRICT)
class JudgeSection:
    """The kiosk judge (clip-embed students): prompts, moderation prompts and thresholds."""

    prompt: Text | None = None  # the prompt the kiosk starts with
    prompts: OptPrompts = dataclasses.field(default_factory=list)  # embedded into the bundle
    # prompts meaning "text / handwriting": a drawing closer to them than to its prompt is penalised (text_penalty)
    text_prompts: OptPrompts = dataclasses.field(
        default_factory=lambda: ["text", "handwriting", "written words", "letters of the alphabet"]
    )
    unsafe_prompts: OptPrompts = dataclasses.field(default_factory=list)  # a drawing closer to one is blocked
    # the thresholds' defaults are the device judge's own (dkit.edge.bundle.manifest.JudgeConfig)
    text_penalty: Fraction = DEVICE_JUDGE.text_penalty  # score multiplier when a drawing looks more like writing
    text_margin: Annotated[float, Strict(), Field(ge=-1.0, le=1.0)] = DEVICE_JUDGE.text_margin  # cosine lead needed
    unsafe_margin: Annotated[float, Strict(), Field(ge=-1.0, le=1.0)] = DEVICE_JUDGE.unsafe_margin  # by an unsafe one
    no_match_score: Annotated[float, Strict(), Field(ge=0.0, le=100.0)] = DEVICE_JUDGE.no_match_score  # "no match"
    # the kiosk's limits (dkit.edge.bundle.kiosk_config.KioskConfig: rates, queue, retention, quota, timeouts;
    # `blocklist`: a file of words refused in player names, relative to the kit file, carried into the bundle as its
    # words)
    kiosk: Annotated[dict[str, Any], BeforeValidator(_kiosk_settings)] = dataclasses.field(default_factory=dict)

    def device_config(self) -> JudgeConfig:
        """This section as the device's judge reads it (what a judge bundle's manifest carries)."""
        return JudgeConfig.from_dict(dataclasses.asdict(self))


@dataclass(frozen=True, config=STRICT)
class Kit:
    """One kit YAML, validated."""

    name: Name  # the kit's name: runs/<name>/ and the bundle's name
    ontology: Ontology
    teacher: TeacherSection
    student: Student
    data: Annotated[Data, BeforeValidator(lambda v: {"images": v} if isinstance(v, str) else v)] = (
        dataclasses.field(default_factory=Data)
    )
    export: Export = dataclasses.field(default_factory=Export)
    edge: Edge = dataclasses.field(default_factory=Edge)
    judge: JudgeSection | None = None
    label: Label = dataclasses.field(default_factory=Label)

    def __post_init__(self) -> None:
        spec, teacher = self.student.spec, self.teacher.kind
        if teacher not in spec.teachers:
            fits = _either([k for k, s in student_kinds().items() if teacher in s.teachers])
            raise _Invalid("student.kind", f"a {fits} student for a {teacher} teacher", self.student.kind)
        if self.data.unlabeled and not spec.unlabeled_pool:
            pools = _either([k for k, s in student_kinds().items() if s.unlabeled_pool])
            raise _Invalid("data.unlabeled", f"no unlabeled pool unless student.kind is {pools} (a {spec.key} "
                           "student learns from labels; the pool has none)", [str(p) for p in self.data.unlabeled])
        if self.judge is not None and spec.task != "embed":
            judges = _either([k for k, s in student_kinds().items() if s.task == "embed"])
            raise _Invalid("judge", f"no judge section unless student.kind is {judges}", "a judge section")
        self._check_abstain()
        if spec.task == "embed":
            self._check_judge_prompts()
        # last: a student kind that does not fit the teacher or the data is said as that, not as its train_args
        _check_train_args(spec.config, self.student.train_args, "student.train_args")

    def _check_judge_prompts(self) -> None:
        """Every prompt a judge bundle embeds fits what the device accepts (dkit.edge.infer.judge.check_prompt)."""
        judge = self.judge or JudgeSection()
        named = [(f"ontology.classes.{name}[{i}]", p) for name, ps in self.ontology.classes.items()
                 for i, p in enumerate(ps)]
        named += [(f"ontology.background[{i}]", p) for i, p in enumerate(self.ontology.background)]
        named += [("judge.prompt", judge.prompt)] if judge.prompt is not None else []
        for key in ("prompts", "text_prompts", "unsafe_prompts"):
            named += [(f"judge.{key}[{i}]", p) for i, p in enumerate(getattr(judge, key))]
        for key, prompt in named:
            if not prompt.strip() or len(" ".join(prompt.split())) > MAX_PROMPT_CHARS:
                raise _Invalid(key, f"a non-empty prompt of at most {MAX_PROMPT_CHARS} characters (the device's "
                               "limit)", prompt)

    def _check_abstain(self) -> None:
        """A CLIP kit must be able to say "none" where its task needs it (Abstain: detection, one class)."""
        if self.teacher.kind != "clip" or self.ontology.background or self.teacher.abstain.floor is not None:
            return
        classes = len(self.ontology.classes)
        if self.task != "detect" and classes > 1:
            return  # closed-world classification: the argmax (and `margin`) is a choice; `dkit check` notes it
        why = ("a detection kit: with neither, every proposed box, however empty, is labelled" if self.task == "detect"
               else "one class: with neither, every image is labelled with it, confidence 1.0")
        raise _Invalid("teacher.abstain", f"ontology.background prompts or teacher.abstain.floor for a CLIP teacher on "
                       f"{why}. Add background prompts (e.g. background: [an empty scene, a blank wall]) or set "
                       "teacher.abstain.floor, a cosine (to choose it, label once with --set "
                       "teacher.abstain.floor=-1.0, which keeps everything, and read the similarity histogram in "
                       "report.html)")

    def abstain_note(self) -> str | None:
        """A sentence for `dkit check` and `dkit label` when a CLIP kit cannot abstain (closed-world argmax)."""
        t = self.teacher
        if t.kind != "clip" or t.abstain.can_fire(len(self.ontology.classes), len(self.ontology.background)):
            return None
        return ("teacher.abstain: no ontology.background prompts, no floor and margin 0: every image is labelled "
                "with its best class (closed world); add background prompts or set teacher.abstain.floor or "
                "margin to let the teacher say 'none'")

    @property
    def task(self) -> Literal["detect", "classify"]:
        """What the labels are: boxes for a detector student, one class per image otherwise."""
        return self.student.spec.label_task

    def run_dir(self, out: str | os.PathLike | None = None) -> Path:
        """Where this kit's artefacts go: `--out`, or `runs/<name>/` under the current directory."""
        return Path(out).resolve() if out is not None else Path.cwd() / "runs" / self.name


# --------------------------------------------------------------------------------------------- loading


def load_kit(
    path: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Kit:
    """Read, override, validate and resolve one kit file. Raises KitError / UsageError."""
    file = Path(path)
    where = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise UsageError(f"kit file not found: {where}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read kit file {where}: {e}") from e
    raw = _parse_yaml(text, where)

    sources: dict[str, str] = {}  # key path -> the command-line option that set it
    for item in overrides:
        key = _apply_override(raw, item, where)
        sources[key] = f"--set {item}"
    if data is not None:
        section = raw.get("data")
        raw["data"] = {} if section is None else ({"images": section} if isinstance(section, str) else section)
        if not isinstance(raw["data"], dict):
            raise KitError(where, "data", "a mapping or a folder path", raw["data"])
        raw["data"]["images"] = str(Path(data).resolve())
        sources["data.images"] = f"--data {data}"

    try:
        kit = pydantic.TypeAdapter(Kit).validate_python(raw)
    except pydantic.ValidationError as e:
        raise _kit_error(e, where, sources) from None
    return _resolve_paths(kit, file.resolve().parent, where, sources)


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = f"invalid YAML: {e.problem or e}"
        if e.context and e.context_mark is not None and e.context_mark is not mark:
            problem += f" ({e.context} at line {e.context_mark.line + 1})"
        raise KitError(f"{where}{line}", "", problem=problem) from None
    except yaml.YAMLError as e:
        raise KitError(where, "", problem=f"invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise KitError(where, "", "a mapping with the keys name, ontology, teacher, student, ...", raw)
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
# YAML 1.1 (PyYAML) reads 1e-9 as a string: it wants a dot (1.0e-9). Numbers as people write them are numbers.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _apply_override(raw: dict[str, Any], item: str, where: str) -> str:
    """Apply one `KEY.PATH=VALUE` to the raw mapping; returns the key path."""
    key, sep, value_text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise UsageError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set teacher.imgsz=1280")
    try:
        value = yaml.load(value_text, Loader=_UniqueKeyLoader) if value_text.strip() else ""  # noqa: S506
    except yaml.YAMLError as e:
        raise UsageError(f"--set {item!r}: the value is not valid YAML: {e}") from None
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            at = ".".join(parts[: depth + 1])
            raise KitError(where, at, f"a section to set {key} in", child, source=f"--set {item}")
        node = child
    node[parts[-1]] = value
    return ".".join(parts)


def _resolve_paths(kit: Kit, base: Path, where: str, sources: dict[str, str]) -> Kit:
    """Make the kit's file paths absolute (relative to the kit file) and check the ones that must exist."""
    data = kit.data
    if data.images is not None:
        images = (base / data.images).resolve()
        if not images.is_dir() and not images.is_file():  # a folder, or one file (a video, say)
            problem = ("not a folder or file: " if images.exists() else "no such folder or file: ") + str(images)
            if "data.images" not in sources:
                problem += " (paths in a kit are relative to the kit file)"
            raise KitError(where, "data.images", problem=problem, source=sources.get("data.images"))
        data = dataclasses.replace(data, images=images)
    if data.unlabeled:
        data = dataclasses.replace(data, unlabeled=_resolve_pool(data.unlabeled, base, where, sources))

    teacher = kit.teacher
    if teacher.pretrained not in (None, RANDOM) and _looks_like_path(teacher.pretrained):
        ckpt = (base / teacher.pretrained).resolve()
        if not ckpt.is_file():
            raise KitError(where, "teacher.pretrained", "an existing checkpoint file or an open_clip tag",
                           str(ckpt), source=sources.get("teacher.pretrained"))
        teacher = dataclasses.replace(teacher, pretrained=str(ckpt))
    if teacher.kind == "yolo" and _looks_like_path(teacher.model, require_sep=True):
        teacher = dataclasses.replace(teacher, model=str((base / teacher.model).resolve()))

    student = kit.student
    if student.spec.model_file and _looks_like_path(student.model, require_sep=True):
        student = dataclasses.replace(student, model=str((base / student.model).resolve()))
    judge = kit.judge
    if judge is not None and judge.kiosk.get("blocklist"):
        judge = dataclasses.replace(judge, kiosk=_read_blocklist(judge.kiosk, base, where, sources))
    return dataclasses.replace(kit, data=data, teacher=teacher, student=student, judge=judge)


def _resolve_pool(entries: list[Path], base: Path, where: str, sources: dict[str, str]) -> list[Path]:
    """data.unlabeled's folders and files, absolute; one that does not exist is named with its index."""
    out = []
    for i, entry in enumerate(entries):
        path = (base / entry).resolve()
        if not path.exists():
            problem = f"no such folder or file: {path}" + ("" if "data.unlabeled" in sources else
                                                           " (paths in a kit are relative to the kit file)")
            raise KitError(where, f"data.unlabeled[{i}]", problem=problem, source=sources.get("data.unlabeled"))
        out.append(path)
    return out


def _read_blocklist(kiosk: dict, base: Path, where: str, sources: dict[str, str]) -> dict:
    """`judge.kiosk.blocklist` (a file, relative to the kit) read into `blocked_names`, which the bundle carries."""
    from dkit.edge.kiosk.names import Blocklist

    path = (base / kiosk["blocklist"]).resolve()
    try:
        words = Blocklist.load(path).words
    except ValueError as e:
        raise KitError(where, "judge.kiosk.blocklist", problem=str(e),
                       source=sources.get("judge.kiosk.blocklist")) from e
    rest = {k: v for k, v in kiosk.items() if k != "blocklist"}
    return rest | {"blocked_names": list(dict.fromkeys([*rest.get("blocked_names", []), *words]))}


def _looks_like_path(value: str, require_sep: bool = False) -> bool:
    has_sep = "/" in value or os.sep in value or value.startswith("~")
    return has_sep if require_sep else has_sep or value.lower().endswith(CHECKPOINT_SUFFIXES)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _either(items: list[str], word: str = "or") -> str:
    """'a', 'a or b', 'a, b or c'."""
    return f" {word} ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


# --------------------------------------------------------------------------------------------- errors


class _Invalid(ValueError):
    """Raised in __post_init__: `key` is relative to the dataclass being validated; `problem` replaces
    "expected ..., got ..." when the value is not wrong but out of place (an unknown key)."""

    def __init__(self, key: str, expected: str | None, got: object = ..., problem: str | None = None):
        self.key, self.expected, self.got, self.problem = key, expected, got, problem
        super().__init__(f"{key}: {problem or f'expected {expected}'}")


def _check_train_args(config: type[TrainArgs], train_args: dict[str, Any], where: str = "train_args") -> None:
    """`student.train_args` against its kind's model; the first problem as an _Invalid naming `where`.KEY."""
    try:
        config.model_validate(train_args)
    except pydantic.ValidationError as e:
        first = max(e.errors(include_url=False), key=lambda err: len(_loc(err)))
        loc, expected, got, problem = _describe(first, lambda at: [] if at else list(config.model_fields))
        key = ".".join([where, *(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc)])
        raise _Invalid(key.replace(".[", "["), expected, got, problem) from None


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
    "dataclass_exact_type": "a mapping",
    "model_type": "a mapping",
    "path_type": "a file path",
    "none_required": "nothing (null)",
}


def _kit_error(err: pydantic.ValidationError, where: str, sources: dict[str, str]) -> KitError:
    """Turn pydantic's first error into one KitError line."""
    errors = err.errors(include_url=False)
    # A union (e.g. judge: JudgeSection | None) reports one error per member; the most specific is the deepest.
    first = max(errors, key=lambda e: len(_loc(e)))
    loc, expected, got, problem = _describe(first, _allowed_keys)

    key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
    # the option that set this key, a key inside it, or (a misspelt section: --set studnet.epochs=2) a key below it
    source = next((src for k, src in sources.items() if key == k or key.startswith((k + ".", k + "["))
                   or (key and k.startswith((key + ".", key + "[")))), None)
    return KitError(where, key, expected, got, problem=problem, source=source)


def _describe(first: dict[str, Any], allowed_keys) -> tuple[list[str | int], str | None, object, str | None]:
    """One pydantic error as (key path, expected, got, problem); `allowed_keys(loc)` lists the keys at a location
    (for "did you mean")."""
    loc = _loc(first)
    kind, ctx, got = first["type"], first.get("ctx") or {}, first.get("input", ...)
    problem, expected = None, None
    if isinstance(ctx.get("error"), _Invalid):
        inv = ctx["error"]
        loc = [*loc, *inv.key.split(".")] if inv.key else loc
        expected, got, problem = inv.expected, inv.got, inv.problem
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        problem = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
        problem += f"; the keys here are: {', '.join(allowed)}" if allowed else ""
    elif kind == "missing":
        problem = "required key is missing"
    elif kind == "literal_error":
        expected = "one of " + ctx.get("expected", "?")
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sym = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "?")
        expected = f"a number {sym} {bound}"
    elif kind in ("too_short", "string_too_short"):
        expected = "a non-empty value"
    elif kind == "string_pattern_mismatch":
        expected = "a name of letters, digits, '.', '_' or '-' (it names runs/<name>/)"
    else:
        expected = _EXPECTED.get(kind, first["msg"][0].lower() + first["msg"][1:])
    return loc, expected, got, problem


def _loc(error: dict[str, Any]) -> list[str | int]:
    """pydantic's location without the function/union markers it inserts."""
    out: list[str | int] = []
    for part in error["loc"]:
        if isinstance(part, str) and ("[" in part or part.startswith(("function-", "constrained-"))):
            continue  # e.g. 'function-before[...]', 'constrained-float', 'list[...]'
        out.append(part)
    return out


def _allowed_keys(loc: list[str | int]) -> list[str]:
    """The field names of the dataclass found at `loc` inside Kit (empty if not a dataclass)."""
    cls: Any = Kit
    for part in loc:
        if not isinstance(part, str) or not dataclasses.is_dataclass(cls):
            return []
        cls = _dataclass_in(get_type_hints(cls, include_extras=True).get(part))
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _dataclass_in(hint: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in get_args(hint) if get_origin(hint) is not None else ():
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None
