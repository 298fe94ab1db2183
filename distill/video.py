"""Video footage as labeling input: frames sampled at `data.video.fps`, near-duplicates skipped, each kept frame
written once as a JPEG named by its content, with the videos and timestamps it came from.

    from dkit.distill.video import expand_videos

    frames = expand_videos(videos, root, run_dir / "frames", kit.data.video)
    frames.images                  # the kept frames' files, labelled like any image (the teacher cache keys them)
    frames.origin["ab12....jpg"]   # [("street/cam1.mp4", 12.5), ...]: every place that frame was kept
    frames.stats                   # per video: sampled, near_duplicates, kept, seconds decoding, duration
    frames.skipped                 # [(video, why)]: unreadable, too large, no frames

Sampling: OpenCV reads the file (its FFmpeg build: .mp4, .mov, .mkv, .avi, .webm, ...); every frame is grabbed,
and one is decoded whenever its timestamp reaches the next multiple of 1/fps. A sampled frame whose perceptual
hash (dkit.edge.images.phash, 64 bits) is within `near_duplicate` bits of a frame already kept from the same video is
skipped: a parked camera's hour of the same street gives a handful of frames, not 3,600. Bounds, checked before
decoding: `max_pixels` per frame (from the stream's header, and again per decoded frame) and `max_frames`
sampled per video. Kept frames are JPEG quality 95, named by the sha256 of their bytes, so a frame identical in
two videos (or two runs) is written once and the teacher's cache finds it again; frames/index.json remembers each
video by its content sha256 and settings, so a rerun decodes nothing it has already sampled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dkit.core.files import atomic_write
from dkit.core.records import LabelRecord
from dkit.edge.bundle.hashing import sha256_file
from dkit.edge.images.phash import phash

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"})
JPEG_QUALITY = 95
INDEX_VERSION = 1


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoFrames:
    out: Path  # the folder the kept frames are in
    images: list[Path] = field(default_factory=list)  # unique kept frame files, in input order
    origin: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # frame file name -> (video, t s)
    stats: list[dict] = field(default_factory=list)  # one per readable video
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (video rel, why)


class _Unreadable(Exception):
    pass


def expand_videos(videos: list[Path], root: Path, out: Path, settings, *, progress: bool = True) -> VideoFrames:
    """Sample, deduplicate and write the frames of `videos` (paths under `root`) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    index_file = out / "index.json"
    index = _read_index(index_file)
    wanted = {"fps": settings.fps, "near_duplicate": settings.near_duplicate, "max_frames": settings.max_frames,
              "max_pixels": settings.max_pixels, "jpeg_quality": JPEG_QUALITY}
    result, seen = VideoFrames(Path(os.path.abspath(out))), set()
    for path in videos:
        rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()
        try:
            sha = sha256_file(path)
        except OSError as e:
            result.skipped.append((rel, f"unreadable: {e.strerror or e}"))
            continue
        entry = index.get(sha)
        if not (entry and entry.get("settings") == wanted and all((out / n).is_file() for n, _ in entry["frames"])):
            try:
                entry = {"settings": wanted, **_sample(path, out, settings)}
            except _Unreadable as e:
                result.skipped.append((rel, str(e)))
                log.info("skipped video %s: %s", rel, e)
                continue
            index[sha] = entry
            atomic_write(index_file, json.dumps({"version": INDEX_VERSION, "videos": index}, indent=1) + "\n")
        stats = {"video": rel, **entry["stats"]}
        result.stats.append(stats)
        for name, t in entry["frames"]:
            result.origin.setdefault(name, []).append((rel, float(t)))
            if name not in seen:
                seen.add(name)
                result.images.append(out / name)
        if progress:
            log.info("video %s: %d frames sampled at %g fps over %.1f s, %d near-duplicates skipped, %d kept",
                     rel, stats["sampled"], settings.fps, stats["duration_s"], stats["near_duplicates"],
                     stats["kept"])
    return result


def _sample(path: Path, out: Path, settings) -> dict:
    """Decode `path`, keep the sampled frames that are not near-duplicates; {"frames": [[name, t]], "stats"}."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise _Unreadable("not a video this OpenCV build can read")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w * h > settings.max_pixels:
            raise _Unreadable(f"{w}x{h} frames are over data.video.max_pixels ({settings.max_pixels:,})")
        native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        start = time.perf_counter()
        frames, hashes = [], []
        sampled = dups = grabbed = 0
        next_t, step, t = 0.0, 1.0 / settings.fps, 0.0
        while sampled < settings.max_frames and cap.grab():
            t = _timestamp(cap, grabbed, native)
            grabbed += 1
            if t + 1e-6 < next_t:
                continue
            ok, bgr = cap.retrieve()
            if not ok or bgr is None or bgr.ndim != 3:
                break
            if bgr.shape[0] * bgr.shape[1] > settings.max_pixels:
                raise _Unreadable(f"a {bgr.shape[1]}x{bgr.shape[0]} frame is over data.video.max_pixels")
            while next_t <= t + 1e-6:
                next_t += step
            sampled += 1
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])  # (H, W, 3)
            h64 = np.uint64(phash(rgb))
            if settings.near_duplicate >= 0 and hashes and _nearest(h64, hashes) <= settings.near_duplicate:
                dups += 1
                continue
            hashes.append(h64)
            frames.append([_write_frame(out, bgr), round(t, 3)])
        if grabbed == 0:
            raise _Unreadable("no frame could be decoded")
        stats = {"sampled": sampled, "near_duplicates": dups, "kept": len(frames), "frames_read": grabbed,
                 "duration_s": round(t, 3), "native_fps": round(native, 3),
                 "decode_s": round(time.perf_counter() - start, 2), "truncated": sampled >= settings.max_frames}
        return {"frames": frames, "stats": stats}
    finally:
        cap.release()


def _timestamp(cap, index: int, native: float) -> float:
    """The grabbed frame's time in seconds: the container's timestamp, else its index over the stream's rate."""
    ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    if ms > 0 or index == 0:
        return ms / 1000.0
    return index / native if native > 0 else float(index)


def _nearest(h: np.uint64, kept: list[np.uint64]) -> int:
    """The smallest Hamming distance from `h` to the kept hashes."""
    x = np.bitwise_xor(np.asarray(kept, np.uint64), h)  # (K,)
    return int(np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1).min())


def _write_frame(out: Path, bgr: np.ndarray) -> str:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise _Unreadable("a frame could not be encoded as JPEG")
    data = buf.tobytes()
    name = f"{hashlib.sha256(data).hexdigest()[:24]}.jpg"
    if not (out / name).is_file():
        atomic_write(out / name, data)
    return name


def _read_index(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION or not isinstance(doc.get("videos"), dict):
        return {}
    return doc["videos"]


__all__ = ["VIDEO_SUFFIXES", "VideoFrames", "expand_videos", "is_video"]


def as_video_frames(records: list[LabelRecord], frames, teacher_id: str) -> list[LabelRecord]:
    """Each frame's record named after its video and time (`street/cam1.mp4#t=12.500`, a media fragment), with
    `video` saying where it came from; a video that could not be read is a skipped record like a bad image."""
    out = []
    for rec in records:
        origin = frames.origin.get(Path(rec.source).name) if Path(rec.source).parent == frames.out else None
        if not origin:
            out.append(rec)
            continue
        (video, t), *also = origin
        out.append(dataclasses.replace(rec, image=f"{video}#t={t:.3f}", video={
            "file": video, "t": t, **({"also": [{"file": v, "t": tt} for v, tt in also]} if also else {})}))
    out += [LabelRecord(image=video, source=video, sha256=None, teacher=teacher_id, skipped=why)
            for video, why in frames.skipped]
    return out
