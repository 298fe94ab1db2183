"""The device wheelhouse: everything a base install needs for one device, in one folder, installable offline.

    from dkit.release.wheelhouse import build_wheelhouse, check_wheels, format_table

    pack = build_wheelhouse(TARGETS["pi"], out=Path("dkit-pi"))      # python 3.11, manylinux aarch64
    rows = check_wheels()                                           # CPython 3.10-3.13 x aarch64/x86_64
    print(format_table(rows))

Runs on the training machine (or any machine with a network and pip), never on the device. A wheelhouse holds:
- the project's own wheel (`pip wheel --no-deps` of the source checkout, built in a private copy of it);
- a wheel of every base dependency (the `Requires-Dist` of that wheel without an extra, and theirs) for the
  target's platform and Python (`pip download --only-binary=:all: --platform ... --python-version ...`), pinned by
  constraints.txt where it pins a base dependency (onnxruntime: what the bundles were verified with). A pin with no
  wheel for the target (onnxruntime 1.31 has none for CPython 3.10) is dropped and said so (`PackResult.notes`),
  or is an error with `strict=True`;
- `requirements.txt` (every wheel as name==version with its sha256, so pip checks each file), `install.sh` (a
  virtual environment, then `pip install --no-index --find-links .`), `README.txt` and `wheelhouse.json`.
The folder is written beside OUT under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dkit.core.errors import DkitError, UsageError
from dkit.core.files import atomic_write, replace_dir

PROJECT = "distill-kit"
MARKER = "wheelhouse.json"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
CHECK_ARCHES = ("aarch64", "x86_64")
CHECK_GLIBC = (2, 28)  # what the check asks for: manylinux2014 .. manylinux_2_28, wheels any glibc >= 2.28 runs
Progress = Callable[[str], None]


class PackError(DkitError):
    """A wheelhouse could not be made: pip found no wheel for a package, a build failed."""

    exit_code = 1
    missing: list[str] = []  # the packages without a wheel, where known (set per instance)


@dataclass(frozen=True)
class Target:
    """A device family: CPU architecture, the Python it ships, the glibc it has (the newest manylinux it runs)."""

    name: str
    arch: str  # aarch64 | x86_64
    python: str  # "3.11"
    glibc: tuple[int, int]
    about: str
    note: str = ""  # said when the pack is made, and written into README.txt
    extras: tuple[str, ...] = ()  # the extras packed unless --extra says otherwise (pi: the NCNN backend)

    @property
    def platform(self) -> str:
        return f"linux_{self.arch}"


JETSON_NOTE = ("This pack ships the CPU onnxruntime from PyPI. For the Jetson's GPU (CUDA/TensorRT providers) install "
               "NVIDIA's onnxruntime-gpu build for JetPack 6 from NVIDIA's Jetson package index over it "
               "(docs/DEVICE.md, 'Jetson Orin (JetPack 6)'); PyPI has no onnxruntime-gpu wheel for aarch64.")
TARGETS = {
    "pi": Target("pi", "aarch64", "3.11", (2, 36),
                 "Raspberry Pi 5/4, Raspberry Pi OS Bookworm 64-bit (Python 3.11, glibc 2.36)",
                 extras=("ncnn",)),  # NCNN: the fastest backend on a Pi (docs/DEVICE.md), for bundles that ship it
    "jetson": Target("jetson", "aarch64", "3.10", (2, 35),
                     "Jetson Orin, JetPack 6 / Ubuntu 22.04 (Python 3.10, glibc 2.35)", JETSON_NOTE),
    "linux_aarch64": Target("linux_aarch64", "aarch64", "3.11", CHECK_GLIBC, "any 64-bit ARM Linux with glibc >= 2.28"),
    "linux_x86_64": Target("linux_x86_64", "x86_64", "3.11", CHECK_GLIBC, "any x86-64 Linux with glibc >= 2.28"),
}
TARGETS["x86_64"] = TARGETS["linux_x86_64"]
TARGETS["aarch64"] = TARGETS["linux_aarch64"]


def target_for(name: str, python: str | None = None) -> Target:
    """The target called `name` (TARGETS), with its Python replaced by `python` ("3.12") when given."""
    if name not in TARGETS:
        raise UsageError(f"unknown device target {name!r}: expected one of {', '.join(TARGETS)}")
    t = TARGETS[name]
    if python is None:
        return t
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise UsageError(f"--python: expected a version like 3.11, got {python!r}")
    return dataclasses.replace(t, python=python)


def platform_tags(arch: str, glibc: tuple[int, int]) -> list[str]:
    """pip's --platform values for manylinux wheels that run on `arch` with `glibc`: pip does not expand a
    manylinux_2_X tag to the older ones, so every one is named, newest first."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def norm(name: str) -> str:
    """A distribution name in its normal form (PEP 503): 'PyYAML' -> 'pyyaml', 'ruamel.yaml' -> 'ruamel-yaml'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(text: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
    return norm(m.group(1)) if m else ""


def base_requirements(metadata_text: str, extras: Sequence[str] = ()) -> list[str]:
    """The `Requires-Dist` lines of a wheel's METADATA that belong to no extra (what a base install needs), plus
    those of `extras` (e.g. the device backends `ncnn`, `openvino`) with their extra marker taken off."""
    reqs = []
    wanted = {norm(e) for e in extras}
    for line in metadata_text.splitlines():
        if line.startswith("Requires-Dist:"):
            req, _, marker = line.split(":", 1)[1].strip().partition(";")
            if "extra" not in marker:
                reqs.append(line.split(":", 1)[1].strip())
            elif (m := re.fullmatch(r"\s*extra\s*==\s*['\"]([^'\"]+)['\"]\s*", marker)) and norm(m.group(1)) in wanted:
                reqs.append(req.strip())
    return reqs


def extras_of(metadata_text: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in metadata_text.splitlines() if line.startswith("Provides-Extra:")]


def base_constraints(constraints_text: str, requirements: Iterable[str]) -> list[str]:
    """The lines of constraints.txt that pin one of `requirements` (torch pins and comments are left out)."""
    names = {requirement_name(r) for r in requirements}
    out = []
    for line in constraints_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and requirement_name(line) in names:
            out.append(line)
    return out


def wheel_name_version(filename: str) -> tuple[str, str]:
    """('onnxruntime', '1.31.1') from 'onnxruntime-1.31.1-cp311-cp311-manylinux_2_27_x86_64.whl'."""
    parts = filename[:-len(".whl")].split("-")
    return norm(parts[0]), parts[1]


def sha256(path: Path) -> str:
    from dkit.edge.bundle.hashing import sha256_file

    return sha256_file(path)


# --- the project's own wheel ---------------------------------------------------------------------------------------

def project_root(source: Path | None = None) -> Path:
    """The source checkout to build the project's wheel from: `source`, or the checkout this module runs from."""
    root = Path(source) if source is not None else Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or not re.search(r'^name\s*=\s*"distill-kit"', pyproject.read_text(), re.M):
        where = f"{root} is not a distill-kit source checkout (no pyproject.toml naming it)"
        raise UsageError(f"{where}: the wheelhouse builds the project's wheel from the source; pass --source DIR")
    return root


def _package_dirs(pyproject_text: str) -> list[str]:
    """The top-level source folders of [tool.setuptools.package-dir] ("dkit.edge" = "edge" -> edge), and dkit."""
    section = re.search(r"^\[tool\.setuptools\.package-dir\]\s*$(.*?)(?=^\[|\Z)", pyproject_text, re.M | re.S)
    dirs = re.findall(r'^\s*"[^"]+"\s*=\s*"([^"/]+)', section.group(1), re.M) if section else []
    return sorted({"dkit", *dirs})


def build_project_wheel(root: Path, dest: Path, *, python: str = sys.executable) -> Path:
    """`pip wheel --no-deps` of a private copy of the checkout at `root` (only what the build reads: pyproject,
    README, LICENSE and the package folders), so a build never writes into, or races with, the working tree."""
    pyproject = (root / "pyproject.toml").read_text()
    with tempfile.TemporaryDirectory(prefix="dkit-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.py", "setup.cfg", "MANIFEST.in"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        for d in _package_dirs(pyproject):
            if (root / d).is_dir():
                shutil.copytree(root / d, src / d, ignore=ignore)
        isolation = [] if _has_module(python, "setuptools") else ["--use-pep517"]
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "--quiet", "-w", str(dest),
               *(["--no-build-isolation"] if not isolation else isolation), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise PackError(f"building the {PROJECT} wheel failed: {_last_error(done.stderr)}")
    wheels = sorted(dest.glob("distill_kit-*.whl"))
    if not wheels:
        raise PackError(f"building the {PROJECT} wheel wrote no distill_kit-*.whl into {dest}")
    return wheels[-1]


def _has_module(python: str, module: str) -> bool:
    if python == sys.executable:
        import importlib.util

        return importlib.util.find_spec(module) is not None
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name).decode("utf-8")


# --- resolving the dependencies for a platform ---------------------------------------------------------------------

@dataclass
class Resolution:
    """What pip found for one (Python, platform): the wheels by name, or the packages that have none."""

    python: str
    platform: str
    versions: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # pins dropped because no wheel matches them
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.error


def pip_download(requirements: Sequence[str], constraints: Sequence[str], *, python_version: str, arch: str,
                 glibc: tuple[int, int], dest: Path, pip: Sequence[str] = (sys.executable, "-m", "pip"),
                 ) -> subprocess.CompletedProcess[str]:
    """`pip download --only-binary=:all:` of `requirements` for CPython `python_version` on manylinux `arch`."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="dkit-constraints-", delete=False) as f:
        f.write("".join(f"{c}\n" for c in constraints))
    try:
        cmd = [*pip, "download", "--disable-pip-version-check", "--quiet", "--only-binary=:all:",
               "--implementation", "cp", "--python-version", python_version, "--dest", str(dest)]
        for tag in platform_tags(arch, glibc):
            cmd += ["--platform", tag]
        cmd += ["-c", f.name, *requirements]
        return subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(f.name)


def resolve(requirements: Sequence[str], constraints: Sequence[str], *, python_version: str, arch: str,
            glibc: tuple[int, int], dest: Path, strict: bool = False, download=pip_download) -> Resolution:
    """Download the wheels of `requirements` for the platform into `dest`, with `constraints`; when that is
    impossible, again without the constraints (unless `strict`), noting each pin the result does not meet.
    Then `complete` the set for the target's own environment markers."""
    res = Resolution(python_version, f"linux_{arch}")
    done = download(requirements, constraints, python_version=python_version, arch=arch, glibc=glibc, dest=dest)
    if done.returncode != 0 and constraints and not strict:
        first_error = _last_error(done.stderr)
        for stale in dest.glob("*"):
            stale.unlink()
        done = download(requirements, [], python_version=python_version, arch=arch, glibc=glibc, dest=dest)
        if done.returncode == 0:
            versions = _wheels_in(dest)
            for c in constraints:
                name = requirement_name(c)
                have = versions.get(name)
                if have is not None and not _satisfies(have, c):
                    res.notes.append(f"{name} {have} instead of the pinned {c} (constraints.txt): no wheel of the "
                                     f"pinned versions for CPython {python_version} {res.platform}")
            if not res.notes:
                res.notes.append(f"resolved only without constraints.txt ({first_error})")
            constraints = []
    if done.returncode != 0:
        res.missing = _missing_packages(done.stderr)
        res.error = _last_error(done.stderr)
        return res
    try:
        complete(requirements, constraints, python_version=python_version, arch=arch, glibc=glibc, dest=dest,
                 download=download)
    except PackError as e:
        res.missing, res.error = e.missing, str(e)
        return res
    res.versions = _wheels_in(dest)
    return res


def target_environment(python_version: str, arch: str) -> dict[str, str]:
    """The environment markers (PEP 508) of CPython `python_version` on Linux `arch`."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": arch,
            "platform_release": "", "platform_version": "", "implementation_name": "cpython",
            "implementation_version": f"{python_version}.0", "platform_python_implementation": "CPython"}


def needed(requirements: Sequence[str], metadata: dict[str, str], env: dict[str, str]) -> tuple[set[str], list[str]]:
    """(names of the distributions a target with markers `env` installs for `requirements`, the requirements
    among them that `metadata` (name -> METADATA text of the wheels at hand) has no wheel for)."""
    from packaging.requirements import Requirement

    names: set[str] = set()
    absent: list[str] = []
    todo = [Requirement(r) for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        name, extras = norm(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        names.add(name)
        if name not in metadata:  # without its marker: pip would evaluate that for this machine again
            absent.append(req.name + (f"[{','.join(sorted(extras))}]" if extras else "") + str(req.specifier))
            continue
        for line in metadata[name].splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            dep = Requirement(line.split(":", 1)[1].strip())
            envs = [{**env, "extra": e} for e in (extras or {""})]
            if dep.marker is None or any(dep.marker.evaluate(e) for e in envs):
                todo.append(dep)
    return names, absent


def complete(requirements: Sequence[str], constraints: Sequence[str], *, python_version: str, arch: str,
             glibc: tuple[int, int], dest: Path, download=pip_download) -> None:
    """pip evaluates environment markers for the interpreter it runs on, not for --python-version/--platform: a
    wheelhouse for 3.10 made on 3.11 lacks `exceptiongroup; python_version < "3.11"` (anyio needs it there). So
    the dependency tree is walked again with the target's markers: what is missing is downloaded too, and a wheel
    that only this machine's markers asked for is removed."""
    env = target_environment(python_version, arch)
    for _ in range(8):
        metadata = {wheel_name_version(p.name)[0]: wheel_metadata(p) for p in dest.glob("*.whl")}
        names, absent = needed(requirements, metadata, env)
        if not absent:
            for p in dest.glob("*.whl"):
                if wheel_name_version(p.name)[0] not in names:
                    p.unlink()
            return
        done = download(absent, constraints, python_version=python_version, arch=arch, glibc=glibc, dest=dest)
        if done.returncode != 0:
            err = PackError(f"no wheel for CPython {python_version} linux_{arch} of: {', '.join(absent)} "
                            f"({_last_error(done.stderr)})")
            err.missing = _missing_packages(done.stderr)
            raise err
    raise PackError(f"the dependencies for CPython {python_version} linux_{arch} did not settle: {absent}")


def _wheels_in(folder: Path) -> dict[str, str]:
    return dict(sorted(wheel_name_version(p.name) for p in folder.glob("*.whl")))


def _satisfies(version: str, requirement: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors packaging, but only for itself; without it a dropped pin is assumed unmet
        return False
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def _missing_packages(stderr: str) -> list[str]:
    found = re.findall(r"(?:satisfies the requirement|No matching distribution found for) ([^\s(]+)", stderr)
    found += re.findall(r"Cannot install ([^\s(]+)", stderr)
    return list(dict.fromkeys(found)) or ["?"]


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("ERROR")]
    return (lines[0] if lines else (stderr.strip().splitlines() or ["(no output)"])[-1])[:300]


# --- the wheelhouse ------------------------------------------------------------------------------------------------

@dataclass
class PackResult:
    out: Path
    target: Target
    wheels: dict[str, str]  # name -> version, the project first
    notes: list[str]


def read_constraints(root: Path) -> str:
    path = root / "constraints.txt"
    return path.read_text() if path.is_file() else ""


def build_wheelhouse(target: Target, out: Path, *, source: Path | None = None, strict: bool = False,
                     progress: Progress = lambda s: None, download=pip_download,
                     extras: Sequence[str] = ()) -> PackResult:
    """Write the wheelhouse for `target` at `out` (replacing an earlier wheelhouse there, never another folder)."""
    out = Path(out).absolute()
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not a wheelhouse (no {MARKER}): choose a new folder")
    root = project_root(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="dkit-own-") as own_dir:
            progress(f"building the {PROJECT} wheel from {root}")
            own = build_project_wheel(root, Path(own_dir))
            metadata = wheel_metadata(own)
            unknown = sorted(set(map(norm, extras)) - set(map(norm, extras_of(metadata))))
            if unknown:
                raise UsageError(f"--extra {', '.join(unknown)}: not an extra of {PROJECT} (it has: "
                                 f"{', '.join(extras_of(metadata))})")
            requirements = base_requirements(metadata, extras)
            constraints = base_constraints(read_constraints(root), requirements)
            progress(f"downloading {len(requirements)} base dependencies and theirs for CPython {target.python} "
                     f"{target.platform} (glibc {target.glibc[0]}.{target.glibc[1]})"
                     + (f", pinned: {', '.join(constraints)}" if constraints else ""))
            res = resolve(requirements, constraints, python_version=target.python, arch=target.arch,
                          glibc=target.glibc, dest=tmp, strict=strict, download=download)
            if not res.ok:
                raise PackError(f"no wheel for CPython {target.python} {target.platform} of: "
                                f"{', '.join(res.missing)} ({res.error})")
            shutil.copy2(own, tmp / own.name)
        for note in res.notes:
            progress(f"note: {note}")
        wheels = {norm(PROJECT): wheel_name_version(own.name)[1],
                  **{k: v for k, v in res.versions.items() if k != norm(PROJECT)}}
        progress(f"{len(wheels)} wheels: " + ", ".join(f"{k} {v}" for k, v in wheels.items()))
        _write_requirements(tmp)
        notes = [*res.notes, *([target.note] if target.note else [])]
        atomic_write(tmp / "install.sh", install_script(target))
        os.chmod(tmp / "install.sh", 0o755)
        atomic_write(tmp / "README.txt", readme_text(target, wheels, notes))
        doc = {"schema": 1, "project": PROJECT, "target": target.name, "about": target.about,
               "python": target.python, "platform": target.platform, "glibc": ".".join(map(str, target.glibc)),
               "platform_tags": platform_tags(target.arch, target.glibc), "constraints": constraints,
               "wheels": wheels, "notes": notes}
        atomic_write(tmp / MARKER, json.dumps(doc, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"wheelhouse: {out}  (on the device: sh {out.name}/install.sh)")
    return PackResult(out, target, wheels, notes)


def _write_requirements(folder: Path) -> None:
    """requirements.txt: every wheel in `folder` as name==version with its sha256 (pip's hash-checking mode)."""
    lines = ["# Every wheel of this folder, with its sha256: pip installs exactly these files (install.sh)."]
    wheels = sorted(folder.glob("*.whl"), key=lambda p: (wheel_name_version(p.name)[0] != norm(PROJECT), p.name))
    for p in wheels:
        name, version = wheel_name_version(p.name)
        lines.append(f"{name}=={version} --hash=sha256:{sha256(p)}")
    atomic_write(folder / "requirements.txt", "\n".join(lines) + "\n")


def install_script(target: Target) -> str:
    """install.sh: check the interpreter is the target's, make ~/dkit, install every wheel from this folder."""
    major, minor = target.python.split(".")
    wrong = f"sys.version_info[:2] != ({major}, {minor}) or platform.machine() != '{target.arch}'"
    have = "print(sys.version.split()[0], platform.machine())"
    return f"""#!/bin/sh
# Installs {PROJECT} (the edge runtime: dkit run, dkit serve) from this folder, with no network:
#   sh install.sh      ->  a virtual environment at ~/dkit, then ~/dkit/bin/dkit
# DKIT_VENV=/opt/dkit chooses another place; PYTHON=python{target.python} another interpreter.
# Made for: {target.about}: CPython {target.python}, linux {target.arch}.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${{PYTHON:-python3}}
VENV=${{DKIT_VENV:-$HOME/dkit}}
if ! "$PYTHON" -c "import platform, sys; sys.exit({wrong})" 2>/dev/null; then
  echo "install.sh: these wheels are for CPython {target.python} on {target.arch};" \\
       "$PYTHON is $("$PYTHON" -c "import platform, sys; {have}" 2>/dev/null || echo missing)." \\
       "Make a wheelhouse for it: dkit device-pack --target ... --python X.Y" >&2
  exit 1
fi
"$PYTHON" -m venv "$VENV" &&
  "$VENV/bin/pip" install --no-index --find-links "$HERE" --require-hashes -r "$HERE/requirements.txt"
echo "installed: $VENV/bin/dkit  (try: $VENV/bin/dkit --version)"
"""


def readme_text(target: Target, wheels: dict[str, str], notes: Sequence[str]) -> str:
    lines = [f"{PROJECT} wheelhouse for {target.about}", "",
             "Install with no network (copy this folder to the device first):", "",
             "    sh install.sh                       # a virtual environment at ~/dkit",
             "    ~/dkit/bin/dkit run bundle/ --source 0 --jsonl", "",
             "or by hand:", "",
             f"    python3 -m venv ~/dkit && ~/dkit/bin/pip install --no-index --find-links . {PROJECT}", "",
             f"Wheels (CPython {target.python}, {target.platform}):", ""]
    lines += [f"    {k} {v}" for k, v in wheels.items()]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --- the check: every base dependency has wheels for CPython 3.10-3.13 on aarch64 and x86_64 -----------------------

@dataclass
class WheelCheck:
    """The wheel check's answer: the base dependencies, their pins, and one resolution per (Python, platform)."""

    requirements: list[str]  # the base dependencies, as the project's wheel states them
    constraints: list[str]  # the lines of constraints.txt that pin one of them
    rows: list[Resolution]  # one per (Python, platform)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def check_wheels(*, pythons: Sequence[str] = PYTHONS, arches: Sequence[str] = CHECK_ARCHES,
                 glibc: tuple[int, int] = CHECK_GLIBC, source: Path | None = None, progress: Progress = lambda s: None,
                 download=pip_download) -> WheelCheck:
    """Resolve the base dependencies (with the constraints) for every (Python, platform); nothing is kept."""
    root = project_root(source)
    with tempfile.TemporaryDirectory(prefix="dkit-wheels-check-") as tmp:
        progress(f"building the {PROJECT} wheel from {root}")
        own = build_project_wheel(root, Path(tmp) / "own")
        requirements = base_requirements(wheel_metadata(own))
        constraints = base_constraints(read_constraints(root), requirements)
        rows = []
        for py in pythons:
            for arch in arches:
                progress(f"resolving for CPython {py} linux_{arch}")
                dest = Path(tmp) / f"{py}-{arch}"
                row = resolve(requirements, constraints, python_version=py, arch=arch, glibc=glibc, dest=dest,
                              download=download)
                shutil.rmtree(dest, ignore_errors=True)
                rows.append(row)
    return WheelCheck(requirements, constraints, rows)


def format_table(rows: Sequence[Resolution], requirements: Sequence[str] = ()) -> str:
    """A Markdown table: Python x platform -> the resolved versions of the base dependencies, or what is missing."""
    names = [requirement_name(r) for r in requirements] or sorted({n for r in rows for n in r.versions})
    head = ["Python", "platform", "result", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        result = ("ok" if not r.notes else "ok, pin dropped") if r.ok else "MISSING: " + ", ".join(r.missing)
        lines.append("| " + " | ".join([r.python, r.platform, result, *(r.versions.get(n, "–") for n in names)]) + " |")
    notes = [f"- CPython {r.python} {r.platform}: {n}" for r in rows for n in r.notes]
    notes += [f"- CPython {r.python} {r.platform}: {r.error}" for r in rows if r.error]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
