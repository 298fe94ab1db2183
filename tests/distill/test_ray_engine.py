"""The ray labeling engine (dkit.distill.engines.ray_data) on a local Ray: the same labels as the local engine,
resumable from the cache, and a teacher actor killed mid-run loses and duplicates nothing."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("open_clip")

from dkit.core.errors import MissingExtraError, UsageError  # noqa: E402
from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.run import RunDir  # noqa: E402
from dkit.core.store import ModelStore  # noqa: E402
from dkit.distill import engines  # noqa: E402
from dkit.distill.cache import TeacherCache  # noqa: E402
from dkit.distill.engines import ray_data  # noqa: E402
from dkit.distill.label import label_images  # noqa: E402
from dkit.distill.teachers import build_teacher  # noqa: E402
from tests.distill.test_label import clip_kit  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (3 logical CPUs: two teacher actors and the decode tasks)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's teacher factory travels by value
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def photos(assets, tmp_path) -> Path:
    """The real photos plus a truncated file, an empty one and a CMYK JPEG (a normalised copy)."""
    folder = tmp_path / "photos"
    shutil.copytree(assets / "data" / "photos", folder)
    data = (folder / "parrot.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.png").write_bytes(b"")
    from PIL import Image

    Image.open(folder / "hot_dog.jpg").convert("CMYK").save(folder / "cmyk.jpg")
    return folder


class SlowTeacher:
    """The kit's teacher, each actor writing its pid to `pids/` and taking `delay` s a batch, so that a test can
    kill one while it works."""

    def __init__(self, kit, pids: Path, delay: float):
        self.kit, self.pids, self.delay = kit, pids, delay

    def __call__(self):
        import time

        teacher = build_teacher(self.kit, ModelStore(offline=True))
        (self.pids / str(os.getpid())).touch()
        infer = teacher.infer

        def slow(images):
            time.sleep(self.delay)
            return infer(images)

        teacher.infer = slow
        return teacher


def _files(labels: Path) -> dict[str, bytes]:
    """The data set as written (links resolved to their targets' names), without the report."""
    out = {}
    for p in sorted(labels.rglob("*")):
        if p.is_file() and p.name != "report.html":
            out[p.relative_to(labels).as_posix()] = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
    return out


def test_ray_labels_equal_local_and_rerun_uses_the_cache(local_ray, photos, tmp_path):
    local = label_images(clip_kit(tmp_path, photos), tmp_path / "local", progress=False, report=False)
    kit = clip_kit(tmp_path, photos, overrides=["label.engine=ray", "label.actors=2"])
    first = label_images(kit, tmp_path / "ray", progress=False, report=False)
    assert _files(first.labels_dir) == _files(local.labels_dir)  # labels.jsonl, data.yaml, class folders, copies
    ok = sum(r.skipped is None for r in first.records)
    assert first.counts["inferred"] == ok == local.counts["inferred"] and first.counts["actors"] == 2
    assert first.counts["skipped"] == local.counts["skipped"] >= 2  # the truncated and the empty file, text files
    assert first.counts["duplicates_dropped"] == 0

    again = label_images(kit, tmp_path / "ray", progress=False, report=False)
    assert again.counts["inferred"] == 0 and again.counts["cached"] == ok
    assert (again.labels_dir / "labels.jsonl").read_bytes() == (local.labels_dir / "labels.jsonl").read_bytes()


def test_a_killed_teacher_actor_loses_and_duplicates_nothing(local_ray, photos, tmp_path):
    kit = clip_kit(tmp_path, photos, overrides=["label.engine=ray", "label.actors=2", "teacher.batch=1"])
    local = label_images(clip_kit(tmp_path, photos), tmp_path / "local", progress=False, report=False)
    pids = tmp_path / "pids"
    pids.mkdir()
    killed: list[int] = []

    def kill_one(arrived: int) -> None:  # after the first result: kill an actor that is working on another image
        if killed or arrived < 1:
            return
        victim = int(sorted(pids.iterdir())[0].name)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    run = tmp_path / "ray"
    run.mkdir()
    store = ModelStore(offline=True)
    teacher = build_teacher(kit, store)
    with TeacherCache(RunDir(run).cache_db) as cache:
        paths = sorted(p for p in photos.rglob("*") if p.is_file())
        records, counts = ray_data.label_all(kit, teacher, cache, photos, paths, run / "staging", False, store=store,
                                             make_teacher=SlowTeacher(kit, pids, 0.5), on_row=kill_one)
        assert killed, "no actor was killed"
        assert len(list(pids.iterdir())) >= 3  # two actors, and the one Ray restarted
        ok = [r for r in records if r.skipped is None]
        assert cache.count(teacher.cache_key) == len({r.sha256 for r in ok})  # each image once in the cache
    assert [r.image for r in records] == [str(p.relative_to(photos)) for p in paths]  # each file once, in order
    by_image = {r.image: r for r in local.records}
    for rec in records:
        want = by_image[rec.image]
        assert (rec.labels, rec.topk, rec.skipped, rec.sha256) == (want.labels, want.topk, want.skipped, want.sha256)
    assert counts["inferred"] == len(ok)


def test_missing_ray_is_a_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "dkit.distill.engines.ray_data")
    with pytest.raises(MissingExtraError, match=r"the 'scale' extra: .*pip install -c constraints.txt '\.\[scale\]'"):
        engines.engine("ray")
    with pytest.raises(UsageError, match="unknown labeling engine 'spark'"):
        engines.engine("spark")


def test_kit_keys_are_validated(tmp_path, photos):
    from dkit.core.errors import KitError

    with pytest.raises(KitError, match="label.engine"):
        clip_kit(tmp_path, photos, overrides=["label.engine=spark"])
    with pytest.raises(KitError, match="label.cpus_per_actor"):
        clip_kit(tmp_path, photos, overrides=["label.cpus_per_actor=0"])
    kit = load_kit(tmp_path / "kit.yaml", overrides=["label.address=ray://head:10001"])
    assert kit.label.address == "ray://head:10001" and kit.label.engine == "local"


def test_an_address_where_no_cluster_answers_fails_at_once_naming_it():
    import socket

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ray_data.RayEngineError, match=f"nothing answers at 127.0.0.1:{port}"):
            ray_data._check_reachable(address, timeout_s=2.0)
    with pytest.raises(ray_data.RayEngineError, match="expected 'auto', HOST:PORT"):
        ray_data._check_reachable("head-without-port")
    ray_data._check_reachable("auto")  # Ray finds the local cluster itself (or says there is none)
