"""`dkit label`: the teacher labels a folder of images into a data set a student trains on.

    from dkit.distill.label import label_images

    result = label_images(kit, run_dir)            # -> run_dir/labels/

writes `run_dir/labels/`:
- an Ultralytics data set: detection `data.yaml`, `images/{train,val}/`, `labels/{train,val}/*.txt`;
  classification `{train,val}/<class>/` (plus a `data.yaml` with the class names);
- `labels.jsonl`: one line per file: its labels with confidences, the teacher's top-k scores,
  whether the teacher abstained and why, or why the file was skipped, and the teacher id;
- `report.html`: counts, histograms, contact sheets, what to review, skipped files.

Video files among the inputs (dkit.distill.video) are sampled at `data.video.fps`, near-duplicate frames
skipped, and each kept frame (a JPEG under run_dir/frames/, named by content) labelled like an image; its
record is named `video#t=SECONDS` and says which video and time it came from (`video`).
A clip-embed kit's unlabeled pool (`data.unlabeled`, dkit.distill.pool) is run through the teacher as well,
into labels/pool.jsonl: images the student learns from that are never labelled, held out or in the data set.
Images are linked (or copied, `data.link: copy`), never moved, and keep their file stem (a `_1`
suffix only on a name collision); an image that had to be normalised (CMYK, 16-bit, EXIF rotation,
downscaled) is written as a plain JPEG. The split (dkit.distill.split) is deterministic for `data.seed` and
never cuts a group: identical files, frames of one video and near-duplicate images (perceptual hash within
`data.split_near_duplicate` bits) are all held out or all trained on; labels/split.json says how it was formed.
Decoding runs in worker processes while the teacher infers; teacher
outputs are cached by image content, so a rerun or an interrupted run recomputes nothing it has.
The data set is built in a temporary folder and swapped in at the end: Ctrl-C leaves the previous
labels (or none), never a half-written set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import cv2

from dkit.core.errors import DkitError, UsageError
from dkit.core.files import atomic_write, duration, new_tmp_dir, replace_dir
from dkit.core.records import LabelRecord
from dkit.core.run import RunDir
from dkit.core.workers import decode_workers
from dkit.distill.cache import TeacherCache
from dkit.distill.engines import engine
from dkit.distill.images import LoadedImage, iter_images, scan
from dkit.distill.split import assign_split, write_summary
from dkit.distill.teachers import Teacher, build_teacher
from dkit.distill.video import as_video_frames, expand_videos, is_video

log = logging.getLogger(__name__)

# Suffixes Ultralytics loads by name; anything else is written as a JPEG copy.
LINKABLE = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclasses.dataclass
class LabelResult:
    labels_dir: Path
    records: list[LabelRecord]
    counts: dict[str, int]
    seconds: float
    quality: dict | None = None
    videos: list[dict] = dataclasses.field(default_factory=list)  # per video: sampled, near_duplicates, kept, ...


def resolve_images(kit, store) -> Path:
    """The kit's image folder: `data.images` (or --data), else its `data.url` archive from the model store."""
    if kit.data.images is not None:
        return Path(kit.data.images)
    if kit.data.url is not None:
        return store.dataset(kit.data.url, sha256=kit.data.sha256, subdir=kit.data.subdir)
    raise UsageError("no images to label: set data.images in the kit or pass --data DIR")


def label_images(kit, run_dir: Path, *, store=None, teacher: Teacher | None = None,
                 ground_truth: Path | None = None, progress: bool = True, report: bool = True,
                 kit_arg: str = "KIT") -> LabelResult:
    """Label the kit's images into `run_dir/labels/` (see the module docstring). Without a `teacher` given, every
    file the kit needs is looked for first (dkit.distill.kit_files) and all the missing ones named at once, with
    `dkit fetch {kit_arg}` to get them."""
    from dkit.core.store import ModelStore
    from dkit.distill.kit_files import require_files

    start = time.perf_counter()
    store = store or ModelStore()
    if teacher is None:
        require_files(kit, store, kit_arg)  # first: a missing extra, then every missing file, before any work
        teacher = build_teacher(kit, store)
    root = resolve_images(kit, store)
    from dkit.distill.quickdraw import file_digest, npy_files, render_folder, truth_file

    npy_start = {}  # an unlabeled pool drawn from the same .npy files starts after the kit's drawings
    if npy_files(root):  # Quick, Draw! bitmaps: rendered once into kiosk-like drawings, then labelled like images
        npy_start = {file_digest(p): kit.data.drawings_per_file for p in npy_files(root)}
        root = render_folder(root, run_dir / "rendered", per_file=kit.data.drawings_per_file,
                             size=kit.data.drawing_size)
        log.info("Quick, Draw! files rendered to %s (their classes: %s)", root, truth_file(root))
    paths, root = _inputs(root)
    frames = None
    if any(is_video(p) for p in paths):  # footage: sampled frames, near-duplicates skipped, then labelled as images
        frames = expand_videos([p for p in paths if is_video(p)], root, run_dir / "frames", kit.data.video,
                               progress=progress)
        paths = [p for p in paths if not is_video(p)] + frames.images
    if teacher.random:
        log.warning("labeling with an UNTRAINED teacher (%s): the labels are meaningless", teacher.id)
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_orphans(run_dir)
    tmp = new_tmp_dir(run_dir, f".labels-{os.getpid()}-")
    try:
        with TeacherCache(RunDir(run_dir).cache_db) as cache:
            label_all = engine(kit.label.engine)  # dkit.distill.engines: local (this process) or ray (a cluster)
            records, counts = label_all(kit, teacher, cache, root, paths, tmp / ".staging", progress, store=store)
            pool = None
            if kit.data.unlabeled:  # clip-embed: more images for the student, never labelled or held out
                from dkit.distill.pool import label_pool

                pool = label_pool(kit, teacher, cache, run_dir, kit_shas={r.sha256 for r in records if r.sha256},
                                  npy_start=npy_start, staging=tmp / ".pool-staging", progress=progress, store=store)
        if frames is not None:
            records = as_video_frames(records, frames, teacher.id)
            counts |= {"videos": len(frames.stats) + len(frames.skipped), "frames_sampled":
                       sum(v["sampled"] for v in frames.stats), "near_duplicates":
                       sum(v["near_duplicates"] for v in frames.stats), "frames_kept": len(frames.images)}
        if not any(r.skipped is None for r in records):
            raise UsageError(f"none of the {len(paths)} files in {root} is a readable image or video (see the "
                             "reasons with -v)")
        records, split_summary = assign_split(records, kit)
        if pool is not None:  # no pool image may join a held-out group (its video, a near-duplicate of it)
            from dkit.distill.pool import leave_out_held_out

            pool = leave_out_held_out(pool, records, kit, kit_root=root, run_dir=run_dir)
        records = _write_dataset(records, kit, tmp, staging=tmp / ".staging")
        write_summary(tmp, split_summary)  # labels/split.json: how the held-out split was formed (eval.md says it)
        quality = None
        if ground_truth is not None:
            if kit.task != "detect":
                raise UsageError("--ground-truth scores detection labels; this kit's labels are image classes")
            from dkit.distill.quality import detection_quality

            quality = detection_quality(records, Path(ground_truth), kit.ontology.names)
            atomic_write(tmp / "quality.json", json.dumps(quality, indent=2) + "\n")
        lines = (json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
        atomic_write(tmp / "labels.jsonl", "".join(lines))  # one LabelRecord (dkit.core.records) a line
        if pool is not None:
            counts |= {f"pool_{k}": v for k, v in pool.counts.items()} | {"pool": len(pool.records)}
            atomic_write(tmp / "pool.jsonl", "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
                                                     for r in pool.records))
        if report:
            from dkit.distill.report import write_report

            write_report(
                tmp / "report.html", records=records, names=kit.ontology.names, task=kit.task, teacher=teacher.id,
                random_teacher=teacher.random, settings=_settings(kit), review_below=kit.teacher.review_below,
                quality=quality, title=f"{kit.name}: teacher labels",
            )
        shutil.rmtree(tmp / ".staging", ignore_errors=True)
        shutil.rmtree(tmp / ".pool-staging", ignore_errors=True)
        labels_dir = RunDir(run_dir).labels
        replace_dir(tmp, labels_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return LabelResult(labels_dir, records, counts, time.perf_counter() - start, quality,
                       [] if frames is None else frames.stats)


def _inputs(root: Path) -> tuple[list[Path], Path]:
    """The files to label and the folder their names are relative to: a folder's files, or one file."""
    if root.is_file():
        return [Path(os.path.abspath(root))], Path(os.path.abspath(root)).parent
    return scan(root), root


# ------------------------------------------------------------------------------------------ labeling


def _label_all(kit, teacher: Teacher, cache: TeacherCache, root: Path, paths: list[Path], staging: Path,
               progress: bool, **_) -> tuple[list[LabelRecord], dict[str, int]]:
    """The local engine: decoding in worker processes, the teacher in this one, batch by batch."""
    staging.mkdir(parents=True)
    records: list[LabelRecord | None] = [None] * len(paths)
    counts = {"files": len(paths), "cached": 0, "inferred": 0, "skipped": 0}
    pending: list[tuple[int, LoadedImage]] = []
    batch = kit.teacher.batch
    workers = decode_workers(kit.data.workers)
    bar = progress_bar(len(paths), progress)

    def flush() -> None:
        if not pending:
            return
        raws = teacher.infer([li.rgb for _, li in pending])
        cache.put_many(teacher.cache_key, [(li.sha256, raw) for (_, li), raw in zip(pending, raws, strict=True)])
        for (i, li), raw in zip(pending, raws, strict=True):
            records[i] = _record(li, raw, teacher, kit, staging)
        counts["inferred"] += len(pending)
        bar.update(len(pending))
        pending.clear()

    try:
        for i, li in enumerate(iter_images(paths, root, workers=workers, prefetch=max(16, 2 * batch))):
            if not li.ok:
                records[i] = _skipped(li, teacher)
                counts["skipped"] += 1
                log.info("skipped %s: %s", li.rel, li.skipped)
                bar.update(1)
                continue
            raw = cache.get(teacher.cache_key, li.sha256)
            if raw is not None:
                records[i] = _record(li, raw, teacher, kit, staging)
                counts["cached"] += 1
                bar.update(1)
                continue
            pending.append((i, li))
            if len(pending) >= batch:
                flush()
                bar.set_postfix(cached=counts["cached"], skipped=counts["skipped"], refresh=False)
        flush()
    finally:
        bar.close()
    return [r for r in records if r is not None], counts


def progress_bar(total: int, progress: bool):
    """tqdm on a terminal; in a log (not a terminal: a file, CI) a line with the rate and ETA every 30 s."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc="label", disable=None if progress else True, dynamic_ncols=True)
    if progress and bar.disable:
        bar = _LogProgress(total, every_s=30.0)
    return bar


class _LogProgress:
    """tqdm's interface for a log: `label: 1200/9469 images, 7.1 images/s, about 19m left`."""

    def __init__(self, total: int, every_s: float):
        self.total, self.every_s, self.n = total, every_s, 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.n / (now - self.start)
            left = (self.total - self.n) / rate if rate else float("inf")
            log.info("label: %d/%d images, %.1f images/s, about %s left", self.n, self.total, rate, duration(left))

    def set_postfix(self, **_) -> None:
        pass

    def close(self) -> None:
        pass


def _record(li: LoadedImage, raw, teacher: Teacher, kit, staging: Path) -> LabelRecord:
    """The image's record; an image the data set cannot link (normalised pixels, an odd format) also gets a
    JPEG copy of what the teacher saw, staging/<sha256>.jpg, which the data set uses instead."""
    if needs_copy(li.path, li.normalised):
        write_copy(staging, li.sha256, lambda: jpeg_copy(li.rgb, li.path))
    return build_record(li.path, li.rel, li.sha256, (li.height, li.width), li.normalised, raw, teacher, kit)


def needs_copy(path: Path, normalised: str | None) -> bool:
    """Whether the data set needs a JPEG of the decoded pixels instead of a link to the file."""
    return bool(normalised) or Path(path).suffix.lower() not in LINKABLE


def write_copy(staging: Path, sha256: str, jpeg) -> None:
    """staging/<sha256>.jpg, the pixels the teacher saw (what the data set uses instead of the file), once per
    content; `jpeg()` gives its bytes."""
    copy = staging / f"{sha256}.jpg"
    if not copy.exists():
        copy.write_bytes(jpeg())


def jpeg_copy(rgb, path: Path) -> bytes:
    """(H, W, 3) uint8 RGB -> the JPEG (q95) the data set uses for an image it cannot link."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise DkitError(f"cannot encode a normalised copy of {path}")
    return buf.tobytes()


def build_record(path: Path, rel: str, sha256: str, shape: tuple[int, int], normalised: str | None, raw,
                 teacher: Teacher, kit) -> LabelRecord:
    """One image's LabelRecord from the teacher's raw outputs (`teacher.decide`) and the image's facts."""
    h, w = shape
    d = teacher.decide(raw, (h, w))
    names = kit.ontology.names
    labels = []
    for k in range(len(d.class_ids)):
        lab = {"class": names[int(d.class_ids[k])], "class_id": int(d.class_ids[k]),
               "confidence": round(float(d.confidences[k]), 5)}
        if d.boxes is not None:
            x1, y1, x2, y2 = (float(v) for v in d.boxes[k])
            lab["box"] = [round(max(0.0, x1), 2), round(max(0.0, y1), 2), round(min(w, x2), 2), round(min(h, y2), 2)]
        labels.append(lab)
    return LabelRecord(
        image=rel, source=str(path), sha256=sha256, teacher=teacher.id, width=w, height=h,
        normalised=normalised, labels=tuple(labels),
        topk=tuple({"class": names[c], "score": round(s, 5)} for c, s in d.topk),
        similarity=None if d.similarity is None else round(d.similarity, 5),
        abstained=d.abstain_reason is not None, abstain_reason=d.abstain_reason)


def _skipped(li: LoadedImage, teacher: Teacher) -> LabelRecord:
    return skipped_record(li.path, li.rel, li.sha256, li.skipped, teacher)


def skipped_record(path: Path, rel: str, sha256: str | None, reason: str, teacher: Teacher) -> LabelRecord:
    """The record of a file that was not labelled, and why."""
    return LabelRecord(image=rel, source=str(path), sha256=sha256, teacher=teacher.id, skipped=reason)


# ------------------------------------------------------------------------------------------ data set


def _assign_split(records: list[LabelRecord], kit) -> list[LabelRecord]:
    """The records with their split: the group split of dkit.distill.split (seeded, order-independent; identical
    files, frames of one video and near-duplicates are never on both sides)."""
    return assign_split(records, kit)[0]


def _write_dataset(records: list[LabelRecord], kit, out: Path, *, staging: Path) -> list[LabelRecord]:
    """Link (or copy) each image of a split into the Ultralytics layout under `out`; the records, with their
    `dataset_image` filled in."""
    taken: set[str] = set()
    placed = []
    for rec in records:
        if rec.split is None or (kit.task == "classify" and rec.abstained):
            placed.append(rec)
            continue
        copy = staging / f"{rec.sha256}.jpg"  # the normalised pixels (_record), when the image needed them
        copy = copy if copy.is_file() else None
        rel = _place_image(rec, kit, out, _free_name(rec, copy, taken), copy)
        placed.append(dataclasses.replace(rec, dataset_image=rel.as_posix()))
    _write_layout(placed, kit, out)
    return placed


def _free_name(rec: LabelRecord, copy: Path | None, taken: set[str]) -> str:
    """The image's file stem in the data set; a collision across sub-folders gets a suffix, never overwrites."""
    if rec.video is not None:  # a video frame: the video's stem and the time, e.g. cam1_t0000012.500.jpg
        stem, suffix = f"{Path(rec.video['file']).stem}_t{float(rec.video['t']):011.3f}", ".jpg"
    else:
        stem = Path(rec.image).stem
        suffix = ".jpg" if copy else Path(rec.image).suffix.lower()
    name, k = f"{stem}{suffix}", 0
    while name.lower() in taken:
        k += 1
        name = f"{stem}_{k}{suffix}"
    taken.add(name.lower())
    return name


def _place_image(rec: LabelRecord, kit, out: Path, name: str, copy: Path | None) -> Path:
    src = copy or Path(rec.source)
    if kit.task != "detect":
        rel = Path(rec.split) / rec.labels[0]["class"] / name
        _place(src, out / rel, copy=bool(copy) or kit.data.link == "copy")
        return rel
    rel = Path("images") / rec.split / name
    _place(src, out / rel, copy=bool(copy) or kit.data.link == "copy")
    lines = []
    for lab in rec.labels:
        x1, y1, x2, y2 = lab["box"]
        w, h = rec.width, rec.height
        lines.append(f"{lab['class_id']} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                     f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n")
    label_file = out / "labels" / rec.split / f"{Path(name).stem}.txt"
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("".join(lines))
    return rel


def _write_layout(records: list[LabelRecord], kit, out: Path) -> None:
    """Every split/class folder Ultralytics expects (empty ones too) and data.yaml."""
    names = kit.ontology.names
    if kit.task == "detect":
        for split in ("train", "val"):
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        doc = {"train": "images/train", "val": "images/val"}
    else:
        for split in ("train", "val"):
            for cls in names:
                (out / split / cls).mkdir(parents=True, exist_ok=True)  # Ultralytics wants every class folder
        doc = {"train": "train", "val": "val"}
    import yaml

    if kit.task != "detect":  # Ultralytics numbers a classifier's classes by its sorted folder names
        names = sorted(names)
    doc |= {"names": dict(enumerate(names)), "task": kit.task, "teacher": records[0].teacher}
    atomic_write(out / "data.yaml", "# written by dkit label; paths are relative to this file\n"
                + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def _place(src: Path, dest: Path, *, copy: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copyfile(src, dest)
        return
    try:
        os.symlink(src.resolve(), dest)
    except OSError:  # a filesystem without symlinks
        shutil.copyfile(src, dest)


def _remove_orphans(run_dir: Path) -> None:
    """Temporary folders left by a labeler that was killed (SIGKILL, power loss): their process is gone."""
    for folder in run_dir.glob(".labels-*"):
        match = re.match(r"\.labels-(?:old-)?(\d+)", folder.name)
        if match is None or _alive(int(match.group(1))):
            continue
        log.info("removing %s, left by a labeler that was killed", folder)
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _settings(kit) -> dict:
    return {"teacher": dataclasses.asdict(kit.teacher), "ontology": dataclasses.asdict(kit.ontology),
            "data": {k: str(v) if isinstance(v, Path) else [str(p) for p in v] if k == "unlabeled" else v
                     for k, v in dataclasses.asdict(kit.data).items()}}
