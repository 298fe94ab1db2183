"""Issue #24 finding 6 (the split must not leak), the unlabeled pool's part: no pool image falls in a held-out group.

A clip-embed kit's pool (data.unlabeled, dkit.distill.pool) is trained on; an image there that is a re-encode of a
held-out image, or a frame of a held-out frame's video, would make the held-out figures optimistic. Real ImageNet
photos, the small random ViT-S-32-alt teacher, offline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest

from dkit.core.kit import load_kit
from dkit.core.records import LabelRecord
from dkit.edge.images.phash import NEAR, distance, phash
from tests.conftest import ASSETS, link_images

KIT = """\
name: pool-split
data: {{images: {images}, val: 0.25, seed: 0, unlabeled: [{pool}]}}
ontology: {{classes: {{animal: [an animal], thing: [a thing]}}, background: [an empty background]}}
teacher: {{kind: clip, model: ViT-S-32-alt, pretrained: random, batch: 16}}
student: {{kind: clip-embed, model: mobilenetv3_small_050, imgsz: 64, epochs: 1, batch: 8}}
"""


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _hash(path: str) -> int:
    return phash(cv2.imread(path)[:, :, ::-1].copy())


def test_finding6_pool_leaves_out_near_duplicates_of_held_out_images(tmp_path, monkeypatch, capsys):
    pytest.importorskip("open_clip")
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    from dkit.core.store import ModelStore
    from dkit.distill.label import label_images
    from dkit.distill.students.clip_embed.data import pool_records

    photos = sorted((ASSETS / "data" / "imagenet-sample").glob("*.JPEG"))
    kit_images = link_images(ASSETS / "data" / "imagenet-sample", "*.JPEG", 8, tmp_path / "kit-images")
    pool = tmp_path / "pool"
    pool.mkdir()
    for p in photos[:8]:  # every kit photo re-encoded (JPEG quality 90): other bytes, the same picture
        cv2.imwrite(str(pool / f"{p.stem}_copy.jpg"), cv2.imread(str(p)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    for p in photos[8:10]:  # two photos the kit does not have
        (pool / p.name).symlink_to(p)
    (tmp_path / "kit.yaml").write_text(KIT.format(images=kit_images, pool=pool))
    kit = load_kit(tmp_path / "kit.yaml")
    run = tmp_path / "run"
    result = label_images(kit, run, store=ModelStore(offline=True), progress=False, report=False)

    labelled = _jsonl(run / "labels" / "labels.jsonl")
    val = [r for r in labelled if r["split"] == "val"]
    train = [r for r in labelled if r["split"] == "train"]
    assert (len(val), len(train)) == (2, 6)
    kept = _jsonl(run / "labels" / "pool.jsonl")
    # the re-encodes of the held-out photos are left out and counted; those of training photos stay (not held out)
    expected = sorted([f"{Path(r['image']).stem}_copy.jpg" for r in train] + [p.name for p in photos[8:10]])
    assert sorted(r["image"] for r in kept) == expected
    assert (result.counts["pool_held_out"], result.counts["pool_in_kit"], result.counts["pool"]) == (2, 0, 8)
    val_hashes = [_hash(r["source"]) for r in val]
    assert all(distance(_hash(r["source"]), h) > NEAR for r in kept for h in val_hashes)
    # each kept record carries its hash, which `dkit train` checks again against the held-out images
    assert all(int(r["phash"], 16) == _hash(r["source"]) for r in kept)

    # `dkit label` says how many it left out (the same result, printed by the command)
    import dkit.distill.label
    from dkit.cli.main import main

    monkeypatch.setattr(dkit.distill.label, "label_images", lambda *a, **k: result)
    assert main(["label", str(tmp_path / "kit.yaml"), "--out", str(run), "-q"]) == 0
    assert "2 in a held-out group (its video or a near-duplicate)" in capsys.readouterr().out

    # dkit train's check: a near-duplicate of a held-out image put back into pool.jsonl is refused there too
    leak = pool / f"{Path(val[0]['image']).stem}_copy.jpg"
    back = dict(kept[0], image=leak.name, source=str(leak), sha256="0" * 64, phash=f"{_hash(str(leak)):016x}")
    (run / "labels" / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*kept, back]))
    held_out = [LabelRecord.from_dict(r) for r in val]
    assert sorted(r.image for r in pool_records(run, held_out)) == expected


def test_finding6_pool_leaves_out_frames_of_a_held_out_frames_video(tmp_path):
    """The video rule, on records as dkit label builds them: a pool frame sampled from the same video file as a
    held-out frame is left out (whatever its bytes or hash); one from a training frame's video stays."""
    from dkit.distill.pool import Pool, leave_out_held_out

    def rec(image: str, split: str, video: str | None = None) -> LabelRecord:
        return LabelRecord(image=image, source=str(tmp_path / image), sha256=image.ljust(64, "0"), teacher="t",
                           split=split, width=64, height=64,
                           video=None if video is None else {"file": video, "t": 0.0})

    kit_root = tmp_path / "kit"
    records = [rec("a1", "val", "cam/a.mp4"), rec("b1", "train", "cam/b.mp4"), rec("c", "train")]
    pool = [rec("p-a", "pool"), rec("p-b", "pool"), rec("p-still", "pool")]
    frame_videos = {os.path.abspath(pool[0].source): frozenset({os.path.realpath(kit_root / "cam" / "a.mp4")}),
                    os.path.abspath(pool[1].source): frozenset({os.path.realpath(kit_root / "cam" / "b.mp4")})}
    kit = SimpleNamespace(data=SimpleNamespace(split_near_duplicate=-1, workers=1))  # the video rule alone
    out = leave_out_held_out(Pool(pool, {"held_out": 0}, frame_videos), records, kit, kit_root=kit_root,
                             run_dir=tmp_path / "run")
    assert [r.image for r in out.records] == ["p-b", "p-still"] and out.counts["held_out"] == 1
