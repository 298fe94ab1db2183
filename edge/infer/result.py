"""What one frame produced (`Result`), as the runtime, the pipeline's sinks and the device check see it.

    from dkit.edge.infer.result import Result

    r = rt(rgb)                           # a dkit.edge.infer.runtime.Runtime on one frame
    r.detections.xyxy                     # detect: (N, 4) boxes in image pixels
    r.to_json()                           # the line `dkit run` prints, with the bundle's class (or prompt) names
    r.classes, r.prompts                  # those names: one tuple shared by every Result of a model, not a copy
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dkit.edge.infer.postprocess import Detections


@dataclass
class Result:
    """What one frame produced. Exactly one of detections / top / scores is set, by task.

    Timing (latency_ms == wait_ms + infer_ms; infer_ms is timed with time.perf_counter, wait_ms on the capture clock):
    latency_ms is capture -> result; wait_ms is capture (or, for files, decode) -> the start of processing: time
    spent in a camera's slot or a folder's prefetch queue and waiting for the previous round; infer_ms is
    pre-processing + model + post-processing of the batch the frame was scored in.

    `classes` and `prompts` are the names the indices refer to (the bundle's classes; an embed bundle's prompt
    texts, in `scores` order): the model's own tuples, shared by every Result it makes; empty (and None) in a
    Result made by hand.
    """

    frame_id: int
    timestamp: float  # when the frame was captured (time.time())
    latency_ms: float  # capture -> result, or pre-processing start -> result when the capture time is unknown
    task: str
    detections: Detections | None = None  # detect: boxes in image pixels
    top: list[tuple[int, float]] | None = None  # classify: (class index, probability), best first
    embedding: np.ndarray | None = None  # embed: (D,) normalised
    cosine: np.ndarray | None = None  # embed: (P,) to the bundle's prompts
    scores: np.ndarray | None = None  # embed: (P,) 0-100 through the calibration
    extra: dict[str, Any] = field(default_factory=dict)
    wait_ms: float | None = None  # capture -> start of processing (0 when the capture time is unknown)
    infer_ms: float | None = None  # pre-processing + model + post-processing of its batch
    classes: tuple[str, ...] = field(default=(), repr=False)  # class names, by class index
    prompts: tuple[str, ...] | None = field(default=None, repr=False)  # embed: prompt texts, in `scores` order

    def to_json(self, classes: Sequence[str] | None = None, prompts: Sequence[str] | None = None) -> dict[str, Any]:
        """The result as `dkit run` prints it (one JSON line per frame): frame id, time, latencies, and the
        detections, top classes or prompt scores; rounded for reading.

        Class names come from `classes`, prompt texts from `prompts`; each left out (None) is the Result's own
        (`self.classes`, `self.prompts`). A class index without a name is written as its number; an embed result's
        scores are written only when there are prompt texts.

            result.to_json()                          # the names the model gave the result
            result.to_json(rt.classes, rt.prompts)    # the same, named explicitly (the earlier form)
        """
        classes = self.classes if classes is None else classes
        prompts = self.prompts if prompts is None else prompts
        doc: dict[str, Any] = {"frame": self.frame_id, "ts": round(self.timestamp, 6),
                               "latency_ms": round(self.latency_ms, 3),
                               **({} if self.wait_ms is None else {"wait_ms": round(self.wait_ms, 3)}),
                               **({} if self.infer_ms is None else {"infer_ms": round(self.infer_ms, 3)}),
                               **self.extra}
        if self.detections is not None:
            d = self.detections
            doc["detections"] = [
                {"class": classes[int(c)] if 0 <= int(c) < len(classes) else str(int(c)), "class_id": int(c),
                 "conf": round(float(p), 4), "box": [round(float(v), 1) for v in b]}
                for b, p, c in zip(d.xyxy, d.confidence, d.class_id, strict=True)]
        if self.top is not None:
            doc["top"] = [{"class": classes[i] if i < len(classes) else str(i), "class_id": i, "prob": round(p, 4)}
                          for i, p in self.top]
        if self.scores is not None and prompts is not None:
            doc["scores"] = {t: round(float(s), 1) for t, s in zip(prompts, self.scores, strict=True)}
        return doc


def timed(results: list[Result], started: float, infer: float) -> list[Result]:
    """Set each result's wait_ms (capture -> `started`, never below 0), infer_ms (`infer`) and
    latency_ms = wait_ms + infer_ms; the same list back."""
    for r in results:
        r.wait_ms = max(0.0, (started - r.timestamp) * 1000) if r.timestamp else 0.0
        r.infer_ms = infer
        r.latency_ms = r.wait_ms + infer
    return results
