"""The offline model store: found by file name first, downloads atomic, offline errors fast and exact.

Downloads are exercised against a real HTTP server on loopback; nothing here needs the network.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dkit.core.errors import DownloadError, NotInStoreError, UsageError
from dkit.core.store import ModelStore, dkit_home, download
from tests.conftest import RECIPES, run_dkit


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    short: set[str] = set()  # paths whose body is cut short of its Content-Length
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path in self.short else body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Files]]]:
    """A real HTTP server on 127.0.0.1 serving `handler.files`; yields (base URL, handler class)."""
    handler = type("Files", (_Files,), {"files": {}, "short": set(), "hits": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part")


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ home


def test_dkit_home_defaults_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("DKIT_HOME", raising=False)
    assert dkit_home() == Path.home() / ".cache" / "dkit"
    monkeypatch.setenv("DKIT_HOME", str(tmp_path / "x"))
    assert dkit_home() == tmp_path / "x"
    assert ModelStore().root == tmp_path / "x"


@pytest.mark.parametrize(("var", "value", "offline"), [
    ("DKIT_OFFLINE", "1", True), ("DKIT_OFFLINE", "true", True), ("HF_HUB_OFFLINE", "1", True),
    ("DKIT_OFFLINE", "0", False), ("DKIT_OFFLINE", "", False),
])
def test_offline_switch(store_home, monkeypatch, var, value, offline):
    monkeypatch.setenv(var, value)
    assert ModelStore().offline is offline


# ------------------------------------------------------------------------------------------ YOLO


def test_yolo_weights_are_found_by_file_name_before_any_download(store_home, monkeypatch, closed_port):
    (store_home / "yolov8n.pt").write_bytes(b"weights")
    monkeypatch.setenv("DKIT_YOLO_ASSETS_URL", f"http://127.0.0.1:{closed_port}/{{name}}")
    assert ModelStore().yolo_weights("yolov8n.pt") == str(store_home / "yolov8n.pt")


@pytest.mark.parametrize("spec", ["yolov8n.yaml", "yolo11s.yml"])
def test_yolo_architecture_files_need_no_weights(store_home, spec):
    assert ModelStore(offline=True).yolo_weights(spec) == spec


def test_yolo_weights_by_path(store_home, tmp_path):
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"w")
    assert ModelStore(offline=True).yolo_weights(str(weights)) == str(weights)
    with pytest.raises(NotInStoreError, match="no such file"):
        ModelStore().yolo_weights(str(tmp_path / "missing" / "mine.pt"))


def test_yolo_download_lands_in_the_store(store_home, server, monkeypatch):
    base, handler = server
    handler.files["/assets/yolov8s.pt"] = b"s" * 100_000
    monkeypatch.setenv("DKIT_YOLO_ASSETS_URL", base + "/assets/{name}")
    store = ModelStore()
    assert store.yolo_weights("yolov8s.pt") == str(store_home / "yolov8s.pt")
    assert (store_home / "yolov8s.pt").read_bytes() == b"s" * 100_000
    assert store.yolo_weights("yolov8s.pt") == str(store_home / "yolov8s.pt")
    assert handler.hits == ["/assets/yolov8s.pt"]  # the second call found the file by name
    assert leftovers(store_home) == []


@pytest.mark.parametrize(("case", "words"), [
    ("offline", ["offline mode", "place it at {home}/yolov8x.pt", "/yolov8x.pt"]),
    ("refused", ["unreachable", "place it at {home}/yolov8x.pt"]),
    ("404", ["HTTP Error 404", "place it at {home}/yolov8x.pt"]),
    ("cut short", ["ended early", "place it at {home}/yolov8x.pt"]),
])
def test_yolo_weights_that_cannot_be_had_name_the_file_and_leave_nothing(
    store_home, server, monkeypatch, closed_port, case, words
):
    base, handler = server
    if case == "offline":
        monkeypatch.setenv("DKIT_OFFLINE", "1")
        monkeypatch.setenv("DKIT_YOLO_ASSETS_URL", base + "/{name}")
    elif case == "refused":
        monkeypatch.setenv("DKIT_YOLO_ASSETS_URL", f"http://127.0.0.1:{closed_port}/{{name}}")
    else:
        monkeypatch.setenv("DKIT_YOLO_ASSETS_URL", base + "/{name}")
        if case == "cut short":
            handler.files["/yolov8x.pt"] = b"x" * 10_000
            handler.short.add("/yolov8x.pt")
    with pytest.raises((NotInStoreError, DownloadError)) as info:
        ModelStore().yolo_weights("yolov8x.pt")
    for word in words:
        assert word.format(home=store_home) in str(info.value)
    assert info.value.exit_code == 3
    assert not (store_home / "yolov8x.pt").exists() and leftovers(store_home) == []
    if case == "offline":
        assert handler.hits == []  # offline means no connection at all


def test_offline_error_names_the_public_url_by_default(store_home, monkeypatch):
    monkeypatch.setenv("DKIT_OFFLINE", "1")
    with pytest.raises(NotInStoreError) as info:
        ModelStore().yolo_weights("yolov8n.pt")
    assert "https://github.com/ultralytics/assets/releases/download/" in str(info.value)


# ------------------------------------------------------------------------------------------ CLIP


def test_clip_random_and_checkpoint_paths(store_home, tmp_path):
    store = ModelStore(offline=True)
    assert store.clip_checkpoint("ViT-B-32", "random") is None
    ckpt = tmp_path / "clip.safetensors"
    ckpt.write_bytes(b"c")
    assert store.clip_checkpoint("ViT-B-32", str(ckpt)) == ckpt
    with pytest.raises(NotInStoreError, match="no such file"):
        store.clip_checkpoint("ViT-B-32", str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pt"])
def test_clip_tag_found_in_the_store_by_file_name(store_home, suffix):
    (store_home / f"ViT-B-32_laion2b_s34b_b79k{suffix}").write_bytes(b"c")
    found = ModelStore(offline=True).clip_checkpoint("ViT-B-32", "laion2b_s34b_b79k")
    assert found == store_home / f"ViT-B-32_laion2b_s34b_b79k{suffix}"


@pytest.mark.parametrize(("model", "tag", "url"), [
    ("ViT-B-32", "laion2b_s34b_b79k",
     "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_model.safetensors"),
    ("ViT-B-32", "openai", "https://openaipublic.azureedge.net/clip/models/"),
])
def test_clip_tag_offline_names_file_place_and_source(store_home, monkeypatch, model, tag, url):
    pytest.importorskip("open_clip")
    monkeypatch.setenv("DKIT_OFFLINE", "1")
    with pytest.raises(NotInStoreError) as info:
        ModelStore().clip_checkpoint(model, tag)
    message = str(info.value)
    assert f"place it at {store_home}/{model}_{tag}." in message
    assert url in message


def test_clip_unknown_tag_lists_the_known_ones(store_home):
    pytest.importorskip("open_clip")
    with pytest.raises(UsageError, match="laion2b_s34b_b79k"):
        ModelStore(offline=True).clip_checkpoint("ViT-B-32", "no-such-tag")


# ------------------------------------------------------------------------------------------ data sets


def test_dataset_download_extract_and_reuse(store_home, server):
    base, handler = server
    archive = tar_gz({"toys/val/a.jpg": b"a", "toys/val/b.jpg": b"b", "toys/train/c.jpg": b"c"})
    handler.files["/toys.tar.gz"] = archive
    store = ModelStore()
    sha = hashlib.sha256(archive).hexdigest()
    images = store.dataset(base + "/toys.tar.gz", sha256=sha, subdir="toys/val")
    assert images == store_home / "data" / "toys" / "toys" / "val"
    assert sorted(p.name for p in images.iterdir()) == ["a.jpg", "b.jpg"]
    assert not (store_home / "data" / "toys.tar.gz").exists()  # the archive is not kept
    assert leftovers(store_home) == []
    assert ModelStore(offline=True).dataset(base + "/toys.tar.gz", subdir="toys/val") == images
    assert handler.hits == ["/toys.tar.gz"]


def test_dataset_zip(store_home, server):
    base, handler = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pics/x.png", b"x")
    handler.files["/pics.zip"] = buf.getvalue()
    assert ModelStore().dataset(base + "/pics.zip", subdir="pics") == store_home / "data" / "pics" / "pics"


def test_dataset_checksum_mismatch_leaves_nothing(store_home, server):
    base, handler = server
    handler.files["/toys.tgz"] = tar_gz({"a.jpg": b"a"})
    with pytest.raises(DownloadError, match="sha256"):
        ModelStore().dataset(base + "/toys.tgz", sha256="0" * 64)
    assert list((store_home / "data").iterdir()) == []


def test_dataset_archive_that_escapes_its_folder_is_refused(store_home, server):
    base, handler = server
    handler.files["/evil.tar.gz"] = tar_gz({"../../escaped.txt": b"gotcha"})
    with pytest.raises(DownloadError, match="cannot extract"):
        ModelStore().dataset(base + "/evil.tar.gz")
    assert not (store_home / "escaped.txt").exists() and not (store_home.parent / "escaped.txt").exists()
    assert not (store_home / "data" / "evil").exists() and leftovers(store_home) == []


def test_dataset_offline_says_where_to_extract(store_home):
    with pytest.raises(NotInStoreError) as info:
        ModelStore(offline=True).dataset("https://example.org/sets/toys.tgz", subdir="toys/val")
    message = str(info.value)
    assert "https://example.org/sets/toys.tgz" in message
    assert f"{store_home}/data/toys/toys/val" in message and "--data DIR" in message


def test_download_refuses_wrong_checksum_and_keeps_old_file(tmp_path, server):
    base, handler = server
    handler.files["/f.bin"] = b"new"
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError):
        download(base + "/f.bin", dest, sha256="1" * 64)
    assert dest.read_bytes() == b"old" and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------ CLI


def test_cli_fetch_offline_fails_fast_naming_each_file(store_home):
    """No network and nothing in the store: exit 3 within the timeout, one line per missing file."""
    result = run_dkit("fetch", str(RECIPES / "imagenette" / "kit.yaml"), env={"DKIT_OFFLINE": "1"}, timeout=60)
    assert result.returncode == 3, result.stderr
    assert f"place it at {store_home}/ViT-B-32_laion2b_s34b_b79k.safetensors" in result.stdout
    assert f"{store_home}/data/imagenette2-160/imagenette2-160/val" in result.stdout
    assert "optional: training starts from scratch" in result.stdout  # student weights are not required


def test_cli_fetch_unreachable_host_fails_fast(store_home, closed_port):
    result = run_dkit("fetch", str(RECIPES / "coco128" / "kit.yaml"),
                      env={"DKIT_YOLO_ASSETS_URL": f"http://127.0.0.1:{closed_port}/{{name}}"}, timeout=60)
    assert result.returncode == 3
    assert "unreachable" in result.stdout and f"place it at {store_home}/yolov8n.pt" in result.stdout


def test_cli_fetch_with_a_filled_store(store_home, assets):
    (store_home / "yolov8n.pt").symlink_to(assets / "models" / "yolov8n.pt")
    result = run_dkit("fetch", str(RECIPES / "coco128" / "kit.yaml"),
                      "--data", str(assets / "data/coco128/images/train2017"), env={"DKIT_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(f"ok       {store_home}/yolov8n.pt") == 2  # teacher and student


def test_cli_fetch_lists_the_clip_embed_backbone_checkpoint(store_home):
    """student.pretrained is a required file of the store: missing, exit 3 naming where it goes; present, ok."""
    kit = ["--set", "student.pretrained=mnv3.safetensors", "--set", "teacher.pretrained=random"]
    result = run_dkit("fetch", str(RECIPES / "quickdraw" / "kit.yaml"), *kit, env={"DKIT_OFFLINE": "1"}, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "backbone MISSING" in result.stdout and f"{store_home}/mnv3.safetensors" in result.stdout
    (store_home / "mnv3.safetensors").write_bytes(b"weights")
    result = run_dkit("fetch", str(RECIPES / "quickdraw" / "kit.yaml"), *kit, env={"DKIT_OFFLINE": "1"}, timeout=60)
    assert f"backbone ok       {store_home}/mnv3.safetensors" in result.stdout, result.stdout
