"""The run folder, the label record and the worker rule: the contracts every stage reads through."""

from __future__ import annotations

import json
import os

import pytest

from dkit.core.errors import UsageError
from dkit.core.records import LabelRecord, RecordError
from dkit.core.run import RunDir
from dkit.core.workers import decode_workers

LINE = {"image": "a/cat.jpg", "source": "/data/a/cat.jpg", "sha256": "ab" * 32, "split": "val",
        "dataset_image": "images/val/cat.jpg", "width": 640, "height": 480, "normalised": None,
        "labels": [{"class": "cat", "class_id": 15, "confidence": 0.9, "box": [1.0, 2.0, 30.0, 40.0]}],
        "topk": [{"class": "cat", "score": 0.9}], "similarity": None, "abstained": False, "abstain_reason": None,
        "skipped": None, "teacher": "yolo:yolov8n.pt@640+tta"}


def test_a_label_line_round_trips_and_keeps_unknown_keys():
    rec = LabelRecord.from_dict(dict(LINE, camera="cam1"))
    assert rec.split == "val" and rec.labels[0]["class"] == "cat" and rec.is_usable
    assert rec.to_dict() == dict(LINE, camera="cam1")  # a key a later version adds survives a rewrite
    frame = LabelRecord.from_dict(dict(LINE, video={"file": "clip.mp4", "t": 12.5}))
    assert frame.video["t"] == 12.5 and frame.to_dict() == dict(LINE, video={"file": "clip.mp4", "t": 12.5})


@pytest.mark.parametrize(("doc", "message"), [
    ({k: v for k, v in LINE.items() if k != "sha256"}, "labels.jsonl:3: sha256: missing required key"),
    (dict(LINE, split="test"), "labels.jsonl:3: split: expected train, val, pool or null, got 'test'"),
    (dict(LINE, video="clip.mp4"), "labels.jsonl:3: video: expected {file: the video, t: seconds} or null"),
    ([1, 2], "labels.jsonl:3: expected a JSON object"),
])
def test_a_bad_label_line_names_the_line_and_key(doc, message):
    with pytest.raises(RecordError, match=message):
        LabelRecord.from_dict(doc, "labels.jsonl:3")


def test_the_run_folder_names_every_stage_output(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.labels_jsonl == tmp_path / "run" / "labels" / "labels.jsonl"
    assert run.cache_db == tmp_path / "run" / "cache" / "teacher.sqlite"
    assert run.student_weights == tmp_path / "run" / "student" / "weights" / "best.pt"
    assert (run.eval_json.name, run.bundle.name, run.archive.name) == ("eval.json", "bundle", "bundle.tar.gz")
    assert os.fspath(run) == str(tmp_path / "run") and run / "x" == tmp_path / "run" / "x"
    with pytest.raises(UsageError, match=r"no labels in .*labels: run `dkit label` first"):
        run.records()
    with pytest.raises(UsageError, match=r"no trained student in .*student: run `dkit train` first"):
        run.trained_weights()


def test_records_come_back_typed_in_file_order(tmp_path):
    run = RunDir(tmp_path)
    run.labels.mkdir()
    skipped = dict(LINE, image="b.jpg", split=None, skipped="truncated")
    run.labels_jsonl.write_text("".join(json.dumps(d) + "\n" for d in (LINE, skipped, dict(LINE, split="train"))))
    assert [r.split for r in run.records()] == ["val", None, "train"]
    assert [r.split for r in run.usable_records()] == ["val", "train"]
    run.labels_jsonl.write_text(json.dumps(LINE) + "\n" + json.dumps({"image": "x"}) + "\n")
    with pytest.raises(RecordError, match=r"labels.jsonl:2: source: missing required key"):
        run.records()


def test_one_worker_rule(monkeypatch):
    assert decode_workers(3) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert decode_workers(0) == 7
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert decode_workers(0) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert decode_workers() == 1
