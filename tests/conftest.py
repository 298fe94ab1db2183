"""Shared fixtures: the real assets beside the project, an isolated model store, the CLI in a subprocess."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fixture_cache import CACHE, cached, cached_path, source_files, source_key

# Every test (and every `dkit` subprocess it starts) gets a model store of its own, never the user's ~/.cache/dkit:
# `dkit run` keeps its measured backend choice there (dkit.edge.infer.select), the store keeps weights.
_HOME = tempfile.mkdtemp(prefix="dkit-test-home-")
os.environ["DKIT_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, True)

ROOT = Path(__file__).resolve().parents[1]
ASSETS = (ROOT / ".." / "shared" / "assets").resolve()
RECIPES = ROOT / "datasets"


BASE_TESTS = (ROOT / "tests" / "edge", ROOT / "tests" / "devtools")  # the device runtime's and tools' tests
SKIPPED_IMPORT = "could not import '"  # pytest.importorskip's reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `base` every test below BASE_TESTS not marked `devenv`: it must pass on a base install."""
    for item in items:
        if item.get_closest_marker("devenv") is None and any(item.path.is_relative_to(d) for d in BASE_TESTS):
            item.add_marker(pytest.mark.base)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a `devenv` test whose modules (the marker's arguments) are not installed, naming them."""
    marker = item.get_closest_marker("devenv")
    if marker is not None:
        missing = [m for m in marker.args if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"needs {', '.join(missing)} (not in a base install): runs in the dev venv")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A `base` test skipped because a module is missing fails instead: it needs the dev venv, so it must be
    marked `devenv(module)` (else `make test`, which runs base tests only in the base-only venv, never runs it)."""
    report = yield
    if report.skipped and item.get_closest_marker("base") is not None and isinstance(report.longrepr, tuple) \
            and SKIPPED_IMPORT in str(report.longrepr[2]):
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: {report.longrepr[2]}; a tests/edge or tests/devtools test that needs " \
                          "this module must be marked @pytest.mark.devenv(MODULE)"
    return report


@pytest.fixture
def assets() -> Path:
    """../shared/assets (real weights and images); the test is skipped when it is absent."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS} (they live beside the project, never in it)")
    return ASSETS


@pytest.fixture
def store_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model store ($DKIT_HOME) for this test, with the network allowed unless a test says otherwise."""
    home = tmp_path / "dkit-home"
    home.mkdir()
    monkeypatch.setenv("DKIT_HOME", str(home))
    for var in ("DKIT_OFFLINE", "HF_HUB_OFFLINE", "DKIT_YOLO_ASSETS_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


def run_dkit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m dkit ARGS` in a fresh interpreter, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dkit", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """`dkit ARGS` in this process (dkit.cli.main.main; argparse's exits caught), with what it wrote captured by
    `capsys`: the same result as `run_dkit` without starting an interpreter. For argument parsing, --help and
    errors raised before any real work; `run_dkit` stays for what must run as the user runs it."""
    from dkit.cli.main import main

    capsys.readouterr()  # what the test printed before
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["dkit", *args], code, out.out, out.err)


def link_images(source: Path, pattern: str, count: int, dest: Path) -> Path:
    """A folder `dest` of symlinks to the first `count` files of `source` matching `pattern` (real images,
    never copied into the repo, never modified)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(source.glob(pattern))[:count]:
        (dest / p.name).symlink_to(p)
    return dest


def yolo_store(assets: Path, root: Path):
    """An offline model store holding the real yolov8n.pt (by file name, as users place it)."""
    from dkit.core.store import ModelStore

    root.mkdir(parents=True, exist_ok=True)
    (root / "yolov8n.pt").symlink_to(assets / "models" / "yolov8n.pt")
    return ModelStore(root, offline=True)


JUDGE_IMAGES = 40
JUDGE_KIT = """\
name: judge-toy
data: {{images: {images}, val: 0.25, seed: 0}}
ontology:
  classes:
    animal: [an animal, a bird]
    food: [food]
    vehicle: [a car, a boat]
  background: [an empty background]
teacher: {{kind: clip, model: ViT-S-32-alt, pretrained: random, templates: ["a photo of {{}}.", "a sketch of {{}}."]}}
student: {{kind: clip-embed, model: mobilenetv3_small_050, imgsz: 64, epochs: 1, batch: 16}}
judge: {{prompt: a cat, prompts: [a cat, a raccoon driving a tractor], unsafe_prompts: [a weapon]}}
export: {{precisions: [fp32, int8], calibration_images: 8, archive: false}}
"""


def distill_and_export(tmp: Path, kit_text: str, count: int) -> tuple:
    """(kit, run_dir, store, export result): `count` real ImageNet photos through label, train and export with the
    kit YAML `kit_text` (its `{images}` filled in), in `tmp`, offline."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    from dkit.core.kit import load_kit
    from dkit.core.store import ModelStore
    from dkit.distill.label import label_images
    from dkit.distill.students import student_module
    from dkit.export.bundle import export_bundle

    images = link_images(ASSETS / "data/imagenet-sample", "*.JPEG", count, tmp / "imgs")
    (tmp / "kit.yaml").write_text(kit_text.format(images=images))
    kit = load_kit(tmp / "kit.yaml")
    store = ModelStore(tmp / "store", offline=True)
    run = tmp / "run"
    label_images(kit, run, store=store, progress=False, report=False)
    student_module(kit).train(kit, run, store=store, progress=False)
    return kit, run, store, export_bundle(kit, run, store=store)


@pytest.fixture(scope="session")
def judge_run(tmp_path_factory):
    """JUDGE_IMAGES real ImageNet photos labelled by a random CLIP teacher, a 64 px clip-embed student trained for one
    epoch and exported to a judge bundle at run_dir/bundle. Once per session."""
    pytest.importorskip("open_clip")
    pytest.importorskip("onnx")
    return distill_and_export(tmp_path_factory.mktemp("judge"), JUDGE_KIT, JUDGE_IMAGES)


@pytest.fixture(scope="session")
def judge_bundle(request) -> Path:
    """The judge bundle of `judge_run` (its run_dir/bundle), kept in build/test-fixtures/ (tests.fixture_cache) so
    later sessions and a base-only venv (no torch, open_clip or onnx: `make test-edge`) use it without training.
    Rebuilt when the kit, its images or any package source change; skipped when missing and not buildable here."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    images = sorted(p.name for p in (ASSETS / "data/imagenet-sample").glob("*.JPEG"))[:JUDGE_IMAGES]
    key = source_key([JUDGE_KIT, *images], source_files())
    hit = cached_path("judge-bundle", key)
    if hit is None:
        for module in ("torch", "open_clip", "onnx"):
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"no judge bundle cached in {CACHE} for these sources and {module} is not installed to "
                            "build one: run the tests once in the dev venv (`make test-edge` does)")
        _, run, _, _ = request.getfixturevalue("judge_run")
        hit = cached("judge-bundle", key, lambda out: shutil.copytree(run / "bundle", out / "bundle"))
    return hit / "bundle"
