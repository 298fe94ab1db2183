"""Issue #26, sources and sinks: sinks are plain callables isolated from each other (one raising stops neither the
others nor the run; logged once, rate-limited, counted), and a Result carries its class and prompt names, so a sink
needs no runtime."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from dkit.edge.infer.result import Result
from dkit.edge.infer.runtime import Runtime, RuntimeConfigError
from dkit.edge.stream import pipeline as pipeline_module
from dkit.edge.stream.pipeline import JsonlSink, Pipeline, annotate
from dkit.edge.stream.sources import open_source
from tests.conftest import ASSETS

COCO = ASSETS / "data" / "coco128" / "images" / "train2017"
LOGGER = "dkit.edge.stream.pipeline"


def small_folder(tmp_path: Path, n: int = 4) -> Path:
    folder = tmp_path / "shots"
    folder.mkdir()
    for p in sorted(COCO.glob("*.jpg"))[:n]:
        shutil.copy(p, folder / p.name)
    return folder


def sink_errors_logged(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("sink ")]


def test_a_raising_sink_stops_neither_the_other_sinks_nor_the_pipeline(detect_bundle, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(pipeline_module, "SINK_LOG_S", 3600.0)  # once, however slow the machine
    seen: list[int] = []

    def broken(frame, result):
        raise ValueError(f"boom on {frame.id}")

    out = io.StringIO()
    with caplog.at_level(logging.ERROR, logger=LOGGER), Runtime.load(detect_bundle) as rt:
        pipeline = Pipeline(rt, [open_source(small_folder(tmp_path))],
                            [broken, lambda frame, result: seen.append(frame.id), JsonlSink(out)])
        stats = pipeline.run()
        classes = rt.classes
    assert stats["frames"] == 4 and seen == [0, 1, 2, 3]  # the sink after the broken one got every frame
    assert stats["sink_errors"] == 4 and list(pipeline.sink_errors.values()) == [4]
    assert next(iter(pipeline.sink_errors)).endswith("broken")
    logged = sink_errors_logged(caplog)
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with the traceback
    assert "broken failed on frame 0 of" in logged[0].getMessage()
    assert "ValueError: boom on 0" in logged[0].getMessage()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]  # JsonlSink with no runtime: the Result's names
    assert [d["frame"] for d in lines] == [0, 1, 2, 3]
    assert any(d["detections"] for d in lines)
    assert all(d["class"] == classes[d["class_id"]] for doc in lines for d in doc["detections"])


class Instant:
    """The Runtime interface the pipeline uses, without a model: a classify result per frame, carrying no names."""

    provider, classes, prompts = "test", ["cat", "dog"], None

    def batch(self, frames, ids, stamps):
        return [Result(i, t, 1.0, "classify", top=[(1, 0.9)]) for i, t in zip(ids, stamps, strict=True)]


def test_a_failing_sink_is_logged_again_with_its_count_once_the_interval_has_passed(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(pipeline_module, "SINK_LOG_S", 0.0)  # every time: the count shows in each later line

    def make_broken():
        def broken(frame, result):
            raise KeyError("no such thing")

        return broken

    class Closing:  # the earlier protocol: write() and close(); its close() raising is isolated too
        def __init__(self):
            self.frames, self.closed = 0, False

        def write(self, frame, result):
            self.frames += 1

        def close(self):
            self.closed = True
            raise OSError("disk gone")

    old_style = Closing()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        pipeline = Pipeline(Instant(), [open_source(small_folder(tmp_path, 3))],
                            [make_broken(), make_broken(), old_style])
        stats = pipeline.run()
    assert stats["frames"] == 3 and old_style.frames == 3 and old_style.closed
    assert stats["sink_errors"] == 7  # 3 + 3 frames, 1 close
    names = list(pipeline.sink_errors)  # two functions of one name: the second is told apart
    assert names[0].endswith("broken") and names[1] == f"{names[0]} #2" and names[2] == "Closing"
    assert list(pipeline.sink_errors.values()) == [3, 3, 1]
    messages = [r.getMessage() for r in sink_errors_logged(caplog)]
    assert len(messages) == 7 and "(3 errors so far)" in messages[-2]
    assert "Closing failed on close: OSError: disk gone" in messages[-1]


@pytest.mark.parametrize("error, raised", [(RuntimeConfigError("--save x.mp4: OpenCV cannot write"), True),
                                           (BrokenPipeError(), False)])
def test_a_sink_that_cannot_work_still_ends_the_run(tmp_path, error, raised):
    """Not isolated: RuntimeConfigError (the sink can never work here) is raised, BrokenPipeError (the output pipe
    was closed) stops the run quietly, as before sinks were isolated."""
    seen: list[int] = []

    def failing(frame, result):
        raise error

    pipeline = Pipeline(Instant(), [open_source(small_folder(tmp_path, 3))],
                        [lambda frame, result: seen.append(frame.id), failing])
    if raised:
        with pytest.raises(RuntimeConfigError, match="cannot write"):
            pipeline.run()
    else:
        assert pipeline.run()["frames"] == 0
    assert seen == [0] and all(source.closed for source in pipeline.sources)


def test_a_result_carries_its_models_names_as_one_shared_tuple(detect_bundle, tmp_path):
    frames = [np.zeros((64, 64, 3), np.uint8) + 114, np.zeros((48, 80, 3), np.uint8)]
    with Runtime.load(detect_bundle) as rt:
        results = rt.batch(frames) + [rt(frames[0])]
    assert results[0].classes == tuple(rt.classes) and results[0].prompts is None
    assert all(r.classes is results[0].classes for r in results)  # a reference per Result, never a copy
    assert results[0].to_json() == results[0].to_json(rt.classes, rt.prompts)  # the names may still be given
    assert "classes" not in repr(results[0])


def test_names_come_from_the_result_and_from_a_runtime_only_for_a_result_without_any():
    named = Result(0, 0.0, 1.0, "classify", top=[(1, 0.9)], classes=("cat", "dog"))
    bare = Result(0, 0.0, 1.0, "classify", top=[(1, 0.9)])
    assert named.to_json()["top"][0]["class"] == "dog"
    assert named.to_json(["a", "b"])["top"][0]["class"] == "b"  # given names win
    assert bare.to_json()["top"][0]["class"] == "1"  # no names: the index
    out = io.StringIO()
    JsonlSink(out, Instant())(pipeline_module.Frame(0, 0.0, np.zeros((8, 8, 3), np.uint8), "x"), bare)
    assert json.loads(out.getvalue())["top"][0]["class"] == "dog"  # a hand-made Result: the runtime's names
    embed = Result(0, 0.0, 1.0, "embed", scores=np.array([10.0, 90.0]), prompts=("a cat", "a dog"))
    assert embed.to_json()["scores"] == {"a cat": 10.0, "a dog": 90.0}
    assert annotate(np.zeros((32, 32, 3), np.uint8), embed).shape == (32, 32, 3)


def test_a_run_whose_own_output_cannot_be_written_fails_as_it_did(detect_bundle, tmp_path):
    """The built-in sinks' OSErrors are not isolated (review of #26): `dkit run --jsonl` into a full device, or
    `--save` under a path that is a file, exits 1 with the OSError, as before sinks were isolated; a user's own
    callable beside them stays isolated (the test above)."""
    import subprocess
    import sys

    from tests.conftest import ROOT, run_dkit

    shots = small_folder(tmp_path, 2)
    with open("/dev/full", "w") as device_full:
        full = subprocess.run([sys.executable, "-m", "dkit", "run", str(detect_bundle), "--source", str(shots),
                               "--jsonl"], cwd=ROOT, stdout=device_full, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    assert full.returncode == 1 and "No space left on device" in full.stderr
    (tmp_path / "afile").write_text("not a folder")
    saved = run_dkit("run", str(detect_bundle), "--source", str(shots), "--save", str(tmp_path / "afile" / "o.mp4"))
    assert saved.returncode == 1 and ("FileExistsError" in saved.stderr or "Not a directory" in saved.stderr)
