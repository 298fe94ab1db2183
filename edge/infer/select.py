"""`--backend auto` and `--precision auto`: the fastest backend x precision of a bundle on this device.

    choice = choose(bundle, backend="auto", precision="auto")    # measured once, then cached per device
    choice.backend, choice.precision, choice.figures             # e.g. "openvino", "fp32", {"onnxruntime/fp32": 25.1}

Candidates are the bundle's models that passed the export's accuracy guard (an export ships no other) crossed with
the backends that import here and read their format (onnxruntime and OpenVINO the ONNX models, NCNN the NCNN
ones), keeping a reduced-precision model only on the backends the export checked it on (`verified`: OpenVINO runs
this project's int8 detector wrongly, so the export refuses it there) and, where the export ran on another CPU
architecture, only if it passes the on-device check against the export's fp32 results (dkit.edge.infer.device_check;
the agreements are kept with the choice); `backend` or `precision` set to a name keeps only that one. Each
candidate is loaded and timed on what the runtime would feed it from a synthetic 16:9 camera frame (the minimal
letterbox where the backend and the request allow it; WARMUP runs, then TIMED runs; the median counts), the
fastest wins, and the choice with its figures is logged and kept in $DKIT_HOME/choices.json (read, measured and
written under a lock) under a key made of the bundle's model hashes, the request (backend, precision, threads,
providers, letterbox) and this device (CPU model, core count, machine, library versions): another device,
library version or bundle measures again; `remeasure=True` forces it.

A GPU execution provider (TensorRT or CUDA) that really runs the fp32 model in onnxruntime is chosen without
measuring: the CPU backends are not
in its league, and TensorRT's first engine build takes minutes, which a start-up benchmark must not spend.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from dkit.edge.bundle.files import atomic_write
from dkit.edge.bundle.home import dkit_home
from dkit.edge.bundle.manifest import PRECISIONS
from dkit.edge.infer.backends import BACKENDS, available, load_backend
from dkit.edge.infer.backends.base import RuntimeConfigError, short_reason
from dkit.edge.infer.device_check import needs_check

log = logging.getLogger(__name__)
WARMUP = 2
TIMED = 5
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: str
    figures: dict[str, float] = field(default_factory=dict)  # "backend/precision" -> median ms per frame
    reason: str = "measured"  # measured | cached | only candidate | gpu provider | as asked
    checks: dict[str, float | None] = field(default_factory=dict)  # on-device check agreement (None: cannot run)

    def describe(self) -> str:
        table = ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(self.figures.items(), key=lambda kv: kv[1]))
        checked = ", ".join(f"{k} {'not checkable' if v is None else f'{v:.3f}'}" for k, v in self.checks.items())
        return (f"{self.backend}/{self.precision} ({self.reason}{': ' + table if table else ''}"
                f"{'; checked here against the export: ' + checked if checked else ''})")


def candidates(manifest, backend: str = "auto", precision: str = "auto",
               installed: list[str] | None = None) -> list[tuple[str, str]]:
    """(backend, precision) pairs this bundle and this install can run, backend registry order."""
    installed = available() if installed is None else installed
    names = [backend] if backend != "auto" else [b for b in BACKENDS if b in installed]
    precisions = [precision] if precision != "auto" else list(PRECISIONS)
    pairs = [(b, p) for b in names for p in precisions
             if (e := manifest.model(p, BACKENDS[b].format)) is not None and verified(e, b)]
    if not pairs:
        has = {fmt: manifest.precisions(fmt) for fmt in manifest.formats()}
        raise RuntimeConfigError(
            f"no {precision + ' ' if precision != 'auto' else ''}model for backend {backend} in this bundle (it has: "
            + "; ".join(f"{fmt} {', '.join(p)}" for fmt, p in has.items())
            + f"; backends installed here: {', '.join(installed) or 'none'})")
    return pairs


def verified(entry, backend: str) -> bool:
    """Whether the export checked this model on this backend and it passed the accuracy guard there.

    fp32 models always count (every backend computes the same fp32 model; the tests bound it); NCNN models were
    checked against the ONNX model when exported; a reduced-precision ONNX model counts on the backends its
    `backends` record lists without `refused` (onnxruntime only, for bundles exported before that record). On
    another CPU architecture than the export's, `choose` also runs the on-device check
    (dkit.edge.infer.device_check)."""
    if entry.precision == "fp32" or entry.format == "ncnn":
        return True
    checks = entry.info.get("backends") or {"onnxruntime": {}}
    return backend in checks and "refused" not in checks[backend]


def choose(bundle, *, backend: str = "auto", precision: str = "auto", providers: list[str] | None = None,
           threads: int = 0, remeasure: bool = False, letterbox: str | None = None) -> Choice:
    """The backend and precision to run `bundle` with here (see the module docstring). `letterbox`: the mode the
    runtime will feed (default: the bundle's); each candidate is timed at the input shape it will really get."""
    m = bundle.manifest
    if backend != "auto" and backend not in BACKENDS:
        raise RuntimeConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}, auto")
    if precision != "auto" and precision not in PRECISIONS:
        raise RuntimeConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}, auto")
    pairs = candidates(m, backend, precision)
    unchecked = [(b, p) for b, p in pairs if needs_check(m.model(p, BACKENDS[b].format))]
    if len(pairs) == 1 and not unchecked:
        return Choice(*pairs[0], reason="only candidate" if "auto" in (backend, precision) else "as asked")
    ort_fp32 = ("onnxruntime", "fp32") if ("onnxruntime", "fp32") in pairs else None
    if ort_fp32 and backend in ("auto", "onnxruntime") and _gpu_runs(bundle, providers, threads):
        return Choice(*ort_fp32, reason="gpu provider")
    mode = letterbox or m.preprocess.letterbox
    key = _cache_key(m, backend, precision, threads, providers, mode)
    with _cache_lock():
        cached = None if remeasure else _cache_read().get(key)
        if isinstance(cached, dict) and tuple(cached.get("pick", ())) in pairs:
            return Choice(*cached["pick"], figures=dict(cached.get("figures") or {}), reason="cached",
                          checks=dict(cached.get("checks") or {}))
        checks = {f"{b}/{p}": _logged_check(bundle, b, p, providers, threads) for b, p in unchecked}
        minimum = m.checks.min_agreement if m.checks else 1.0
        pairs = [(b, p) for b, p in pairs if f"{b}/{p}" not in checks
                 or checks[f"{b}/{p}"] is not None and checks[f"{b}/{p}"] >= minimum]
        if not pairs:
            raise RuntimeConfigError(
                f"{bundle.source}: every candidate failed the on-device accuracy check against the export's fp32 "
                f"results (" + ", ".join(f"{k} {'not checkable' if v is None else v}" for k, v in checks.items())
                + f"; the guard is {minimum:g}); force one with --backend and --precision to run it anyway")
        figures = {f"{b}/{p}": ms for b, p in pairs
                   if len(pairs) > 1 and (ms := measure(bundle, b, p, providers, threads, mode)) is not None}
        if len(pairs) > 1 and not figures:
            raise RuntimeConfigError(f"{bundle.source}: none of {', '.join(f'{b}/{p}' for b, p in pairs)} ran here")
        pick = min(figures, key=figures.get).split("/") if figures else list(pairs[0])
        _cache_write(key, {"pick": pick, "figures": figures, "checks": checks, "measured": time.time()})
    return Choice(pick[0], pick[1], figures, "measured" if figures else "only candidate", checks)


def checked_here(bundle, backend: str, precision: str, providers: list[str] | None = None, threads: int = 0):
    """The on-device check (dkit.edge.infer.device_check) of one model, measured once per model, reference and device
    and kept in $DKIT_HOME/choices.json: a forced model does not run the check images at every start. An
    Outcome; RuntimeConfigError when the model cannot be checked here."""
    with _cache_lock():
        return _checked(bundle, backend, precision, providers, threads)


def _checked(bundle, backend: str, precision: str, providers, threads: int):
    """checked_here with the cache lock held (choose holds it already)."""
    from dkit.edge.infer.device_check import Outcome, check

    m = bundle.manifest
    entry = m.model(precision, BACKENDS[backend].format)
    key = json.dumps({"check": f"{backend}/{precision}", "model": m.files.get(entry.file, entry.file)[:16],
                      "reference": m.files.get(m.checks.reference, "")[:16] if m.checks else None,
                      "providers": providers or [], "device": device_fingerprint()}, sort_keys=True)
    cached = _cache_read().get(key)
    if isinstance(cached, dict) and m.checks is not None:
        try:
            return Outcome(float(cached["agreement"]), m.checks.min_agreement, int(cached["images"]),
                           str(cached["metric"]))
        except (KeyError, TypeError, ValueError):
            pass  # a damaged entry: checked again
    outcome = check(bundle, backend, precision, providers=providers, threads=threads)
    _cache_write(key, {"agreement": outcome.agreement, "images": outcome.images, "metric": outcome.metric,
                       "measured": time.time()})
    return outcome


def _logged_check(bundle, backend: str, precision: str, providers, threads: int) -> float | None:
    """The check's agreement for auto, logged; None when the model cannot be checked here (then left out)."""
    try:
        outcome = _checked(bundle, backend, precision, providers, threads)
    except RuntimeConfigError as e:
        log.warning("%s/%s was checked on another CPU architecture and cannot be checked here (%s); left out",
                    backend, precision, e)
        return None
    (log.info if outcome.passed else log.warning)("%s/%s on this %s: %s%s", backend, precision, platform.machine(),
                                                  outcome.describe(), "" if outcome.passed else "; left out")
    return outcome.agreement


def measure(bundle, backend: str, precision: str, providers: list[str] | None, threads: int,
            letterbox: str = "square") -> float | None:
    """Median ms of one frame through `backend` running the `precision` model, fed what the runtime would feed it
    from a 16:9 camera frame (the minimal letterbox where the backend takes any shape); None when it fails."""
    from dataclasses import replace

    from dkit.edge.infer.preprocess import preprocess

    entry = bundle.manifest.model(precision, BACKENDS[backend].format)
    try:
        be = load_backend(backend, bundle, entry, providers=providers, threads=threads)
    except Exception as e:  # noqa: BLE001 - a candidate that does not load here is simply not a candidate
        log.warning("%s/%s does not load here (%s); left out", backend, precision, short_reason(e))
        log.debug("%s/%s, the full error:\n%s", backend, precision, e)
        return None
    spec = bundle.manifest.preprocess
    if spec.resize == "letterbox":
        spec = replace(spec, letterbox=letterbox if be.dynamic_shape else "square")
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)  # content: irrelevant
    x = preprocess(frame, spec)[0]
    try:
        for _ in range(WARMUP):
            be.run(x)
        times = []
        for _ in range(TIMED):
            t = time.perf_counter()
            be.run(x)
            times.append((time.perf_counter() - t) * 1000)
    except Exception as e:  # noqa: BLE001 - one that fails to run is left out like one that does not load
        log.warning("%s/%s failed on a frame here (%s); left out", backend, precision, short_reason(e))
        log.debug("%s/%s, the full error:\n%s", backend, precision, e)
        return None
    finally:
        be.close()
    return round(statistics.median(times), 3)


def device_fingerprint() -> dict[str, str]:
    """What makes a measurement valid for this device only: CPU, cores, machine, library versions."""
    from importlib import metadata

    libs = {}
    for dist in ("onnxruntime", "onnxruntime-gpu", "openvino", "ncnn", "numpy"):
        try:
            libs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"machine": platform.machine(), "cpu": _cpu_model(), "cpus": str(os.cpu_count()),
            **{k: v for k, v in libs.items()}}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_runs(bundle, providers: list[str] | None, threads: int) -> bool:
    """Whether onnxruntime really runs the fp32 model on a GPU provider here (a CUDA build on a host without a
    working GPU falls back to the CPU, and then the CPU backends are measured as usual)."""
    if providers:
        from dkit.edge.infer.backends.ort_backend import SHORT_NAMES

        if not any(SHORT_NAMES.get(p.lower(), p) in GPU_PROVIDERS for p in providers):
            return False
    else:
        try:
            import onnxruntime as ort
        except ImportError:
            return False
        if not any(p in GPU_PROVIDERS for p in ort.get_available_providers()):
            return False
    try:
        be = load_backend("onnxruntime", bundle, bundle.manifest.model("fp32"), providers=providers, threads=threads)
    except Exception as e:  # noqa: BLE001 - then it is not a GPU candidate
        log.warning("onnxruntime with a GPU provider does not load here (%s: %s)", type(e).__name__, e)
        return False
    try:
        return be.device in GPU_PROVIDERS
    finally:
        be.close()


def _cache_key(m, backend: str, precision: str, threads: int, providers: list[str] | None,
               letterbox: str = "square") -> str:
    models = sorted(m.files.get(e.file, e.file)[:16] for r, e in m.models.items() if r.startswith("student"))
    if m.checks is not None:  # another reference or guard checks again
        models.append(f"checks:{m.files.get(m.checks.reference, '')[:16]}:{m.checks.min_agreement:g}")
    request = {"backend": backend, "precision": precision, "threads": threads, "providers": providers or [],
               "letterbox": letterbox}
    return json.dumps({"models": models, "request": request, "device": device_fingerprint()}, sort_keys=True)


def cache_path():
    return dkit_home() / "choices.json"


def _cache_read() -> dict:
    try:
        doc = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


@contextmanager
def _cache_lock():
    """An exclusive lock on $DKIT_HOME/choices.json.lock while one process reads, measures and writes: two
    services starting together neither drop each other's entries nor time each other's load."""
    path = cache_path().with_name("choices.json.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")  # noqa: SIM115 - held for the duration of the with block
    except OSError:
        yield  # a read-only home: measure without the lock (nothing is kept either)
        return
    try:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield
    finally:
        f.close()  # releases the lock


def _cache_write(key: str, value: dict) -> None:
    """Add one entry (atomic_write: a temp file of its own, then rename; owner-only, 0600, as the cache always
    was; a device that cannot write there measures again next time)."""
    path = cache_path()
    doc = _cache_read()
    doc[key] = value
    try:
        atomic_write(path, json.dumps(doc, indent=1), mode=0o600)
    except OSError as e:
        log.warning("could not keep the backend choice in %s (%s); it is measured again next start", path, e)


__all__ = ["Choice", "candidates", "checked_here", "choose", "device_fingerprint", "measure"]
