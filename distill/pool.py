"""Unlabeled pools (clip-embed students): many more images whose teacher embeddings the student learns.

    from dkit.distill.pool import label_pool

    pool = label_pool(kit, teacher, cache, run_dir, kit_shas=shas, npy_start=start, staging=tmp / ".pool",
                      progress=True, store=store)          # -> Pool(records, counts); dkit label calls it
    pool = leave_out_held_out(pool, records, kit, kit_root=root, run_dir=run_dir)  # after the split

`data.unlabeled` lists folders (images and videos, searched recursively), single image or video files, and
Quick, Draw! .npy files or folders of them (rendered like the kit's own, `data.unlabeled_per_file` doodles a
file, into RUN_DIR/pool/). `dkit label` runs the teacher over them with the kit's engine (`label.engine`:
local or ray) into the same content-keyed teacher cache, and writes labels/pool.jsonl: one LabelRecord a
line, split "pool" (the file, its sha256, the teacher's scores). Nothing is labelled into the data set.

Held-out images stay held out: a pool image identical to any of the kit's images (train or val) is left
out, and so, once the kit's images are split (`leave_out_held_out`, after dkit.distill.split), is every pool
image that would have joined a held-out group: a frame of the same video file as a held-out frame, or an image
within `data.split_near_duplicate` pHash bits of a held-out image (a re-encode, a resize, the same scene). Pool
images near training images stay (they are not held out). Each pool image's pHash comes from the split's
reduced decode, is kept in the teacher cache by content (a relabel hashes nothing again) and in its record
(`phash`, 16 hex digits), so `dkit train` checks the pool against the held-out images again cheaply. A .npy
file the kit's images were rendered from contributes only the doodles after the kit's `data.drawings_per_file`.
`dkit train` (clip-embed) learns from the labelled training images plus the pool; evaluation stays on the
held-out images. At most `data.unlabeled_max` pool images are taken, the first
ones listed (entry by entry, files in name order), a budget spent before rendering or sampling anything, with
a warning saying what was left out. The run folder is never scanned into the pool.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from dkit.core.records import LabelRecord
from dkit.core.run import RunDir
from dkit.distill.cache import TeacherCache
from dkit.distill.engines import engine
from dkit.distill.images import scan
from dkit.distill.quickdraw import npy_files, render_folder
from dkit.distill.teachers import Teacher
from dkit.distill.video import as_video_frames, expand_videos, is_video

log = logging.getLogger(__name__)

SPLIT = "pool"
PHASH_KEY = "dkit.split.phash/1"  # the teacher cache's key for pool images' perceptual hashes (by content)


@dataclasses.dataclass
class Pool:
    """The pool's records (split "pool") and what happened to its files."""

    records: list[LabelRecord]
    # files (listed), cached, inferred (the teacher ran), skipped (unreadable), in_kit (identical to one of the
    # kit's images: left out), duplicates (identical to an earlier pool image), over_max (past unlabeled_max),
    # held_out (in a held-out group: a held-out frame's video, or pHash-near a held-out image; leave_out_held_out)
    counts: dict[str, int]
    # a video frame's file (absolute) -> the videos it was sampled from (real paths), for leave_out_held_out
    frame_videos: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)


def label_pool(kit, teacher: Teacher, cache: TeacherCache, run_dir: Path, *, kit_shas: set[str],
               npy_start: dict[str, int], staging: Path, progress: bool, store=None) -> Pool:
    """Run the teacher over `data.unlabeled` (see the module docstring). `kit_shas`: the kit's images' contents;
    `npy_start`: quickdraw.file_digest -> the first doodle the pool may take from that file."""
    paths, root, frames, frame_videos = _pool_files(kit, Path(run_dir), npy_start, progress)
    over = max(0, len(paths) - kit.data.unlabeled_max)
    if over:
        log.warning("data.unlabeled lists %d images; the first %d are taken (data.unlabeled_max), %d left out",
                    len(paths), kit.data.unlabeled_max, over)
        paths = paths[: kit.data.unlabeled_max]
    log.info("unlabeled pool: %d images to run the teacher on", len(paths))
    records, counts = engine(kit.label.engine)(kit, teacher, cache, root, paths, staging, progress, store=store)

    for video_frames in frames:  # each entry's videos: records named video#t=SECONDS
        records = as_video_frames(records, video_frames, teacher.id)
    kept, seen = [], set()
    counts = {"files": len(paths) + over, "cached": counts["cached"], "inferred": counts["inferred"],
              "skipped": 0, "in_kit": 0, "duplicates": 0, "over_max": over, "held_out": 0}
    for rec in records:
        why = ("skipped" if rec.skipped is not None else "in_kit" if rec.sha256 in kit_shas
               else "duplicates" if rec.sha256 in seen else None)
        if why is not None:
            counts[why] += 1
            continue
        seen.add(rec.sha256)
        kept.append(dataclasses.replace(rec, split=SPLIT))
    log.info("unlabeled pool: %d images kept (%d identical to the kit's images, %d repeated, %d unreadable)",
             len(kept), counts["in_kit"], counts["duplicates"], counts["skipped"])
    return Pool(kept, counts, frame_videos)


def leave_out_held_out(pool: Pool, records: list[LabelRecord], kit, *, kit_root: Path, run_dir: Path) -> Pool:
    """The pool without the images that would fall in a held-out group of the split (`records`: the kit's, split
    by dkit.distill.split.assign_split; `kit_root`: the folder their video names are relative to): frames of a
    held-out frame's video, and images within `data.split_near_duplicate` pHash bits of a held-out image (byte
    copies are already out: `in_kit`). Counted as `held_out`; each kept image's record gets its `phash`."""
    from dkit.distill.split import image_hashes, near_any

    val = [r for r in records if r.split == "val" and r.skipped is None]
    if not val or not pool.records:
        return pool
    videos = {os.path.realpath(Path(kit_root) / v["file"]) for r in val if r.video
              for v in [r.video, *(r.video.get("also") or ())]}
    same_video = [bool(videos & pool.frame_videos.get(os.path.abspath(r.source), frozenset()))
                  for r in pool.records]
    bits = kit.data.split_near_duplicate
    hashes: list[int | None] = [None] * len(pool.records)
    near = [False] * len(pool.records)
    if bits >= 0:
        hashes = _pool_hashes(pool.records, RunDir(run_dir).cache_db, kit.data.workers)
        near = near_any(hashes, image_hashes(val, workers=kit.data.workers), bits)  # val's: cached by the split
    kept = [dataclasses.replace(r, extra={**r.extra, "phash": f"{h:016x}"}) if h is not None else r
            for r, h, v, n in zip(pool.records, hashes, same_video, near, strict=True) if not (v or n)]
    counts = pool.counts | {"held_out": len(pool.records) - len(kept)}
    if counts["held_out"]:
        log.info("unlabeled pool: %d images left out as part of a held-out group (%d frames of a held-out "
                 "frame's video, %d within %d pHash bits of a held-out image)", counts["held_out"], sum(same_video),
                 sum(n and not v for v, n in zip(same_video, near, strict=True)), bits)
    return Pool(kept, counts, pool.frame_videos)


def _pool_hashes(records: list[LabelRecord], cache_db: Path, workers: int) -> list[int | None]:
    """Each pool image's pHash (dkit.distill.split's reduced decode), kept in the teacher cache by content so a
    relabel decodes nothing again; None for an image that cannot be hashed (never stored)."""
    from dkit.distill.cache import TeacherCache
    from dkit.distill.split import image_hashes

    with TeacherCache(cache_db) as cache:
        hashes = []
        for rec in records:
            got = cache.get(PHASH_KEY, rec.sha256)
            hashes.append(None if got is None else int(got["phash"][0]))
        todo = [k for k, h in enumerate(hashes) if h is None]
        if todo:
            log.info("unlabeled pool: hashing %d images (perceptual hash, against the held-out ones)", len(todo))
            for k, h in zip(todo, image_hashes([records[k] for k in todo], workers=workers), strict=True):
                hashes[k] = h
            cache.put_many(PHASH_KEY, [(records[k].sha256, {"phash": np.array([hashes[k]], np.uint64)})
                                       for k in todo if hashes[k] is not None])
    return hashes


def _pool_files(kit, run_dir: Path, npy_start: dict[str, int], progress: bool):
    """(image paths in order, the folder their names are relative to, the pool's VideoFrames, one per entry with
    videos, each frame file's videos as real paths). Entry by entry, in the order listed, with
    `data.unlabeled_max` as a budget spent before any work: an entry's .npy files render only what is left of it
    (split between the files), its videos sample at most that many frames; the run folder
    itself is never part of the pool (its data set holds held-out copies)."""
    out, left = run_dir / "pool", kit.data.unlabeled_max
    images: list[Path] = []
    frames = []
    frame_videos: dict[str, set[str]] = {}  # frame file -> the videos (real paths) it was sampled from
    for i, entry in enumerate(kit.data.unlabeled):
        if left <= 0:
            log.warning("data.unlabeled[%d] %s: left out, data.unlabeled_max (%d) already reached", i, entry,
                        kit.data.unlabeled_max)
            continue
        entry = Path(entry)
        files = [Path(os.path.abspath(entry))] if entry.is_file() else scan(entry)
        files = [p for p in files if not _inside(p, run_dir)]
        npy = npy_files(entry)
        if npy:  # Quick, Draw! bitmaps: rendered like the kit's own drawings (beside any images in the folder)
            per_file = min(kit.data.unlabeled_per_file, max(1, left // len(npy)))
            folder = render_folder(entry, out / f"drawings-{i}", per_file=per_file, size=kit.data.drawing_size,
                                   start=npy_start)
            files = scan(folder) + [p for p in files if p.suffix.lower() != ".npy"]
        still = [p for p in files if not is_video(p)]
        images += still
        left -= len(still)
        videos = [p for p in files if is_video(p)]
        if videos and left > 0:
            settings = dataclasses.replace(kit.data.video, max_frames=min(kit.data.video.max_frames, left))
            root = Path(os.path.commonpath([str(p.parent) for p in videos]))
            got = expand_videos(videos, root, out / "frames", settings, progress=progress)
            frames.append(got)
            for name, where in got.origin.items():
                frame_videos.setdefault(os.path.abspath(got.out / name), set()).update(
                    os.path.realpath(root / video) for video, _ in where)
            images += got.images
            left -= len(got.images)
    parents = [str(p.parent) for p in images]
    root = Path(os.path.commonpath(parents)) if parents else out
    return images, root, frames, {k: frozenset(v) for k, v in frame_videos.items()}


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(folder)))
    except ValueError:
        return False
    return True
