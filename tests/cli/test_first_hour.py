"""The first hour: what a newcomer following the README does, and the mistakes they make, each ending in one clear
line and a documented exit code (issue #16). The CLI and make run as subprocesses, as the user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dkit.distill.evaluate import render_markdown
from tests.conftest import RECIPES, ROOT, run_dkit, run_main

KIT = str(RECIPES / "coco128" / "kit.yaml")


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("dkit: error:")]
    assert lines, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_export_before_training_says_train_first_and_leaves_no_folder(tmp_path):
    out = tmp_path / "never-trained"
    proc = run_dkit("export", KIT, "--out", str(out))
    assert proc.returncode == 2
    assert _error_line(proc) == f"dkit: error: no trained student in {out}/student: run `dkit train` first"
    assert not out.exists()


def test_the_default_kit_offline_names_every_missing_file_at_once(tmp_path):
    """`make distill` with the default (Imagenette, CLIP) kit on a machine without a network."""
    home = tmp_path / "empty-store"
    proc = run_dkit("label", str(RECIPES / "imagenette" / "kit.yaml"), "--out", str(tmp_path / "run"),
                    env={"DKIT_HOME": str(home), "DKIT_OFFLINE": "1"})
    assert proc.returncode == 3, proc.stderr[-2000:]
    text = proc.stderr
    assert "2 file(s) the kit needs are not in the model store" in text
    assert "  teacher: CLIP weights ViT-B-32/laion2b_s34b_b79k" in text
    assert f"place it at {home}/ViT-B-32_laion2b_s34b_b79k.safetensors" in text
    assert "  images: the images archive imagenette2-160.tgz" in text
    assert f"run `dkit fetch {RECIPES / 'imagenette' / 'kit.yaml'}`" in text
    assert "make distill KIT=datasets/coco128/kit.yaml DATA=DIR" in text
    assert not (tmp_path / "run").exists()  # nothing started


def test_fetch_is_told_the_same_overrides(tmp_path):
    proc = run_dkit("label", str(RECIPES / "imagenette" / "kit.yaml"), "--set", "student.epochs=2",
                    "--out", str(tmp_path / "run"), env={"DKIT_HOME": str(tmp_path / "h"), "DKIT_OFFLINE": "1"})
    assert proc.returncode == 3
    assert f"`dkit fetch {RECIPES / 'imagenette' / 'kit.yaml'} --set student.epochs=2`" in proc.stderr


@pytest.mark.parametrize(("argv", "code"), [
    (["run", "no/such/bundle", "--source", "0"], 2),
    (["serve", "no/such/bundle"], 2),
    (["check", KIT, "--set", "studnet.epochs=2"], 2),
])
def test_exit_codes_and_markers(argv, code, capsys):
    proc = run_main(capsys, *argv)  # in process: an uncaught exception fails the test as a traceback would
    assert proc.returncode == code
    line = _error_line(proc)
    if "--set" in argv:  # a misspelt section set on the command line is blamed on the option, not the file
        assert "kit.yaml (--set studnet.epochs=2): studnet: unknown key (did you mean 'student'?)" in line
    else:
        assert line == "dkit: error: no/such/bundle: no such bundle (expected a folder with manifest.json, or a " \
                       ".tar.gz of one)"


def test_device_commands_help_says_nothing_about_kits(capsys):
    for argv in (["run", "--help"], ["serve", "--help"], ["doctor", "--help"]):
        proc = run_main(capsys, *argv)
        assert proc.returncode == 0
        assert "kit YAML" not in proc.stdout and "2 bad arguments" in proc.stdout, argv
    assert "2 bad kit YAML or arguments" in run_main(capsys, "label", "--help").stdout


# ------------------------------------------------------------------------------------------ make's Python


def _make(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PATH": path} if path is not None else {})}
    return subprocess.run([shutil.which("make") or "make", "--no-print-directory", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_without_a_python_says_what_to_do(tmp_path):
    bare = tmp_path / "bin"  # a PATH with make's shell tools but no Python at all
    bare.mkdir()
    for tool in ("sh", "bash", "test", "cat", "sed", "touch", "command", "env"):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    proc = _make("setup", f"VENV={tmp_path / 'venv'}", path=str(bare))
    assert proc.returncode != 0
    assert "no Python found on PATH (looked for python3.11, python3.12, python3.13, python3)" in proc.stderr
    assert "make PYTHON=/path/to/python3.11" in proc.stderr and "-m: command not found" not in proc.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_refuses_a_python_older_than_the_training_side_needs(tmp_path):
    old = tmp_path / "python3.9"  # answers as Python 3.9 would
    old.write_text("#!/bin/sh\ncase \"$2\" in *version_info*) exit 1;; *) echo 3.9.2;; esac\n")
    old.chmod(0o755)
    proc = _make("setup", f"VENV={tmp_path / 'venv'}", f"PYTHON={old}")
    assert proc.returncode != 0
    assert f"{old} is Python 3.9.2; the training side needs 3.11 or newer" in proc.stderr
    assert not (tmp_path / "venv").exists()
    missing = _make("setup", f"VENV={tmp_path / 'venv'}", f"PYTHON={tmp_path / 'nope'}")
    assert missing.returncode != 0 and "is not an executable" in missing.stderr


# ------------------------------------------------------------------------------------------ eval.md, bundle README


def _detect_eval(ground_truth: bool) -> dict:
    s = {"kind": "yolo-detect", "weights": "best.pt", "params": 3_011_043, "gflops": 0.87, "ms_per_image": 5.23456,
         "imgsz": 320, "map50_vs_teacher": 0.6021, "map50_95_vs_teacher": 0.41,
         "map50": 0.5 if ground_truth else None, "map50_95": 0.3 if ground_truth else None}
    t = {"id": "yolo:yolov8n.pt@640", "params": 3_151_904, "gflops": 8.7, "ms_per_image": 114.7,
         "imgsz": 640, "map50": 0.6 if ground_truth else None, "map50_95": 0.4 if ground_truth else None}
    return {"kit": "coco128", "task": "detect", "images": 32, "student": s, "teacher": t,
            "machine": {"cpus": 2, "platform": "Linux"}, "ratios": {"map50": None, "speed": 21.9}}


def test_eval_md_without_ground_truth_shows_only_what_was_measured():
    md = render_markdown(_detect_eval(ground_truth=False))
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert "map50" not in rows and "map50_95" not in rows  # no ground truth: no empty rows
    assert rows["map50_vs_teacher"] == "| map50_vs_teacher | 0.602 | – |"  # the teacher has no figure against itself
    assert rows["ms_per_image"] == "| ms_per_image | 5.2 | 114.7 |" and rows["gflops"] == "| gflops | 0.87 | 8.70 |"
    with_gt = render_markdown(_detect_eval(ground_truth=True))
    assert "| map50 | 0.500 | 0.600 |" in with_gt


def test_the_bundle_readme_says_only_what_was_measured():
    pytest.importorskip("onnx")
    from dkit.export.readme import _eval_lines

    (line,) = _eval_lines(_detect_eval(ground_truth=False))
    assert line == ("- On 32 held-out images (`dkit eval`): student mAP50 0.602 against the teacher's labels; "
                    "5.2 ms/image vs the teacher's 114.7 on 2 CPU cores.")
    (line,) = _eval_lines(_detect_eval(ground_truth=True))
    assert "0.500 against ground truth, the teacher's own 0.600 against ground truth" in line and "–" not in line


def test_the_readme_install_size_is_the_venvs():
    """README's "about N GB in .venv/" against the .venv `make` built (when the tests run in it, as make test does)."""
    import re
    import sys

    venv = ROOT / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve() or not (venv / ".installed").is_file():
        pytest.skip("not running in the .venv that make builds")
    claimed = float(re.search(r"about ([\d.]+) GB in `\.venv/`", (ROOT / "README.md").read_text()).group(1))
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()) / 1e9
    assert abs(size - claimed) / claimed < 0.15, f".venv holds {size:.1f} GB, README says about {claimed} GB"


def test_every_argument_of_every_command_is_explained():
    import argparse

    from dkit.cli.main import build_parser

    unexplained, seen = [], 0

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        nonlocal seen
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.dest != "help":
                seen += 1
                if not action.help or action.help == argparse.SUPPRESS:
                    unexplained.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), ["dkit"])
    assert seen > 100 and unexplained == []
