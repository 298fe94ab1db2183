"""`dkit doctor`: what this device is, whether the edge runtime can run here, and what to fix when it cannot.

    report = diagnose()                                   # platform, Python, packages, providers, cameras, disk, memory
    report = diagnose("runs/coco128/bundle")              # ... and the bundle: verifies? provider, precision, fps
    print(report.table()); report.to_json(); report.ok    # ok: no check failed (warnings allowed)

Every check is a `Check(name, status, result, advice, data)`; status is "ok", "warn" (works, but something to
look at) or "fail" (something `dkit run` / `dkit serve` needs is broken). A check that itself crashes is a warning
naming the error, never a traceback: the doctor is what a user runs when things are broken.

Execution providers are tried for real, not only listed: each one onnxruntime offers gets a tiny model (an
`Add`, its protobuf written here by hand: the `onnx` package is not part of the base install) in a session of its
own, and counts as working only when the session really runs on it (onnxruntime silently falls back to the CPU
when, say, CUDA's libraries do not load). Cameras are the /dev/video* nodes that OpenCV opens and reads a frame
from, each within a time bound. A bundle is verified (dkit.edge.bundle), loaded with the provider and precision
`dkit run` would use, and timed on synthetic frames of its input size (pre-processing, model and post-processing
per frame; real frames are not needed to measure speed).

Only the standard library here at import time; numpy, onnxruntime and OpenCV are imported by the checks that
need them, so a missing or broken one is reported instead of stopping the doctor.
"""

from __future__ import annotations

import glob
import importlib
import importlib.metadata as metadata
import json
import os
import platform
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dkit.edge.infer.extras import install_hint

OK, WARN, FAIL = "ok", "warn", "fail"
GiB = 1 << 30
MiB = 1 << 20
LOW_DISK = 1 * GiB  # a kiosk keeps up to 512 MB of thumbnails; a TensorRT engine cache is a few hundred MB
LOW_MEMORY = 512 * MiB
# The base install's requirements when the installed distill-kit's metadata is not readable (a source checkout);
# mirrors pyproject.toml's `dependencies`.
BASE_REQUIREMENTS = {"numpy": "1.24", "onnxruntime": "1.17", "opencv-python-headless": "4.8", "fastapi": "0.110",
                     "uvicorn": "0.29", "python-multipart": "0.0.9", "pyyaml": "6.0", "pydantic": "2.6", "tqdm": "4.66",
                     "ftfy": "6.1", "regex": "2023.6", "confusable-homoglyphs": "3.3"}
PYTHON_REQUIRED = ">=3.10"
ORT_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-qnn",
             "onnxruntime-silicon")
CV_DISTS = ("opencv-python-headless", "opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")
WEB_DISTS = ("fastapi", "uvicorn", "python-multipart")
NOT_COMPUTE = ("AzureExecutionProvider",)  # offered by every onnxruntime wheel; runs nothing locally
JETSON_INDEX = "https://pypi.jetson-ai-lab.io"
JETPACK = {"R32": "4", "R34": "5", "R35": "5", "R36": "6", "R38": "7"}


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    result: str  # one line: what was found
    advice: list[str] = field(default_factory=list)  # what to do about it, one sentence each
    data: dict[str, Any] = field(default_factory=dict)  # the figures, for --json


@dataclass
class Report:
    checks: list[Check]
    started: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return all(c.status != FAIL for c in self.checks)

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.checks)

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.count(FAIL), "warnings": self.count(WARN),
                "seconds": round(self.seconds, 2), "checks": [asdict(c) for c in self.checks]}

    def table(self, width: int = 110) -> str:
        import textwrap

        name_w = max(len(c.name) for c in self.checks)
        indent = " " * (name_w + 10)
        lines = [f"{'CHECK'.ljust(name_w)}  STATUS  RESULT"]
        for c in self.checks:
            mark = {OK: "ok", WARN: "WARN", FAIL: "FAIL"}[c.status]
            wrapped = textwrap.wrap(c.result, width=max(40, width - len(indent)), break_on_hyphens=False,
                                    break_long_words=False) or [""]
            lines.append(f"{c.name.ljust(name_w)}  {mark.ljust(6)}  {wrapped[0]}")
            lines += [indent + more for more in wrapped[1:]]
        advice = [(c, a) for c in self.checks for a in c.advice]
        summary = (f"{self.count(FAIL)} failed, {self.count(WARN)} warning(s)" if not self.ok or self.count(WARN)
                   else "everything checked is fine")
        lines += ["", f"{summary} ({self.seconds:.1f} s)"]
        if advice:
            lines += ["", "advice:"]
            for c, a in advice:
                lines += textwrap.wrap(f"[{c.name}] {a}", width=width, initial_indent="  - ", subsequent_indent="    ",
                                       break_on_hyphens=False, break_long_words=False)
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the whole run


def diagnose(bundle: str | os.PathLike | None = None, *, cameras: bool = True, camera_timeout: float = 3.0,
             precision: str = "auto", providers: list[str] | None = None, threads: int | None = None,
             backend: str = "auto", frames: int = 20, warmup: int = 3, max_seconds: float = 15.0,
             root: str | os.PathLike = "/", cwd: str | os.PathLike | None = None) -> Report:
    """Every check, in order. `root` is where /proc, /sys, /etc and /dev are read (tests point it at a fake tree);
    `cwd` is the folder whose free disk is reported (default: the current one)."""
    started, start = time.time(), time.perf_counter()
    frames, warmup = max(1, frames), max(0, warmup)
    root = Path(root)
    board = board_info(root)
    checks: list[Check] = []
    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("platform", lambda: check_platform(board)),
        ("python", check_python),
        ("packages", check_packages),
        ("providers", lambda: check_providers(board)),
        ("cameras", lambda: check_cameras(video_devices(root), timeout=camera_timeout, board=board) if cameras
         else Check("cameras", OK, "not checked (--no-cameras)")),
        ("disk", lambda: check_disk(Path(cwd) if cwd is not None else Path.cwd())),
        ("memory", lambda: check_memory(root)),
    ]
    if bundle is not None:
        steps.append(("bundle", lambda: check_bundle(bundle, precision=precision, providers=providers,
                                                     threads=threads, backend=backend, frames=frames, warmup=warmup,
                                                     max_seconds=max_seconds, board=board)))
    for name, step in steps:
        try:
            got = step()
        except Exception as e:  # the doctor reports; it does not crash
            got = Check(name, WARN, f"could not check: {type(e).__name__}: {e}")
        checks += got if isinstance(got, list) else [got]
    return Report(checks, started=started, seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ platform


@dataclass
class Board:
    system: str  # platform.system()
    machine: str  # platform.machine(): x86_64, aarch64, armv7l, ...
    model: str | None  # the device tree's model string (Raspberry Pi, Jetson), when there is one
    os_name: str | None  # /etc/os-release PRETTY_NAME
    l4t: str | None  # Jetson: "R36.4.3" from /etc/nv_tegra_release
    cuda: str | None  # /usr/local/cuda/version.json's CUDA version (Jetson or desktop toolkit)
    nvidia_gpu: bool  # a desktop NVIDIA driver (/proc/driver/nvidia/version)

    @property
    def jetson(self) -> bool:
        return self.l4t is not None or "jetson" in (self.model or "").lower()

    @property
    def jetpack(self) -> str | None:
        return JETPACK.get(self.l4t.split(".")[0]) if self.l4t else None

    @property
    def raspberry_pi(self) -> bool:
        return (self.model or "").startswith("Raspberry Pi")


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def board_info(root: Path = Path("/")) -> Board:
    model = _read(root / "proc/device-tree/model") or _read(root / "sys/firmware/devicetree/base/model")
    os_name = None
    for line in (_read(root / "etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip().strip('"')
    l4t = None
    tegra = _read(root / "etc/nv_tegra_release")  # "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, ..."
    if tegra:
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", tegra)
        l4t = f"R{m.group(1)}.{m.group(2)}" if m else "R?"
    cuda = None
    try:
        cuda = json.loads(_read(root / "usr/local/cuda/version.json") or "{}").get("cuda", {}).get("version")
    except (ValueError, AttributeError):
        cuda = None
    nvidia = (root / "proc/driver/nvidia/version").exists()
    return Board(platform.system(), platform.machine(), model, os_name, l4t, cuda, nvidia)


def check_platform(board: Board) -> Check:
    kind = ("Jetson" + (f", L4T {board.l4t} (JetPack {board.jetpack or '?'})" if board.l4t else "")
            if board.jetson else "Raspberry Pi" if board.raspberry_pi else None)
    where = board.model or "no board model (not a Raspberry Pi or Jetson)"
    result = (f"{board.system} {platform.release()} {board.machine}; {board.os_name or 'unknown OS'}; board: {where}"
              + (f" [{kind}]" if kind and kind not in where else ""))
    advice = []
    status = OK
    if board.machine in ("armv7l", "armv6l", "armhf"):
        status = WARN
        advice.append("a 32-bit ARM OS: onnxruntime publishes no wheels for it; install the 64-bit (arm64) "
                      "Raspberry Pi OS Bookworm (or another aarch64 OS) and reinstall dkit")
    if board.jetson and board.jetpack == "4":
        status = WARN
        advice.append("JetPack 4 ships Python 3.6 and CUDA 10.2, too old for dkit; flash JetPack 6 (or 5) first")
    data = asdict(board) | {"release": platform.release(), "jetson": board.jetson, "jetpack": board.jetpack,
                            "raspberry_pi": board.raspberry_pi}
    return Check("platform", status, result, advice, data)


# ------------------------------------------------------------------------------------------ Python and packages


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _requirements() -> tuple[str, dict[str, str]]:
    """(Requires-Python, {dist: minimum version}) of the installed distill-kit, else the built-in copy."""
    try:
        meta = metadata.metadata("distill-kit")
        reqs = metadata.requires("distill-kit") or []
    except metadata.PackageNotFoundError:
        return PYTHON_REQUIRED, dict(BASE_REQUIREMENTS)
    found = {}
    for req in reqs:
        if ";" in req:  # an extra's requirement (or a platform marker): not part of the base install
            continue
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(?:>=\s*([\w.]+))?", req)
        if m:
            found[m.group(1).lower().replace("_", "-")] = m.group(2) or ""
    return meta.get("Requires-Python") or PYTHON_REQUIRED, found or dict(BASE_REQUIREMENTS)


def check_python() -> Check:
    required, _ = _requirements()
    m = re.search(r">=\s*([\d.]+)", required)
    minimum = _version_tuple(m.group(1)) if m else (3, 10)
    have = sys.version_info[:3]
    result = f"{platform.python_version()} ({sys.executable}); distill-kit needs {required}"
    data = {"version": platform.python_version(), "executable": sys.executable, "requires": required,
            "venv": sys.prefix != sys.base_prefix}
    if have[:len(minimum)] < minimum:
        need = ".".join(map(str, minimum))
        return Check("python", FAIL, result, [
            f"Python {have[0]}.{have[1]} is too old: the base install needs {need}+. Install Python {need} or "
            f"newer (your OS's python3 packages, the deadsnakes PPA on Ubuntu, or `uv python install {need}`), make a "
            "venv with it and install distill-kit there (it is not on PyPI: the wheelhouse of `dkit device-pack "
            "--python X.Y`, or `pip install .` in a distill-kit checkout)"], data)
    return Check("python", OK, result, [], data)


def check_packages() -> list[Check]:
    _, reqs = _requirements()
    checks = [_check_numpy(reqs), _check_onnxruntime(reqs), _check_opencv(reqs), _check_web(reqs),
              _check_backends()]
    return checks


def _check_backends() -> Check:
    """The optional inference backends (dkit.edge.infer.backends) that import here, with their versions."""
    from dkit.edge.infer.backends import BACKENDS

    found, missing = {}, []
    for name, p in BACKENDS.items():
        if p.importable():
            try:
                found[name] = metadata.version(p.library)
            except metadata.PackageNotFoundError:
                found[name] = "?"
        else:
            missing.append(p)
    result = ", ".join(f"{k} {v}" for k, v in found.items()) or "none"
    advice = []
    if platform.machine().lower() in ("aarch64", "arm64") and "ncnn" not in found:
        advice.append(f"on an Arm board NCNN is usually the fastest backend: {install_hint('ncnn')}, and export "
                      "the bundle with export.backends: [onnx, ncnn]")
    return Check("backends", OK, result + (f"; not installed: {', '.join(p.name for p in missing)}" if missing
                                            else ""), advice, {"installed": found})


def _too_old(have: str | None, need: str | None) -> bool:
    return bool(have and need) and _version_tuple(have) < _version_tuple(need)


def _import(module: str) -> tuple[Any, str | None]:
    try:
        return importlib.import_module(module), None
    except Exception as e:  # ImportError, or a broken binary raising something else at import
        return None, f"{type(e).__name__}: {e}"


def _check_numpy(reqs: dict[str, str]) -> Check:
    np, error = _import("numpy")
    need = reqs.get("numpy")
    if np is None:
        return Check("numpy", FAIL, f"does not import ({error})", ["pip install numpy (or reinstall distill-kit)"])
    result = np.__version__ + (f"; distill-kit needs >={need}" if need else "")
    if _too_old(np.__version__, need):
        return Check("numpy", FAIL, result, [f"numpy {np.__version__} is too old: pip install 'numpy>={need}'"],
                     {"version": np.__version__})
    return Check("numpy", OK, result, [], {"version": np.__version__})


def _check_onnxruntime(reqs: dict[str, str]) -> Check:
    dists = {d: v for d in ORT_DISTS if (v := _dist_version(d))}
    need = reqs.get("onnxruntime")
    ort, error = _import("onnxruntime")
    data: dict[str, Any] = {"distributions": dists}
    advice = []
    status = OK
    if len(dists) > 1:
        status = WARN
        advice.append(f"several onnxruntime wheels are installed ({', '.join(dists)}); they share the `onnxruntime` "
                      "module and the last one installed wins: `pip uninstall -y " + " ".join(dists) + "`, then "
                      "install just one")
    if ort is None:
        return Check("onnxruntime", FAIL, f"does not import ({error})", advice + [
            "pip install onnxruntime (on a Jetson: onnxruntime-gpu from NVIDIA's index instead, see providers)"], data)
    version = getattr(ort, "__version__", "?")
    data["version"] = version
    names = ", ".join(f"{d} {v}" for d, v in dists.items()) or "no pip metadata"
    result = f"{version} ({names})" + (f"; distill-kit needs >={need}" if need else "")
    if _too_old(version, need):
        status = FAIL
        advice.append(f"onnxruntime {version} is too old: pip install -U 'onnxruntime>={need}' (or the -gpu wheel)")
    np_version = _dist_version("numpy")
    if np_version and _version_tuple(np_version) >= (2,) and _version_tuple(version) < (1, 19):
        status = WARN if status == OK else status
        advice.append(f"onnxruntime {version} was built for numpy 1.x but numpy {np_version} is installed: "
                      "pip install 'numpy<2', or a newer onnxruntime (1.19+)")
    return Check("onnxruntime", status, result, advice, data)


def _check_opencv(reqs: dict[str, str]) -> Check:
    dists = {d: v for d in CV_DISTS if (v := _dist_version(d))}
    need = reqs.get("opencv-python-headless")
    data: dict[str, Any] = {"distributions": dists}
    advice = []
    status = OK
    if len(dists) > 1:
        status = WARN
        # keep the one this install needs: Ultralytics (the training extra) requires opencv-python
        keep = "opencv-python" if _dist_version("ultralytics") else "opencv-python-headless"
        how = (f"`pip install --force-reinstall --no-deps {keep}=={dists[keep]}`" if keep in dists
               else f"`pip install {keep}`")
        advice.append(f"several OpenCV wheels are installed ({', '.join(dists)}); they overwrite each other's `cv2`: "
                      f"`pip uninstall -y {' '.join(d for d in dists if d != keep)}`, then {how}"
                      + (" (in a checkout: `make one-opencv`)" if keep == "opencv-python" else
                         " (or opencv-python for `dkit run --show`)"))
    cv2, error = _import("cv2")
    if cv2 is None:
        advice.append("OpenCV needs libGL here: pip install opencv-python-headless instead of opencv-python (or "
                      "`sudo apt install libgl1`)" if error and "libGL" in error else
                      "pip install opencv-python-headless (or reinstall distill-kit)")
        return Check("opencv", FAIL, f"does not import ({error})", advice, data)
    version = cv2.__version__
    m = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.M)  # "GUI: NONE" in a headless build
    gui = bool(m) and m.group(1).upper() != "NONE"
    data |= {"version": version, "gui": gui}
    names = ", ".join(f"{d} {v}" for d, v in dists.items()) or "not from pip (a system OpenCV?)"
    result = (f"{version} ({names}); window for `dkit run --show`: {'yes' if gui else 'no (headless)'}"
              + (f"; distill-kit needs >={need}" if need else ""))
    if _too_old(version, need):
        status = FAIL
        advice.append(f"OpenCV {version} is too old: pip install -U 'opencv-python-headless>={need}'")
    return Check("opencv", status, result, advice, data)


def _check_web(reqs: dict[str, str]) -> Check:
    found = {d: _dist_version(d) for d in WEB_DISTS}
    missing = [d for d, v in found.items() if v is None]
    old = [d for d, v in found.items() if _too_old(v, reqs.get(d))]
    result = ", ".join(f"{d} {v or 'MISSING'}" for d, v in found.items())
    if missing or old:
        pins = " ".join(f"'{d}>={reqs[d]}'" if reqs.get(d) else d for d in missing + old)
        return Check("web stack", WARN, result, [f"`dkit serve` (the kiosk) needs them: pip install -U {pins}; "
                                                  "`dkit run` works without"], {"versions": found})
    return Check("web stack", OK, result, [], {"versions": found})


# ------------------------------------------------------------------------------------------ execution providers


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: a varint (wire type 0) or length-delimited bytes/string (wire type 2)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def tiny_model(size: int = 8) -> bytes:
    """The bytes of an ONNX model `y = x + x`, x and y float32 [1, size] (IR 7, opset 13: every onnxruntime since
    1.8 and every provider reads it), written as protobuf by hand."""
    shape = _field(2, _field(1, _field(1, 1)) + _field(1, _field(1, size)))  # TensorShapeProto: dims 1, size
    tensor_type = _field(1, _field(1, 1) + shape)  # TypeProto.tensor_type: elem_type FLOAT, shape

    def value_info(name: str) -> bytes:
        return _field(1, name) + _field(2, tensor_type)

    node = _field(1, "x") + _field(1, "x") + _field(2, "y") + _field(3, "add") + _field(4, "Add")
    graph = _field(1, node) + _field(2, "dkit-doctor") + _field(11, value_info("x")) + _field(12, value_info("y"))
    return _field(1, 7) + _field(2, "dkit-doctor") + _field(7, graph) + _field(8, _field(2, 13))


def try_provider(provider: str, model: bytes | None = None) -> tuple[bool, str, float]:
    """(works, detail, ms of one run): a session on `provider` alone runs the tiny model and really uses it."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # a provider that fails says why in the exception; no log spam
    try:
        session = ort.InferenceSession(model or tiny_model(), sess_options=options, providers=[provider])
    except Exception as e:
        return False, f"session failed: {str(e).splitlines()[0][:200]}", 0.0
    used = session.get_providers()
    if not used or used[0] != provider:
        return False, f"fell back to {used[0] if used else 'nothing'} (its libraries did not load)", 0.0
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    start = time.perf_counter()
    try:
        (y,) = session.run(None, {"x": x})
    except Exception as e:
        return False, f"run failed: {str(e).splitlines()[0][:200]}", 0.0
    ms = (time.perf_counter() - start) * 1000
    if not np.allclose(y, 2 * x):
        return False, "ran, but computed a wrong result", ms
    return True, "works", ms


def check_providers(board: Board) -> Check:
    ort, error = _import("onnxruntime")
    if ort is None:
        return Check("providers", FAIL, f"onnxruntime does not import ({error})")
    available = list(ort.get_available_providers())
    tried: dict[str, dict[str, Any]] = {}
    for p in available:
        if p in NOT_COMPUTE:
            tried[p] = {"works": None, "detail": "skipped (not a local compute provider)"}
            continue
        works, detail, ms = try_provider(p)
        tried[p] = {"works": works, "detail": detail, "ms": round(ms, 2)}
    working = [p for p, t in tried.items() if t["works"]]
    broken = [p for p, t in tried.items() if t["works"] is False]
    result = "; ".join(f"{_short(p)}: {t['detail']}" for p, t in tried.items()) or "none available"
    data = {"available": available, "working": working, "tried": tried}
    advice = []
    status = OK if working else FAIL
    if not working:
        advice.append("no execution provider runs a model: reinstall onnxruntime (pip install -U --force-reinstall "
                      "onnxruntime)")
    for p in broken:
        status = WARN if status == OK else status
        detail = tried[p]["detail"]
        if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and board.jetson:
            advice.append(f"{_short(p)} is offered but {detail}: the onnxruntime-gpu wheel must match this JetPack's "
                          f"CUDA/cuDNN/TensorRT; install the one from NVIDIA's Jetson index ({_jetson_pip(board)})")
        elif p == "TensorrtExecutionProvider":
            advice.append(f"TensorRT is offered but {detail}: install TensorRT's libraries (pip install tensorrt, or "
                          "NVIDIA's packages) or pass --providers cuda,cpu; dkit falls back to the next provider")
        elif p == "CUDAExecutionProvider":
            advice.append(f"CUDA is offered but {detail}: onnxruntime-gpu needs the CUDA and cuDNN versions it was "
                          "built for (see onnxruntime.ai's CUDA requirements table); the runtime falls back to the CPU")
        else:
            advice.append(f"{_short(p)} is offered but {detail}")
    gpu_eps = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    if board.jetson and not gpu_eps & set(available):
        status = WARN if status == OK else status
        advice.append(f"this Jetson's onnxruntime has no GPU provider (CPU only). onnxruntime-gpu for JetPack "
                      f"{board.jetpack or '6'} comes from NVIDIA's Jetson index; install it instead of onnxruntime: "
                      f"{_jetson_pip(board)}")
    elif board.nvidia_gpu and not gpu_eps & set(available):
        status = WARN if status == OK else status
        advice.append("an NVIDIA GPU is present but onnxruntime is the CPU build: pip uninstall -y onnxruntime && "
                      "pip install onnxruntime-gpu")
    return Check("providers", status, result, advice, data)


def _jetson_pip(board: Board) -> str:
    if board.jetpack in ("5", None) and board.l4t:
        return ("JetPack 5: the onnxruntime-gpu wheel for your Python from https://elinux.org/Jetson_Zoo#ONNX_Runtime, "
                "then `pip uninstall -y onnxruntime && pip install onnxruntime_gpu-*.whl`")
    jp = board.jetpack or "6"
    cuda = "cu" + "".join(board.cuda.split(".")[:2]) if board.cuda else "cu126"
    return (f"`pip uninstall -y onnxruntime && pip install onnxruntime-gpu --index-url {JETSON_INDEX}/jp{jp}/{cuda}` "
            "(its wheels are built for JetPack's own Python, 3.10 on JetPack 6)")


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


# ------------------------------------------------------------------------------------------ cameras


def video_devices(root: Path = Path("/"), limit: int = 16) -> list[str]:
    """/dev/video* in numeric order (video2 before video10), at most `limit`."""
    found = glob.glob(str(root / "dev" / "video*"))
    found = [f for f in found if re.fullmatch(r"video\d+", Path(f).name)]
    return sorted(found, key=lambda f: int(re.sub(r"\D", "", Path(f).name)))[:limit]


def probe_camera(device: str) -> dict[str, Any]:
    """Open `device` with OpenCV and read one frame: {opened, frame: [h, w] | None, backend}."""
    import cv2

    cap = cv2.VideoCapture(device)
    try:
        opened = bool(cap.isOpened())
        frame = None
        if opened:
            ok, img = cap.read()
            if ok and img is not None and getattr(img, "ndim", 0) >= 2:
                frame = [int(img.shape[0]), int(img.shape[1])]
        backend = cap.getBackendName() if opened else None
        return {"opened": opened, "frame": frame, "backend": backend}
    finally:
        cap.release()


def probe_cameras(devices: Iterable[str], timeout: float = 3.0,
                  probe: Callable[[str], dict[str, Any]] = probe_camera) -> dict[str, dict[str, Any]]:
    """Each device probed in its own thread, all within `timeout` seconds (a driver that blocks inside OpenCV is
    left behind and reported as not answering)."""
    devices = list(devices)
    results: dict[str, dict[str, Any]] = {}

    def run(dev: str) -> None:
        try:
            results[dev] = probe(dev)
        except Exception as e:
            results[dev] = {"opened": False, "frame": None, "error": f"{type(e).__name__}: {e}"}

    threads = [threading.Thread(target=run, args=(d,), daemon=True, name=f"doctor-{Path(d).name}") for d in devices]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return {d: results.get(d, {"opened": False, "frame": None, "error": f"no answer within {timeout:g} s"})
            for d in devices}


def check_cameras(devices: list[str], *, timeout: float = 3.0, board: Board | None = None,
                  probe: Callable[[str], dict[str, Any]] = probe_camera) -> Check:
    rpi = board is not None and board.raspberry_pi
    jetson = board is not None and board.jetson
    if not devices:
        advice = ["no camera found (no /dev/video*): plug in a USB (UVC) camera, or use a stream, video file or "
                  "image folder as `dkit run --source`"]
        if rpi:
            advice.append(_RPI_CAMERA)
        if jetson:
            advice.append(_JETSON_CSI)
        return Check("cameras", WARN, "none found", advice, {"devices": {}})
    results = probe_cameras(devices, timeout=timeout, probe=probe)
    good = [d for d, r in results.items() if r.get("frame")]
    denied = [d for d in devices if not os.access(d, os.R_OK | os.W_OK)]
    parts = []
    for d, r in results.items():
        if r.get("frame"):
            parts.append(f"{d}: {r['frame'][1]}x{r['frame'][0]}")
        elif r.get("opened"):
            parts.append(f"{d}: opens, no frame")
        else:
            parts.append(f"{d}: {r.get('error') or 'does not open'}")
    advice = []
    if good:
        index = [re.sub(r"\D", "", Path(d).name) for d in good]
        result = f"{len(good)} working ({', '.join(parts)})"
        advice_status = OK
        if len(good) < len(devices):
            result += f"; use --source {index[0]}" + (f" (or {', '.join(index[1:])})" if index[1:] else "")
    else:
        result = f"none of {len(devices)} answers ({', '.join(parts)})"
        advice_status = WARN
        if denied:
            advice.append(f"no permission on {', '.join(denied)}: `sudo usermod -aG video $USER` and log in again "
                          "(a service runs as a user in the video group)")
        else:
            advice.append("the camera nodes open no frame: another program may hold the camera (a running "
                          "`dkit run` service?), or the node is a metadata node; `v4l2-ctl --list-devices` shows them")
        if rpi:
            advice.append(_RPI_CAMERA)
        if jetson:
            advice.append(_JETSON_CSI)
    return Check("cameras", advice_status, result, advice, {"devices": results, "working": good})


_RPI_CAMERA = ("a Raspberry Pi camera module (CSI) goes through libcamera, which OpenCV's pip wheel cannot read: "
               "stream it with `rpicam-vid -t 0 --inline --listen -o tcp://0.0.0.0:8888` and run with "
               "`--source tcp://127.0.0.1:8888`")
_JETSON_CSI = ("a Jetson CSI camera needs GStreamer (nvarguscamerasrc), which OpenCV's pip wheel lacks: serve it as "
               "RTSP (or use a USB camera) and pass the URL as --source")


# ------------------------------------------------------------------------------------------ disk and memory


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(cwd: Path) -> Check:
    from dkit.edge.bundle.home import dkit_home

    places = {"here": cwd, "DKIT_HOME": dkit_home()}
    data = {}
    parts = []
    advice = []
    seen: dict[int, str] = {}
    for label, place in places.items():
        existing = _existing(place)
        usage = shutil.disk_usage(existing)
        data[label] = {"path": str(place), "free": usage.free, "total": usage.total}
        dev = existing.stat().st_dev
        if dev in seen:
            parts.append(f"{label} {place}: same disk as {seen[dev]}")
            continue
        seen[dev] = label
        parts.append(f"{label} {place}: {usage.free / GiB:.1f} GiB free of {usage.total / GiB:.1f}")
        if usage.free < LOW_DISK:
            advice.append(f"low disk: {usage.free / MiB:.0f} MiB free at {place}; a kiosk keeps up to 512 MB of "
                          "thumbnails (--set max_disk_mb=...) and a TensorRT engine cache takes hundreds of MB: free "
                          "space (`sudo apt clean`, `journalctl --vacuum-size=100M`) or point DKIT_HOME and --db at a "
                          "bigger disk")
    return Check("disk", WARN if advice else OK, "; ".join(parts), advice, data)


def check_memory(root: Path = Path("/")) -> Check:
    text = _read(root / "proc/meminfo")
    if not text:
        return Check("memory", OK, "not reported on this system (no /proc/meminfo)")
    info = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            info[key] = int(fields[0]) * 1024
    total, avail = info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    swap = info.get("SwapTotal", 0)
    result = f"{avail / GiB:.1f} GiB available of {total / GiB:.1f} GiB; swap {swap / GiB:.1f} GiB"
    data = {"total": total, "available": avail, "swap": swap}
    if avail < LOW_MEMORY:
        return Check("memory", WARN, result, [
            f"only {avail / MiB:.0f} MiB of memory is available: close other programs, add swap (Raspberry Pi OS: "
            "CONF_SWAPSIZE in /etc/dphys-swapfile; Jetson: zram is on by default), or use a smaller / int8 bundle"],
            data)
    return Check("memory", OK, result, [], data)


# ------------------------------------------------------------------------------------------ a bundle


def check_bundle(bundle: str | os.PathLike, *, precision: str = "auto", providers: list[str] | None = None,
                 threads: int | None = None, backend: str = "auto", frames: int = 20, warmup: int = 3,
                 max_seconds: float = 15.0, board: Board | None = None) -> list[Check]:
    """Three checks: "bundle" (verifies?), "runtime" (loads: provider, precision), "speed" (fps on this device)."""
    from dkit.edge.bundle import BundleError, NoSuchBundleError, open_bundle
    from dkit.edge.bundle.manifest import UNTRAINED_WARNING

    try:
        opened = open_bundle(bundle)
    except BundleError as e:
        if isinstance(e, NoSuchBundleError) or not Path(bundle).exists():
            return [Check("bundle", FAIL, f"not found: {e}", ["give the path of a bundle folder (the one with "
                          "manifest.json) or its .tar.gz"], {"path": str(bundle)})]
        return [Check("bundle", FAIL, f"does not verify: {e}", [
            "do not run it: copy the bundle again from the machine that exported it (`dkit export` verifies what it "
            "writes), whole, with every file its manifest.json lists, and nothing added"], {"path": str(bundle)})]
    with opened:
        m = opened.manifest
        size = sum((opened.root / f).stat().st_size for f in m.files)
        models = "; ".join(f"{fmt} {', '.join(m.precisions(fmt))}" for fmt in m.formats())
        result = (f"{bundle}: verified ({len(m.files)} files, {size / MiB:.1f} MiB); {m.name}, task {m.task}, "
                  f"models {models}")
        checks = [Check("bundle", OK, result, [], {"path": str(bundle), "name": m.name, "task": m.task,
                                                    "precisions": m.precisions(), "bytes": size,
                                                    "untrained": m.untrained})]
        if m.untrained:  # it runs, but nothing it says means anything: the operator must know before an event
            checks[0].status = WARN
            checks[0].result += "; UNTRAINED teacher"
            checks[0].advice.append(f"this bundle was {UNTRAINED_WARNING}")
        checks += _check_runtime(opened, precision=precision, providers=providers, threads=threads,
                                 backend=backend, frames=frames,
                                 warmup=warmup, max_seconds=max_seconds, board=board)
    return checks


def _check_runtime(bundle, *, precision: str, providers: list[str] | None, threads: int | None, frames: int,
                   warmup: int, max_seconds: float, board: Board | None, backend: str = "auto") -> list[Check]:
    import numpy as np

    from dkit.edge.infer.runtime import Runtime, RuntimeConfigError

    m = bundle.manifest
    try:
        rt = Runtime(bundle, backend=backend, providers=providers, threads=threads, precision=precision, warmup=0)
    except RuntimeConfigError as e:
        return [Check("runtime", FAIL, str(e), ["pick a backend, precision or provider the bundle and this install "
                                                "have (--backend, --precision, --providers)"])]
    except Exception as e:
        return [Check("runtime", FAIL, f"the model does not load: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                      ["the onnxruntime here may be too old for the bundle's opset (pip install -U onnxruntime), or "
                       "the file is not for this runtime; `dkit run` will fail the same way"])]
    h, w = rt.spec.size
    threads_used = rt.threads or 0
    choice = rt.choice
    runtime = Check("runtime", OK, f"{rt.model_file.name} ({rt.precision}) on {rt.provider}, threads "
                                   f"{threads_used or 'default'}; input {w}x{h}, letterbox {rt.spec.letterbox}; "
                                   f"chosen {choice.describe()}",
                    [], {"provider": rt.provider, "backend": choice.backend, "precision": rt.precision,
                         "model": rt.model_file.name, "input": [h, w], "threads": threads_used,
                         "choice": {"reason": choice.reason, "figures": choice.figures}})
    if choice.reason == "as asked" and len(m.precisions()) + len(m.formats()) > 2:
        runtime.advice.append("the bundle has other models: `dkit doctor BUNDLE` without --precision/--backend "
                              "(auto) times them all here and shows the fastest")
    if rt.provider == "CPUExecutionProvider" and board is not None and board.jetson:
        runtime.status = WARN
        runtime.advice.append("this Jetson runs the bundle on its CPU: install onnxruntime-gpu (see providers)")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # synthetic: speed does not depend on the content
    try:
        for i in range(warmup):
            rt(frame, frame_id=i)
        times = []
        deadline = time.perf_counter() + max_seconds
        while len(times) < frames and (not times or time.perf_counter() < deadline):
            t = time.perf_counter()
            rt(frame, frame_id=len(times))
            times.append(time.perf_counter() - t)
    except Exception as e:
        return [runtime, Check("speed", FAIL, f"scoring a frame failed: {type(e).__name__}: {e}",
                               ["`dkit run` will fail the same way: re-export the bundle with this dkit version"])]
    ms = np.asarray(times) * 1000
    fps = len(times) / float(np.sum(times))
    result = (f"{fps:.1f} fps (p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms) over "
              f"{len(times)} synthetic {w}x{h} frames after {warmup} warm-up; pre-processing + model + "
              "post-processing, one frame at a time")
    speed = Check("speed", OK, result, [], {"fps": round(fps, 2), "p50_ms": round(float(np.percentile(ms, 50)), 2),
                                            "p99_ms": round(float(np.percentile(ms, 99)), 2), "frames": len(times),
                                            "warmup": warmup, "synthetic": True, "input": [h, w]})
    want = float(m.runtime.max_fps or 0)
    if want and fps < want:
        speed.status = WARN
        speed.advice.append(f"slower than the bundle's runtime.max_fps ({want:g}): a GPU provider, another backend "
                            f"(NCNN on an Arm board, with an NCNN bundle: {install_hint('ncnn')}), or a smaller "
                            "student")
    return [runtime, speed]
