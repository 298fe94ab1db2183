"""Video footage as labeling input (dkit.distill.video): sampled, near-duplicates skipped, each frame written
once, its video and time in labels.jsonl; a clip written with OpenCV from real COCO images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dkit.distill import video
from tests.conftest import ASSETS

COCO = ASSETS / "data/coco128/images/train2017"
SIZE = (320, 240)  # the clip's frame size (w, h)


def write_clip(path: Path, images: list[Path], *, seconds_each: float = 2.0, fps: int = 10) -> int:
    """An MJPEG .avi (or mp4v .mp4) of each image held for `seconds_each`, shifted by a pixel or two every frame
    (a camera's jitter), as a real camera's footage of a few scenes. Returns the frame count."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    out = cv2.VideoWriter(str(path), fourcc, fps, SIZE)
    assert out.isOpened(), f"this OpenCV cannot write {path.suffix}"
    n = 0
    for image in images:
        bgr = cv2.resize(cv2.imread(str(image)), SIZE, interpolation=cv2.INTER_AREA)
        for k in range(int(seconds_each * fps)):
            dx, dy = k % 3, (k // 3) % 2
            out.write(cv2.warpAffine(bgr, np.float32([[1, 0, dx], [0, 1, dy]]), SIZE, borderMode=cv2.BORDER_REPLICATE))
            n += 1
    out.release()
    return n


def settings(**kw):
    from dkit.core.kit import Video

    return Video(**kw)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("footage")
    write_clip(folder / "cam1.avi", sorted(COCO.glob("*.jpg"))[:5])
    return folder / "cam1.avi"


def test_frames_are_sampled_deduplicated_and_written_once(clip, tmp_path):
    out = tmp_path / "frames"
    got = video.expand_videos([clip], clip.parent, out, settings(fps=2.0))
    (stats,) = got.stats
    # 5 scenes x 2 s at 2 fps: 20 sampled; the jittered repeats of a scene are near-duplicates
    assert (stats["sampled"], stats["frames_read"]) == (20, 100)
    assert stats["kept"] == len(got.images) == 5 and stats["near_duplicates"] == 15
    times = [t for name in (p.name for p in got.images) for _, t in got.origin[name]]
    assert times == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0], abs=0.11)  # the first frame of each scene
    for p in got.images:  # named by content
        assert p.name.startswith(__import__("hashlib").sha256(p.read_bytes()).hexdigest()[:24])
    every = video.expand_videos([clip], clip.parent, tmp_path / "all", settings(fps=2.0, near_duplicate=-1))
    assert every.stats[0]["kept"] == 20 and every.stats[0]["near_duplicates"] == 0


def test_a_rerun_decodes_nothing_and_a_copy_adds_no_frame(clip, tmp_path, monkeypatch):
    out, footage = tmp_path / "frames", tmp_path / "in"
    footage.mkdir()
    shutil.copy(clip, footage / "cam1.avi")
    first = video.expand_videos([footage / "cam1.avi"], footage, out, settings(fps=2.0))
    shutil.copy(clip, footage / "renamed.avi")
    monkeypatch.setattr(video, "_sample", lambda *a: pytest.fail("decoded again"))  # known by content + settings
    again = video.expand_videos([footage / "cam1.avi", footage / "renamed.avi"], footage, out, settings(fps=2.0))
    assert [p.name for p in again.images] == [p.name for p in first.images]  # the copy's frames: the same files
    assert [v for v, _ in again.origin[first.images[0].name]] == ["cam1.avi", "renamed.avi"]
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in first.images] + ["index.json"])
    with pytest.raises(pytest.fail.Exception):  # other settings: sampled again
        video.expand_videos([footage / "cam1.avi"], footage, out, settings(fps=1.0))


def test_bad_and_oversized_videos_are_skipped_with_a_reason(clip, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video at all\n" * 100)
    shutil.copy(clip, tmp_path / "big.avi")
    got = video.expand_videos([fake, tmp_path / "big.avi"], tmp_path, tmp_path / "f1",
                              settings(max_pixels=320 * 240 - 1))
    reasons = dict(got.skipped)
    assert set(reasons) == {"notes.mp4", "big.avi"} and not got.images and not got.stats
    assert "not a video" in reasons["notes.mp4"] or "no frame" in reasons["notes.mp4"]
    assert reasons["big.avi"] == "320x240 frames are over data.video.max_pixels (76,799)"
    capped = video.expand_videos([clip], clip.parent, tmp_path / "f2", settings(fps=10.0, max_frames=7,
                                                                                 near_duplicate=-1))
    assert capped.stats[0]["sampled"] == 7 and capped.stats[0]["truncated"]


def test_dkit_label_takes_a_video_and_names_its_frames(clip, tmp_path):
    """The YOLO teacher on a folder with the clip and two photos: frames labelled as `cam1.avi#t=...`."""
    pytest.importorskip("ultralytics")
    from dkit.core.kit import load_kit
    from dkit.distill.label import label_images
    from tests.conftest import RECIPES, yolo_store

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(clip, data / "cam1.avi")
    for p in sorted(COCO.glob("*.jpg"))[10:12]:
        (data / p.name).symlink_to(p)
    kit = load_kit(RECIPES / "coco128" / "kit.yaml", data=data,
                   overrides=["data.val=2", "teacher.augment=false", "data.video.fps=2.0"])
    result = label_images(kit, tmp_path / "run", store=yolo_store(ASSETS, tmp_path / "store"), progress=False,
                          report=True)
    c = result.counts
    assert (c["videos"], c["frames_sampled"], c["near_duplicates"], c["frames_kept"]) == (1, 20, 15, 5)
    assert c["files"] == 7 and c["skipped"] == 0  # 2 photos + 5 frames
    lines = [json.loads(x) for x in (result.labels_dir / "labels.jsonl").read_text().splitlines()]
    frames = [x for x in lines if "video" in x]
    assert len(frames) == 5 and all(x["image"] == f"cam1.avi#t={x['video']['t']:.3f}" for x in frames)
    assert all(x["video"]["file"] == "cam1.avi" for x in frames) and not any("video" in x for x in lines
                                                                              if x not in frames)
    placed = [x["dataset_image"] for x in frames if x["dataset_image"]]
    assert placed and all(Path(p).name.startswith("cam1_t") for p in placed)
    assert sum(len(x["labels"]) for x in frames) > 0  # the teacher found objects in the COCO scenes
    assert "cam1.avi#t=" in (result.labels_dir / "report.html").read_text()
    again = label_images(kit, tmp_path / "run", store=yolo_store(ASSETS, tmp_path / "store2"), progress=False,
                         report=False)
    assert again.counts["cached"] == 7 and again.counts["inferred"] == 0  # frames found again by content
