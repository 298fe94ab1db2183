"""The YOLO student kinds, `yolo-detect` and `yolo-cls`: Ultralytics detectors and classifiers.

Training and evaluation: dkit.distill.students.yolo; export: dkit.export.yolo; NCNN: dkit.export.ncnn.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, Strict

from dkit.core.student_kinds.spec import StudentKind, TrainArgs

_Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]
_Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
_Int = Annotated[int, Strict()]
_Bool = Annotated[bool, Strict()]


class YoloTrainArgs(TrainArgs):
    """`student.train_args` of a YOLO student: Ultralytics training arguments, passed on to `YOLO.train()`.

    Any Ultralytics argument is accepted (Ultralytics checks the others when training starts); the common ones
    below are typed as Ultralytics types them (its CFG_FRACTION/FLOAT/INT/BOOL_KEYS), so a wrong value is named
    when the kit loads. Unset: Ultralytics' default. Example (datasets/coco128/kit.yaml):
    `train_args: {warmup_epochs: 0, mosaic: 0.5}`.
    """

    model_config = ConfigDict(extra="allow")

    # fractions, 0 to 1: optimiser and augmentation
    lr0: _Fraction = Field(default=None)
    lrf: _Fraction = Field(default=None)
    momentum: _Fraction = Field(default=None)
    weight_decay: _Fraction = Field(default=None)
    warmup_momentum: _Fraction = Field(default=None)
    warmup_bias_lr: _Fraction = Field(default=None)
    dropout: _Fraction = Field(default=None)
    hsv_h: _Fraction = Field(default=None)
    hsv_s: _Fraction = Field(default=None)
    hsv_v: _Fraction = Field(default=None)
    translate: _Fraction = Field(default=None)
    perspective: _Fraction = Field(default=None)
    flipud: _Fraction = Field(default=None)
    fliplr: _Fraction = Field(default=None)
    mosaic: _Fraction = Field(default=None)
    mixup: _Fraction = Field(default=None)
    copy_paste: _Fraction = Field(default=None)
    erasing: _Fraction = Field(default=None)
    # numbers
    warmup_epochs: _Number = Field(default=None)
    box: _Number = Field(default=None)
    cls: _Number = Field(default=None)
    dfl: _Number = Field(default=None)
    degrees: _Number = Field(default=None)
    shear: _Number = Field(default=None)
    # integers
    close_mosaic: _Int = Field(default=None)
    nbs: _Int = Field(default=None)
    save_period: _Int = Field(default=None)
    # booleans
    cos_lr: _Bool = Field(default=None)
    rect: _Bool = Field(default=None)
    single_cls: _Bool = Field(default=None)


YOLO_DETECT = StudentKind(
    key="yolo-detect", task="detect", config=YoloTrainArgs, name="YOLO",
    train="dkit.distill.students.yolo", exporter="dkit.export.yolo:export_yolo_detect",
    ncnn="dkit.export.ncnn:convert_yolo_detect",
    teachers=("clip", "yolo"), model_file=True, imgsz_multiple=32, multi_gpu="device-list",
)

YOLO_CLS = StudentKind(
    key="yolo-cls", task="classify", config=YoloTrainArgs, name="YOLO",
    train="dkit.distill.students.yolo", exporter="dkit.export.yolo:export_yolo_cls",
    ncnn="dkit.export.ncnn:convert_yolo_cls",
    teachers=("clip",), model_file=True, imgsz_multiple=32, multi_gpu="device-list",
)
