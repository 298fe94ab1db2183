"""`dkit bench runtime --matrix`: every backend x precision x letterbox of a bundle on the same frames, in one run.

    from dkit.devtools.bench_matrix import bench_matrix, format_table

    rows = bench_matrix("runs/coco128/bundle", frames, repeat=3)     # frames: (H, W, 3) uint8 RGB
    print(format_table(rows))

For each configuration the bundle and this install can run (dkit.edge.infer.select.candidates; letterbox square and,
for detectors on a backend that takes any input size, minimal): a Runtime is built and warmed up, then rounds
go round-robin over the configurations, `repeat` times, so neighbours on a shared machine hit all of them alike;
each keeps its best round. Per configuration:
- fps (the whole runtime per frame), p50/p99 ms over every round, and fps_bare (the backend's bare run loop on
  the same pre-processed inputs: the limit);
- agreement with the fp32 onnxruntime result of the same letterbox on the same frames (dkit.edge.infer.agreement):
  detectors the share of boxes matched one to one (same class, IoU >= 0.5, over the larger count), classifiers top-1
  agreement, embedding models mean cosine;
- `spread`: the worst round's fps over the best; a row below 0.8 says the machine was noisy in that run.
An optional `reference` row is Ultralytics' `YOLO(onnx).predict` with its defaults on the fp32 ONNX model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from dkit.edge.bundle import open_bundle
from dkit.edge.infer.agreement import agreement
from dkit.edge.infer.runtime import Result, Runtime
from dkit.edge.infer.select import candidates

log = logging.getLogger(__name__)
NOISY = 0.8


@dataclass
class Row:
    backend: str
    precision: str
    letterbox: str
    runtime: Runtime | None = None
    rounds: list[float] = field(default_factory=list)  # fps per round
    bare: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # ms per frame, every round
    results: list[Result] = field(default_factory=list)  # the first round's

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.precision}/{self.letterbox}"


def configurations(bundle_path, *, backends: list[str] | None = None) -> list[Row]:
    from dkit.edge.infer.backends import BACKENDS
    from dkit.edge.infer.backends.base import RuntimeConfigError

    unknown = [b for b in backends or () if b not in BACKENDS]
    if unknown:
        raise RuntimeConfigError(f"--backends {', '.join(unknown)}: not a backend (known: {', '.join(BACKENDS)})")
    with open_bundle(bundle_path) as b:
        m = b.manifest
        pairs = [p for p in candidates(m) if backends is None or p[0] in backends]
        detect = m.task == "detect"
    return [Row(be, p, lb) for be, p in pairs for lb in (("square", "minimal") if detect else ("square",))]


def bench_matrix(bundle_path, frames: list[np.ndarray], *, repeat: int = 3, threads: int | None = None,
                 backends: list[str] | None = None, reference=None) -> list[dict]:
    rows: list[Row] = []
    wanted = configurations(bundle_path, backends=backends)
    if not wanted:
        raise ValueError(f"{bundle_path}: no configuration to measure with --backends {','.join(backends or [])}")
    try:
        for row in wanted:
            try:
                row.runtime = Runtime.load(bundle_path, backend=row.backend, precision=row.precision,
                                           letterbox=row.letterbox, threads=threads)
            except Exception as e:  # noqa: BLE001 - one configuration that does not load is left out, said so
                log.warning("bench: %s does not load here (%s: %s); left out", row.name, type(e).__name__, e)
                continue
            if row.runtime.spec.resize == "letterbox" and row.runtime.spec.letterbox != row.letterbox:
                row.runtime.close()  # a backend of one input shape has no minimal row
                continue
            rows.append(row)
            log.info("bench: %s on %s", row.name, row.runtime.provider)
        inputs = {r.name: [r.runtime.preprocess(rgb)[0] for rgb in frames] for r in rows}
        for k in range(repeat):
            for row in rows:
                _round(row, frames, inputs[row.name], keep=k == 0)
            if reference is not None:
                reference.round(frames)
        base = {r.letterbox: r for r in reversed(rows) if r.precision == "fp32"}  # onnxruntime first in the list
        base |= {r.letterbox: r for r in reversed(rows) if (r.backend, r.precision) == ("onnxruntime", "fp32")}
        out = [_summary(r, base.get(r.letterbox, rows[0])) for r in rows]
    finally:
        for row in rows:
            if row.runtime is not None:
                row.runtime.close()
    if reference is not None:
        out.append(reference.summary())
    return out


def _round(row: Row, frames: list[np.ndarray], inputs: list[np.ndarray], *, keep: bool) -> None:
    rt = row.runtime
    start = time.perf_counter()
    for i, rgb in enumerate(frames):
        t = time.perf_counter()
        result = rt(rgb, frame_id=i)
        row.latencies.append((time.perf_counter() - t) * 1000)
        if keep:
            row.results.append(result)
    row.rounds.append(len(frames) / (time.perf_counter() - start))
    start = time.perf_counter()
    for x in inputs:
        rt.infer(x)
    row.bare.append(len(frames) / (time.perf_counter() - start))


def _summary(row: Row, base: Row) -> dict:
    lat = np.asarray(row.latencies)
    return {"backend": row.backend, "precision": row.precision, "letterbox": row.letterbox,
            "device": row.runtime.provider, "fps": round(max(row.rounds), 2), "fps_bare": round(max(row.bare), 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "agreement": round(agreement(base.results, row.results), 4),
            "spread": round(min(row.rounds) / max(row.rounds), 3),
            "noisy": min(row.rounds) / max(row.rounds) < NOISY}


def wide_frames(frames: list[np.ndarray], aspect: float = 16 / 9) -> list[np.ndarray]:
    """Centre crops of real photos to a 16:9 (camera) frame: the same content, the shape a camera delivers."""
    out = []
    for rgb in frames:
        h, w = rgb.shape[:2]
        if w / h >= aspect:
            cw = int(round(h * aspect))
            out.append(np.ascontiguousarray(rgb[:, (w - cw) // 2:(w - cw) // 2 + cw]))
        else:
            ch = int(round(w / aspect))
            out.append(np.ascontiguousarray(rgb[(h - ch) // 2:(h - ch) // 2 + ch]))
    return out


def format_table(rows: list[dict], title: str = "") -> str:
    head = "| backend | precision | letterbox | fps | fps bare | p50 ms | p99 ms | agreement | spread |"
    lines = ([f"{title}"] if title else []) + [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['letterbox']} | {r['fps']:.1f} | "
                     f"{_num(r.get('fps_bare'))} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['agreement'] if r.get('agreement') is not None else '-'} | "
                     f"{r['spread']}{' (noisy)' if r.get('noisy') else ''} |")
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.1f}"
