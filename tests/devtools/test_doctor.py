"""`dkit doctor`: every check on this machine, the advice for the problems it knows, and a real bundle's speed.

Board, memory and camera checks read real files: a fake /proc, /etc and /dev tree under tmp_path (a Jetson's
nv_tegra_release, a Raspberry Pi's device-tree model, a low /proc/meminfo) and a real video file standing in for a
camera node."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dkit.cli.main import main
from dkit.devtools import doctor
from dkit.devtools.doctor import FAIL, OK, WARN, Board, diagnose

HEAVY_MODULES = ("torch", "torchvision", "ultralytics", "open_clip", "onnx", "onnxslim", "tensorrt", "PIL")


def _board(**kw) -> Board:
    fields = {"system": "Linux", "machine": "x86_64", "model": None, "os_name": "Debian", "l4t": None, "cuda": None,
              "nvidia_gpu": False}
    return Board(**(fields | kw))


def _tree(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return tmp_path


@pytest.mark.devenv("onnx")
def test_tiny_model_is_valid_onnx_and_runs_on_cpu():
    onnx = pytest.importorskip("onnx")  # the export extra; the doctor itself never imports it
    model = onnx.load_from_string(doctor.tiny_model())
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Add"]
    assert doctor.try_provider("CPUExecutionProvider")[:2] == (True, "works")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_provider_that_does_not_exist_is_reported_not_raised():
    works, detail, _ = doctor.try_provider("NoSuchExecutionProvider")
    assert not works and detail


def test_whole_report_on_this_machine(tmp_path):
    report = diagnose(cameras=False, cwd=tmp_path)
    names = [c.name for c in report.checks]
    assert names == ["platform", "python", "numpy", "onnxruntime", "opencv", "web stack", "backends", "providers",
                     "cameras",
                     "disk", "memory"]
    providers = report.get("providers")
    assert "CPUExecutionProvider" in providers.data["working"] and providers.status in (OK, WARN)
    assert report.get("python").status == OK
    doc = report.to_json()
    assert json.loads(json.dumps(doc))["ok"] is report.ok
    table = report.table()
    assert table.startswith("CHECK") and "providers" in table and "CPU: works" in table


def test_jetson_without_gpu_onnxruntime_points_at_nvidias_index(tmp_path):
    root = _tree(tmp_path, {
        "proc/device-tree/model": b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00",
        "etc/nv_tegra_release": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n",
        "usr/local/cuda/version.json": json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}),
    })
    board = doctor.board_info(root)
    assert board.jetson and board.l4t == "R36.4.3" and board.jetpack == "6" and board.cuda == "12.6.68"
    platform_check = doctor.check_platform(board)
    assert "Jetson Orin Nano" in platform_check.result and "JetPack 6" in platform_check.result
    check = doctor.check_providers(board)  # this machine's onnxruntime is the CPU build
    assert check.status == WARN
    advice = " ".join(check.advice)
    assert "onnxruntime-gpu" in advice and "https://pypi.jetson-ai-lab.io/jp6/cu126" in advice
    assert "instead of onnxruntime" in advice


def test_raspberry_pi_model_and_32_bit_os(tmp_path):
    root = _tree(tmp_path, {"sys/firmware/devicetree/base/model": b"Raspberry Pi 5 Model B Rev 1.0\x00",
                            "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'})
    board = doctor.board_info(root)
    assert board.raspberry_pi and board.model == "Raspberry Pi 5 Model B Rev 1.0" and board.os_name.startswith("Debian")
    check = doctor.check_platform(Board(**(board.__dict__ | {"machine": "armv7l"})))
    assert check.status == WARN and "64-bit" in check.advice[0]
    cams = doctor.check_cameras([], board=board)
    assert cams.status == WARN and any("rpicam-vid" in a for a in cams.advice)


def test_python_too_old(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 9, 18, "final", 0))
    check = doctor.check_python()
    assert check.status == FAIL and "Python 3.9 is too old: the base install needs 3.10+" in check.advice[0]


def test_low_memory_from_meminfo(tmp_path):
    root = _tree(tmp_path, {"proc/meminfo": "MemTotal:  3891212 kB\nMemFree:  100000 kB\nMemAvailable:  "
                                            "204800 kB\nSwapTotal:  0 kB\n"})
    check = doctor.check_memory(root)
    assert check.status == WARN and check.data["available"] == 204800 * 1024 and "swap" in check.advice[0]
    assert doctor.check_memory(_tree(tmp_path / "big", {"proc/meminfo": "MemTotal: 8000000 kB\nMemAvailable: "
                                                                        "6000000 kB\n"})).status == OK


def test_disk_reports_here_and_dkit_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DKIT_HOME", str(tmp_path / "not" / "made" / "yet"))
    check = doctor.check_disk(tmp_path)
    assert set(check.data) == {"here", "DKIT_HOME"} and check.data["here"]["free"] > 0
    assert "same disk as here" in check.result
    monkeypatch.setattr(doctor, "LOW_DISK", 1 << 60)
    low = doctor.check_disk(tmp_path)
    assert low.status == WARN and low.advice[0].startswith("low disk")


def test_cameras_open_within_a_bound(tmp_path):
    import cv2
    import numpy as np

    video = tmp_path / "video0"  # a real MJPEG stream where a camera node would be
    writer = cv2.VideoWriter(str(tmp_path / "cam.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    shutil.move(tmp_path / "cam.avi", video)
    (tmp_path / "video1").write_bytes(b"not a camera")  # a metadata node: does not deliver frames
    (tmp_path / "video10").write_bytes(b"")
    devices = [str(video), str(tmp_path / "video1")]
    check = doctor.check_cameras(devices, timeout=5)
    assert check.status == OK and check.data["working"] == [str(video)]
    assert "64x48" in check.result and "--source 0" in check.result

    release = threading.Event()  # a driver blocked inside OpenCV until the test is done with it

    def stuck(device):
        release.wait(60)

    try:
        slow = doctor.check_cameras([str(tmp_path / "video1")], timeout=0.2, probe=stuck)
    finally:
        release.set()
    assert slow.status == WARN and "no answer within 0.2 s" in slow.result
    dev = _tree(tmp_path / "root", {"dev/video10": "", "dev/video2": "", "dev/video-meta": ""})
    assert [Path(d).name for d in doctor.video_devices(dev)] == ["video2", "video10"]


def test_bundle_verifies_and_is_timed(detect_bundle):
    checks = doctor.check_bundle(detect_bundle, frames=3, warmup=1, backend="onnxruntime")
    bundle, runtime, speed = checks
    assert bundle.status == OK and bundle.data["task"] == "detect"
    assert runtime.status == OK and runtime.data["provider"] == "CPUExecutionProvider"
    assert runtime.data["precision"] == "fp32" and runtime.data["input"] == [320, 320]
    assert speed.status == OK and speed.data["frames"] == 3 and speed.data["synthetic"] and speed.data["fps"] > 0
    assert "models onnx fp32" in bundle.result and "chosen onnxruntime/fp32 (only candidate)" in runtime.result


def test_the_backend_choice_is_shown_with_its_figures(detect_bundle):
    from dkit.edge.infer.backends import available

    runtime = doctor.check_bundle(detect_bundle, frames=1, warmup=0)[1]  # backend auto
    assert runtime.data["backend"] in available() and runtime.data["precision"] == "fp32"
    figures = runtime.data["choice"]["figures"]
    if len(available()) > 1:  # the dev install has openvino and ncnn: both ONNX readers were timed
        assert runtime.data["choice"]["reason"] in ("measured", "cached") and "onnxruntime/fp32" in figures
        assert f"{runtime.data['backend']}/fp32" in runtime.result and " ms" in runtime.result
    backends = doctor._check_backends()
    assert backends.status == OK and backends.data["installed"]["onnxruntime"]


def test_cli_json_and_exit_codes(detect_bundle, tmp_path, capsys):
    assert main(["doctor", str(detect_bundle), "--json", "--no-cameras", "--frames", "2", "--warmup", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["failed"] == 0
    assert {c["name"] for c in doc["checks"]} >= {"bundle", "runtime", "speed"}

    tampered = tmp_path / "tampered"
    shutil.copytree(detect_bundle, tampered)
    with open(tampered / "student.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    assert main(["doctor", str(tampered), "--no-cameras"]) == 1
    out = capsys.readouterr().out
    assert "bundle       FAIL    does not verify" in out and "modified or corrupted" in out
    assert "advice:" in out and "[bundle] do not run it" in out

    assert main(["doctor", str(tmp_path / "nowhere"), "--no-cameras"]) == 1
    assert "not found" in capsys.readouterr().out
    assert main(["doctor", "--no-cameras", "--strict"]) in (0, 1)  # warnings (two OpenCV wheels here) are allowed


def test_runs_on_a_base_install_without_torch(detect_bundle):
    """The doctor in a fresh interpreter where the heavy packages cannot be imported at all."""
    code = ("import sys\n"
            f"for m in {HEAVY_MODULES!r}: sys.modules[m] = None\n"
            "from dkit.cli.main import main\n"
            f"sys.exit(main(['doctor', {str(detect_bundle)!r}, '--no-cameras', '--frames', '2']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "speed" in done.stdout and "synthetic" in done.stdout and "Traceback" not in done.stderr
