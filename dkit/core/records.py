"""A label record: one line of RUN_DIR/labels/labels.jsonl, as a typed, frozen dataclass.

    from dkit.core.records import LabelRecord

    rec = LabelRecord.from_dict(json.loads(line), where="labels.jsonl:12")
    rec.image, rec.split, rec.labels[0]["class"], rec.is_usable
    rec.to_dict()                                    # the JSON line (what dkit.distill.label writes)

`dkit.distill.label` writes every line through this class, and every reader (the students, evaluation, export)
gets these objects from dkit.core.run.RunDir.records(); the fields are documented in docs/WORKFLOW.md (2. Label).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from dkit.core.errors import DkitError

SPLITS = (None, "train", "val", "pool")  # pool: an unlabeled-pool image (labels/pool.jsonl)


class RecordError(DkitError):
    """A labels.jsonl line that is not a label record; the message names the line and the key."""


@dataclass(frozen=True)
class LabelRecord:
    """One image's entry in labels.jsonl (what the teacher said about it). Construction checks `split` is
    one of SPLITS and `video` is {file, t} or None, else RecordError."""

    image: str  # path relative to the labelled folder
    source: str  # absolute path of the original file
    sha256: str  # of the file's bytes (the teacher cache key)
    teacher: str  # the teacher's id
    split: str | None = None  # train | val | pool (an unlabeled-pool image, clip-embed) | None (skipped, or not used)
    dataset_image: str | None = None  # the data set's copy or link, relative to labels/
    width: int = 0
    height: int = 0
    normalised: str | None = None  # why the pixels were rewritten (cmyk, exif-rotated, ...), None: as is
    labels: tuple[Mapping[str, Any], ...] = ()  # {class, class_id, confidence[, box xyxy pixels]}
    topk: tuple[Mapping[str, Any], ...] = ()  # {class, score}
    similarity: float | None = None
    abstained: bool = False
    abstain_reason: str | None = None
    skipped: str | None = None  # why the file was not labelled
    video: Mapping[str, Any] | None = None  # a video frame: {file (the video, relative), t (seconds), also: [...]}
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know (kept on rewrite)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise RecordError(f"split: expected train, val, pool or null, got {self.split!r}")
        v = self.video
        if v is not None and not (isinstance(v, Mapping) and isinstance(v.get("file"), str)
                                  and isinstance(v.get("t"), (int, float)) and not isinstance(v.get("t"), bool)):
            raise RecordError(f"video: expected {{file: the video, t: seconds}} or null, got {v!r}")

    @property
    def is_usable(self) -> bool:
        """Labelled (not skipped) and in the train or val split."""
        return self.skipped is None and self.split in ("train", "val")

    @classmethod
    def from_dict(cls, doc: Any, where: str = "label record") -> LabelRecord:
        """Parse one JSON line, e.g. `LabelRecord.from_dict(json.loads(line), "labels.jsonl:12")`; image, source,
        sha256 and teacher are required, unknown keys are kept in `extra`. A RecordError names `where` and the key."""
        if not isinstance(doc, dict):
            raise RecordError(f"{where}: expected a JSON object")
        names = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("image", "source", "sha256", "teacher") if k not in doc]
        if missing:
            raise RecordError(f"{where}: {missing[0]}: missing required key")
        values = {k: v for k, v in doc.items() if k in names}
        values["labels"] = tuple(doc.get("labels") or ())
        values["topk"] = tuple(doc.get("topk") or ())
        try:
            return cls(**values, extra={k: v for k, v in doc.items() if k not in names})
        except RecordError as e:
            raise RecordError(f"{where}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The JSON line (what dkit.distill.label writes), `extra` keys included; `video` only for a video frame."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        doc["labels"], doc["topk"] = [dict(x) for x in self.labels], [dict(x) for x in self.topk]
        if self.video is None:
            del doc["video"]  # a still image's line is as before
        else:
            doc["video"] = dict(self.video)
        return doc | dict(self.extra)
