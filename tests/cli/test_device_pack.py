"""`dkit device-pack`: the offline wheelhouse for a device (dkit.release.wheelhouse).

The fast tests run the pieces against fake `pip download`s that write real (tiny) wheels; the slow ones make a
real wheelhouse from the package registry and install it into a new virtual environment with `--no-index`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dkit.core.errors import UsageError
from dkit.release import wheelhouse as wh
from tests.conftest import RECIPES, ROOT, run_dkit, run_main


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (), tag: str = "py3-none-any") -> Path:
    """A real, tiny wheel file: a dist-info with METADATA (its Requires-Dist lines) and nothing else."""
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-{tag}.whl"
    meta = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                      *(f"Requires-Dist: {r}" for r in requires)]) + "\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", meta)
        zf.writestr(f"{dist}-{version}.dist-info/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        zf.writestr(f"{dist}-{version}.dist-info/RECORD", "")
    return path


class FakeIndex:
    """Stands in for `pip download`: knows some wheels (name -> version, requires, python versions it has) and
    records each call. Like pip, it ignores requirements whose marker is false for *this* machine (3.11)."""

    def __init__(self, packages: dict[str, tuple[str, tuple[str, ...], set[str] | None]]):
        self.packages, self.calls = packages, []

    def __call__(self, requirements, constraints, *, python_version, arch, glibc, dest):
        from packaging.requirements import Requirement

        self.calls.append((list(requirements), list(constraints), python_version, arch))
        dest.mkdir(parents=True, exist_ok=True)
        pins = {wh.requirement_name(c): Requirement(c).specifier for c in constraints}
        todo = [Requirement(r) for r in requirements]
        while todo:
            req = todo.pop()
            if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
                continue
            name = wh.norm(req.name)
            version, requires, pythons = self.packages.get(name, (None, (), None))
            if version is None or (pythons is not None and python_version not in pythons) or (
                    name in pins and not pins[name].contains(version)):
                return subprocess.CompletedProcess([], 1, "", f"ERROR: Could not find a version that satisfies "
                                                              f"the requirement {req} (from versions: none)\n")
            _wheel(dest, name, version, requires)
            todo += [Requirement(r) for r in requires]
        return subprocess.CompletedProcess([], 0, "", "")


INDEX = {
    "numpy": ("2.2.6", (), None),
    "onnxruntime": ("1.31.1", ("numpy>=1.21",), {"3.11", "3.12", "3.13"}),
    "anyio": ("4.16.0", ('exceptiongroup>=1.0.2; python_version < "3.11"', "idna>=2.8")),
    "exceptiongroup": ("1.3.2", (), None),
    "idna": ("3.20", (), None),
}
INDEX["anyio"] = (*INDEX["anyio"], None)


def test_targets_name_the_devices_python_and_platform():
    assert (wh.TARGETS["pi"].python, wh.TARGETS["pi"].platform) == ("3.11", "linux_aarch64")
    assert (wh.TARGETS["jetson"].python, wh.TARGETS["jetson"].platform) == ("3.10", "linux_aarch64")
    assert "CPU onnxruntime" in wh.TARGETS["jetson"].note and "NVIDIA" in wh.TARGETS["jetson"].note
    assert wh.target_for("x86_64", "3.12").python == "3.12" and wh.target_for("x86_64").platform == "linux_x86_64"
    for bad in (("nope", None), ("pi", "3.x"), ("pi", "311")):
        with pytest.raises(UsageError):
            wh.target_for(*bad)


def test_platform_tags_name_every_manylinux_up_to_the_glibc():
    tags = wh.platform_tags("aarch64", (2, 36))
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_28_aarch64" in tags
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert wh.platform_tags("x86_64", (2, 28))[-2:] == ["manylinux2010_x86_64", "manylinux1_x86_64"]


def test_base_requirements_and_their_pins_come_from_the_wheel_and_constraints_txt():
    meta = ("Name: distill-kit\nRequires-Dist: numpy>=1.24\nRequires-Dist: onnxruntime>=1.17\n"
            'Requires-Dist: torch>=2.4; extra == "distill"\nRequires-Dist: pytest>=8; extra == "dev"\n')
    reqs = wh.base_requirements(meta)
    assert reqs == ["numpy>=1.24", "onnxruntime>=1.17"]
    pins = wh.base_constraints((ROOT / "constraints.txt").read_text(), reqs)
    assert [wh.requirement_name(p) for p in pins] == ["onnxruntime"]  # the torch pins are not the device's


def test_the_dependency_walk_uses_the_targets_markers_not_this_machines(tmp_path):
    for name, (version, requires, _) in INDEX.items():
        _wheel(tmp_path, name, version, requires)
    meta = {wh.wheel_name_version(p.name)[0]: wh.wheel_metadata(p) for p in tmp_path.glob("*.whl")}
    on_310, _ = wh.needed(["anyio>=4"], meta, wh.target_environment("3.10", "aarch64"))
    on_311, _ = wh.needed(["anyio>=4"], meta, wh.target_environment("3.11", "aarch64"))
    assert on_310 == {"anyio", "exceptiongroup", "idna"} and on_311 == {"anyio", "idna"}
    del meta["exceptiongroup"]
    assert wh.needed(["anyio>=4"], meta, wh.target_environment("3.10", "aarch64"))[1] == ["exceptiongroup>=1.0.2"]


def test_resolve_adds_what_only_the_target_needs(tmp_path):
    """pip (on 3.11 here) skips `exceptiongroup; python_version < "3.11"`; the 3.10 wheelhouse gets it anyway."""
    index = FakeIndex(INDEX)
    res = wh.resolve(["anyio>=4"], [], python_version="3.10", arch="aarch64", glibc=(2, 35), dest=tmp_path / "a",
                     download=index)
    assert res.ok and res.versions == {"anyio": "4.16.0", "exceptiongroup": "1.3.2", "idna": "3.20"}
    assert index.calls[1][0] == ["exceptiongroup>=1.0.2"]  # asked for again, without the marker
    res = wh.resolve(["anyio>=4", "onnxruntime>=1.17"], ["onnxruntime>=1.31,<1.32"], python_version="3.12",
                     arch="aarch64", glibc=(2, 35), dest=tmp_path / "b", download=FakeIndex(INDEX))
    assert res.ok and not res.notes
    assert res.versions == {"anyio": "4.16.0", "idna": "3.20", "numpy": "2.2.6", "onnxruntime": "1.31.1"}


def test_resolve_reports_the_package_without_a_wheel(tmp_path):
    res = wh.resolve(["onnxruntime>=1.17"], [], python_version="3.10", arch="aarch64", glibc=(2, 35),
                     dest=tmp_path / "a", download=FakeIndex(INDEX))
    assert not res.ok and res.missing == ["onnxruntime>=1.17"]
    row = wh.format_table([res], ["onnxruntime>=1.17"])
    assert "| 3.10 | linux_aarch64 | MISSING: onnxruntime>=1.17 | – |" in row


def test_a_pin_without_a_wheel_for_the_target_is_dropped_and_said_so(tmp_path):
    index = FakeIndex({**INDEX, "onnxruntime": ("1.23.2", ("numpy>=1.21",), None)})  # the newest for 3.10
    res = wh.resolve(["onnxruntime>=1.17"], ["onnxruntime>=1.31,<1.32"], python_version="3.10", arch="aarch64",
                     glibc=(2, 35), dest=tmp_path / "a", download=index)
    assert res.ok and res.versions["onnxruntime"] == "1.23.2"
    assert res.notes and "onnxruntime 1.23.2 instead of the pinned onnxruntime>=1.31,<1.32" in res.notes[0]
    assert [c[1] for c in index.calls[:2]] == [["onnxruntime>=1.31,<1.32"], []]
    strict = wh.resolve(["onnxruntime>=1.17"], ["onnxruntime>=1.31,<1.32"], python_version="3.10", arch="aarch64",
                        glibc=(2, 35), dest=tmp_path / "b", download=index, strict=True)
    assert not strict.ok


def _fake_project_wheel(monkeypatch, requires=("anyio>=4", "numpy>=1.24")):
    def build(root, dest, **_):
        dest.mkdir(parents=True, exist_ok=True)
        return _wheel(dest, "distill-kit", "0.1.0", requires)
    monkeypatch.setattr(wh, "build_project_wheel", build)


def test_a_device_backend_extra_adds_its_requirements():
    meta = ("Name: distill-kit\nRequires-Dist: numpy>=1.24\nProvides-Extra: ncnn\nProvides-Extra: openvino\n"
            'Requires-Dist: ncnn>=1.0; extra == "ncnn"\nRequires-Dist: openvino>=2024.0; extra == \'openvino\'\n'
            'Requires-Dist: torch>=2.4; extra == "distill"\n')
    assert wh.base_requirements(meta, ["ncnn"]) == ["numpy>=1.24", "ncnn>=1.0"]
    assert wh.base_requirements(meta, ["NCNN", "openvino"]) == ["numpy>=1.24", "ncnn>=1.0", "openvino>=2024.0"]
    assert wh.extras_of(meta) == ["ncnn", "openvino"]
    # the project's own metadata has both device extras
    text = (ROOT / "pyproject.toml").read_text()
    assert 'ncnn = ["ncnn' in text and 'openvino = ["openvino' in text


def test_an_unknown_extra_is_named(tmp_path, monkeypatch):
    _fake_project_wheel(monkeypatch)
    with pytest.raises(UsageError, match="--extra tflite: not an extra of distill-kit"):
        wh.build_wheelhouse(wh.TARGETS["pi"], tmp_path / "p", download=FakeIndex(INDEX), extras=["tflite"])


def test_build_wheelhouse_writes_wheels_hashes_and_an_install_script(tmp_path, monkeypatch):
    _fake_project_wheel(monkeypatch)
    lines = []
    out = tmp_path / "dkit-jetson"
    pack = wh.build_wheelhouse(wh.TARGETS["jetson"], out, progress=lines.append, download=FakeIndex(INDEX))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.txt", "anyio-4.16.0-py3-none-any.whl", "distill_kit-0.1.0-py3-none-any.whl",
                     "exceptiongroup-1.3.2-py3-none-any.whl", "idna-3.20-py3-none-any.whl", "install.sh",
                     "numpy-2.2.6-py3-none-any.whl", "requirements.txt", "wheelhouse.json"]
    assert list(pack.wheels)[0] == "distill-kit"
    reqs = (out / "requirements.txt").read_text().splitlines()[1:]
    assert reqs[0].startswith("distill-kit==0.1.0 --hash=sha256:") and len(reqs) == 5
    assert all(" --hash=sha256:" in r for r in reqs)
    script = (out / "install.sh").read_text()
    assert "--no-index --find-links" in script and "(3, 10)" in script and "'aarch64'" in script
    assert os.access(out / "install.sh", os.X_OK)
    assert subprocess.run(["sh", "-n", str(out / "install.sh")]).returncode == 0
    doc = json.loads((out / "wheelhouse.json").read_text())
    assert (doc["target"], doc["python"], doc["platform"]) == ("jetson", "3.10", "linux_aarch64")
    assert any("onnxruntime" in n for n in doc["notes"])  # the Jetson's GPU onnxruntime comes from NVIDIA
    assert "pip install --no-index --find-links . distill-kit" in (out / "README.txt").read_text()
    assert any(line.startswith("building the distill-kit wheel") for line in lines)
    assert lines[-1].startswith("wheelhouse: ")
    assert [p.name for p in tmp_path.iterdir()] == ["dkit-jetson"]  # no temporary folder left beside it


def test_build_wheelhouse_is_atomic_and_replaces_only_a_wheelhouse(tmp_path, monkeypatch):
    _fake_project_wheel(monkeypatch, requires=("nowhere>=1",))
    out = tmp_path / "pack"
    out.mkdir()
    (out / wh.MARKER).write_text("{}")
    (out / "old.whl").write_text("old")
    with pytest.raises(wh.PackError, match="nowhere"):
        wh.build_wheelhouse(wh.TARGETS["pi"], out, download=FakeIndex(INDEX))
    assert sorted(p.name for p in out.iterdir()) == ["old.whl", wh.MARKER]  # the old one, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["pack"]
    _fake_project_wheel(monkeypatch)
    wh.build_wheelhouse(wh.TARGETS["pi"], out, download=FakeIndex(INDEX))
    assert not (out / "old.whl").exists() and (out / "install.sh").is_file()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a wheelhouse"):
        wh.build_wheelhouse(wh.TARGETS["pi"], other, download=FakeIndex(INDEX))


def test_the_project_wheel_is_built_from_a_copy_of_the_checkout(tmp_path):
    before = sorted(p.name for p in ROOT.iterdir())
    wheel = wh.build_project_wheel(wh.project_root(), tmp_path)
    assert wheel.name == "distill_kit-0.1.0-py3-none-any.whl"
    meta = wh.wheel_metadata(wheel)
    assert "Requires-Python: >=3.10" in meta
    assert {wh.requirement_name(r) for r in wh.base_requirements(meta)} >= {"numpy", "onnxruntime", "fastapi"}
    with zipfile.ZipFile(wheel) as zf:
        assert "dkit/edge/bundle/verifier.py" in zf.namelist() and "dkit/release/wheelhouse.py" in zf.namelist()
    assert sorted(p.name for p in ROOT.iterdir()) == before  # nothing written into the working tree


def test_cli_device_pack_arguments(capsys):
    bad = run_main(capsys, "device-pack", "--target", "nope", "--out", "x")
    assert bad.returncode == 2 and "unknown device target 'nope'" in bad.stderr
    assert bad.stderr.count("\n") == 1
    no_out = run_main(capsys, "device-pack")
    assert no_out.returncode == 2 and "--out DIR is required" in no_out.stderr
    help_text = run_main(capsys, "device-pack", "--help").stdout
    assert "pi (Raspberry Pi OS Bookworm" in help_text and "jetson" in help_text and "--check" in help_text


def test_readmes_say_how_to_install_on_a_device():
    readme = (ROOT / "README.md").read_text()
    assert "dkit device-pack" in readme and "--no-index --find-links" in readme
    device = (ROOT / "docs" / "DEVICE.md").read_text()
    for heading in ("Raspberry Pi 5 (Bookworm)", "Jetson Orin (JetPack 6)", "Installing offline",
                    "Checking a device: dkit doctor", "Running at boot", "The kiosk at boot"):
        assert f"## {heading}" in device
    from dkit.export.readme import _run_it

    bundle_readme = "\n".join(_run_it("detect"))
    assert "dkit device-pack --target pi" in bundle_readme and "--no-index --find-links" in bundle_readme
    assert "git+https://" in bundle_readme and "`pip install distill-kit` fails" in bundle_readme


# --- real: the package registry, a new virtual environment, no index ----------------------------------------------

def _clean_pip_env(tmp: Path) -> dict[str, str]:
    """No pip configuration of this machine (mirrors, find-links) reaches the offline install."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "HOME": str(tmp), "PIP_NO_CACHE_DIR": "1"}


def _interpreters() -> list[str]:
    """CPython 3.10-3.13 interpreters on this machine (pyenv's, Debian's 3.11.2 = Raspberry Pi OS Bookworm's)."""
    found = [str(p) for p in sorted(Path("/root/.pyenv/versions").glob("3.1[0-3].*/bin/python3.1[0-3]"))]
    return [*found, *(["/usr/bin/python3.11"] if Path("/usr/bin/python3.11").is_file() else [])]


@pytest.mark.slow
@pytest.mark.parametrize("python", _interpreters() or [sys.executable])
def test_a_real_wheelhouse_installs_offline_and_runs(python, tmp_path):
    """device-pack for this machine (x86_64) and `python`'s version from the registry, then its install.sh into a
    new virtual environment with --no-index: the base install resolves offline, runs the CLI, opens an archive."""
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "pack"
    made = run_dkit("device-pack", "--target", "x86_64", "--python", version, "--out", str(out), timeout=600)
    assert made.returncode == 0, made.stderr
    assert "dkit: wheelhouse: " in made.stderr
    env = {**_clean_pip_env(tmp_path), "PYTHON": python, "DKIT_VENV": str(tmp_path / "dkit")}
    installed = subprocess.run(["sh", str(out / "install.sh")], capture_output=True, text=True, env=env,
                               timeout=600, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    dkit = tmp_path / "dkit" / "bin" / "dkit"
    assert subprocess.run([str(dkit), "--version"], capture_output=True, text=True).stdout.startswith("dkit ")
    check = subprocess.run([str(dkit), "check", str(RECIPES / "coco128" / "kit.yaml"), "-q"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    py = tmp_path / "dkit" / "bin" / "python"
    probe = ("import importlib.util as u, io, json, sys, tarfile, tempfile; "
             "from dkit.edge.bundle.verifier import extract_tar;"
             "b = io.BytesIO(); t = tarfile.open(fileobj=b, mode='w'); i = tarfile.TarInfo('x/manifest.json');"
             "t.addfile(i, io.BytesIO(b'')); t.close(); b.seek(0); extract_tar(tarfile.open(fileobj=b), "
             "tempfile.mkdtemp()); import cv2, numpy, onnxruntime, fastapi, uvicorn; print(json.dumps("
             "[m for m in ('torch', 'ultralytics', 'open_clip', 'onnx', 'PIL') if u.find_spec(m)]))")
    done = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []  # none of the training stack
    wrong = subprocess.run(["sh", str(out / "install.sh")], capture_output=True, text=True, timeout=60,
                           env={**env, "PYTHON": shutil.which("false") or "false"})
    assert wrong.returncode == 1 and f"these wheels are for CPython {version}" in wrong.stderr
