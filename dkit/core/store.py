"""The offline model store: weights and data sets are found by file name before any download.

    from dkit.core.store import ModelStore

    store = ModelStore()                                   # $DKIT_HOME, default ~/.cache/dkit
    store.yolo_weights("yolov8n.pt")                       # -> $DKIT_HOME/yolov8n.pt
    store.clip_checkpoint("ViT-B-32", "laion2b_s34b_b79k")  # -> $DKIT_HOME/ViT-B-32_laion2b_s34b_b79k.safetensors
    store.dataset(url, sha256, subdir)                     # -> $DKIT_HOME/data/<archive name>/<subdir>
    store.backbone_checkpoint("mobilenetv3.safetensors")   # -> $DKIT_HOME/mobilenetv3.safetensors (student.pretrained)

Layout of the store (flat, by plain file name, so an offline machine is filled by copying files in):

    $DKIT_HOME/<yolo weights>.pt                 e.g. yolov8n.pt
    $DKIT_HOME/<model>_<tag>.<safetensors|bin|pt>  a CLIP checkpoint for an open_clip pretrained tag
    $DKIT_HOME/<name>.<safetensors|pth|pt|bin>   a timm checkpoint a clip-embed student's backbone starts from
    $DKIT_HOME/data/<archive name>/              an extracted data-set archive
    $DKIT_HOME/hub/                              the download cache behind the CLIP files

When a file is missing the store downloads it, unless `DKIT_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) is set
or the host does not answer within a few seconds; then `NotInStoreError` names the exact file, where
to put it and where to get it. Downloads go to a temporary file that is renamed into place only once
complete (and verified, where a checksum is known), so an interrupted download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from dkit.core.errors import DownloadError, NotInStoreError, UsageError, require
from dkit.core.kit import CHECKPOINT_SUFFIXES, RANDOM
from dkit.edge.bundle.hashing import sha256_file
from dkit.edge.bundle.home import dkit_home
from dkit.edge.bundle.verifier import extract_tar

log = logging.getLogger(__name__)

# Ultralytics publishes its weights as GitHub release assets; DKIT_YOLO_ASSETS_URL points elsewhere (a mirror).
YOLO_ASSETS_URL = "https://github.com/ultralytics/assets/releases/download/v8.3.0/{name}"
HF_FILE_URL = "https://huggingface.co/{repo}/resolve/main/{filename}"
CONNECT_TIMEOUT_S = 4.0
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar", ".zip")


def offline_forced() -> bool:
    """True when the environment says never to touch the network."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("DKIT_OFFLINE", "HF_HUB_OFFLINE"))


class ModelStore:
    """Finds model and data files by name in one folder, downloading what is missing when it can."""

    def __init__(self, root: str | os.PathLike | None = None, *, offline: bool | None = None):
        self.root = Path(root).expanduser() if root is not None else dkit_home()
        self.offline = offline_forced() if offline is None else offline

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r}, offline={self.offline})"

    def find(self, name: str) -> Path | None:
        """The file `name` in the store, or None."""
        path = self.root / name
        return path if path.is_file() else None

    # ------------------------------------------------------------------------------------------ YOLO

    def yolo_weights(self, spec: str) -> str:
        """Resolve a YOLO `model` value to something `ultralytics.YOLO()` loads without a network.

        An architecture file (`yolov8n.yaml`) is returned as is (no weights: trained from scratch);
        an existing path is used directly; a bare name (`yolov8n.pt`) is looked up in the store and
        downloaded into it when missing.
        """
        if spec.endswith((".yaml", ".yml")):
            return spec
        path = Path(spec).expanduser()
        if path.is_file():
            return str(path)
        if path.name != spec:  # a path, not a bare file name: never guess where else it might be
            raise NotInStoreError(f"YOLO weights not found: {spec} (no such file)")
        found = self.find(spec)
        if found is not None:
            return str(found)
        url = os.environ.get("DKIT_YOLO_ASSETS_URL", YOLO_ASSETS_URL).format(name=spec)
        self._fetch(url, self.root / spec, what=f"YOLO weights '{spec}'")
        return str(self.root / spec)

    # ------------------------------------------------------------------------------------------ CLIP

    def clip_checkpoint(self, model: str, pretrained: str) -> Path | None:
        """Resolve a CLIP teacher's weights: None for 'random', a path for a checkpoint file or a tag.

        For an open_clip pretrained tag the store file is `<model>_<tag>.<safetensors|bin|pt>`;
        when missing it is downloaded through open_clip's own download code into `hub/` and linked
        into the store under that name.
        """
        if pretrained == RANDOM:
            return None
        path = Path(pretrained).expanduser()
        if path.is_file():
            return path
        if path.name != pretrained or pretrained.lower().endswith(CHECKPOINT_SUFFIXES):
            raise NotInStoreError(f"CLIP checkpoint not found: {pretrained} (no such file)")
        stem = f"{model}_{pretrained}"
        for suffix in CHECKPOINT_SUFFIXES:
            found = self.find(stem + suffix)
            if found is not None:
                return found

        open_clip = require("open_clip", what="a CLIP teacher", extra="distill")
        cfg = open_clip.get_pretrained_cfg(model, pretrained)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(model)
            known = f"its tags are: {', '.join(tags)}" if tags else "see open_clip.list_pretrained() for the models"
            raise UsageError(f"open_clip knows no pretrained weights '{pretrained}' for model '{model}' "
                             f"(teacher.pretrained; {known}; or 'random', or a checkpoint path)")
        url = cfg.get("url") or HF_FILE_URL.format(repo=cfg.get("hf_hub", "").strip("/"),
                                                   filename="open_clip_model.safetensors")
        what = f"CLIP weights {model}/{pretrained}"
        target = self.root / f"{stem}{Path(urllib.parse.urlparse(url).path).suffix or '.safetensors'}"
        self._check_reachable(url, target, what)
        try:
            downloaded = open_clip.pretrained.download_pretrained(cfg, cache_dir=str(self.root / "hub"))
        except Exception as e:  # noqa: BLE001 - hub errors come in many types; all mean "not downloaded"
            raise NotInStoreError(self._missing_message(what, target, url, reason=str(e))) from e
        if not downloaded:
            raise NotInStoreError(self._missing_message(what, target, url, reason="open_clip returned no file"))
        target = self.root / f"{stem}{Path(downloaded).suffix}"
        _link_or_copy(Path(downloaded), target)
        return target

    # ------------------------------------------------------------------------------------------ student backbones

    def backbone_checkpoint(self, name: str) -> Path:
        """A student backbone's timm checkpoint (`student.pretrained`), by plain file name; never downloaded.

        There is no download URL for an arbitrary timm checkpoint, so a missing file is a `NotInStoreError`
        naming the file and the folder to put it in.
        """
        if Path(name).name != name:
            raise NotInStoreError(f"student.pretrained: {name!r} is a path; give the file name of a checkpoint "
                                  f"in the model store ({self.root})")
        found = self.find(name)
        if found is None:
            raise NotInStoreError(f"the student backbone checkpoint '{name}' (student.pretrained) is not in the "
                                  f"model store: place the timm checkpoint file at {self.root / name} (or set "
                                  "DKIT_HOME to the folder that has it)")
        return found

    # ------------------------------------------------------------------------------------------ data

    def dataset(self, url: str, *, sha256: str | None = None, subdir: str | None = None) -> Path:
        """An image archive, extracted into `data/<archive name>/`; returns that folder (or its `subdir`)."""
        name = _archive_name(url)
        folder = self.root / "data" / name
        images = folder / subdir if subdir else folder
        if folder.is_dir():
            if not images.is_dir():
                raise NotInStoreError(f"{folder} exists but has no folder {subdir}: remove it to download again")
            return images
        archive = self.root / "data" / Path(urllib.parse.urlparse(url).path).name
        what = f"the images archive {archive.name}"
        if not archive.is_file():
            try:
                self._fetch(url, archive, what=what, sha256=sha256)
            except NotInStoreError as e:
                raise NotInStoreError(
                    f"{e}; or extract it yourself so that {images} exists, or pass --data DIR"
                ) from e
        elif sha256 is not None:
            _verify(archive, sha256)
        _extract(archive, folder)
        archive.unlink()
        if not images.is_dir():
            raise DownloadError(f"{archive.name} has no folder {subdir} (data.subdir); see {folder}")
        return images

    # ------------------------------------------------------------------------------------------ network

    def _fetch(self, url: str, dest: Path, *, what: str, sha256: str | None = None) -> None:
        self._check_reachable(url, dest, what)
        log.info("downloading %s from %s", what, url)
        try:
            download(url, dest, sha256=sha256)
        except DownloadError as e:  # cut short or corrupt: retrying may help
            raise DownloadError(f"{e}; retry, or {self._placement(dest, url)}") from e
        except urllib.error.HTTPError as e:
            raise NotInStoreError(self._missing_message(what, dest, url, reason=str(e))) from e
        except (urllib.error.URLError, OSError) as e:  # broken connections, timeouts
            reason = getattr(e, "reason", None) or e
            raise NotInStoreError(self._missing_message(what, dest, url, reason=str(reason))) from e

    def _check_reachable(self, url: str, dest: Path, what: str) -> None:
        """Fail within seconds, naming the file to place, when there is no way to download."""
        if self.offline:
            raise NotInStoreError(self._missing_message(what, dest, url, reason="offline mode (DKIT_OFFLINE)"))
        reason = unreachable(url)
        if reason is not None:
            raise NotInStoreError(self._missing_message(what, dest, url, reason=reason))

    @classmethod
    def _missing_message(cls, what: str, dest: Path, url: str, *, reason: str) -> str:
        return f"{what} is not in the model store and cannot be downloaded ({reason}): {cls._placement(dest, url)}"

    @staticmethod
    def _placement(dest: Path, url: str) -> str:
        return f"download {url} on a machine with a network and place it at {dest}"


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when the URL's host accepts a TCP connection within `timeout` seconds, else the reason."""
    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http(s) URL: {url}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{parts.hostname}:{port} is unreachable: {e.strerror or e}"
    return None


def download(url: str, dest: Path, *, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Stream `url` to `dest` atomically (temp file + rename), with a progress bar; verify sha256 if given."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "distill-kit"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=None, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise DownloadError(f"download of {url} ended early: {out.tell()} of {total} bytes")
        if sha256 is not None and digest.hexdigest().lower() != sha256.lower():
            raise DownloadError(f"download of {url} has sha256 {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _verify(path: Path, sha256: str) -> None:
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise DownloadError(f"{path} has sha256 {actual}, expected {sha256}: delete it and retry")


def _archive_name(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    raise NotInStoreError(f"data.url must point at a .tar.gz, .tgz, .tar.xz, .tar.bz2, .tar or .zip archive: {url}")


def _extract(archive: Path, folder: Path) -> None:
    """Unpack into a temporary sibling folder, then rename it into place: never a half-extracted folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)  # zipfile strips absolute paths and '..'
        else:
            with tarfile.open(archive) as tf:
                extract_tar(tf, tmp)  # refuses links and paths that leave the folder (any Python)
        os.replace(tmp, folder)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"cannot extract {archive}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: Path, dest: Path) -> None:
    """Give the downloaded file its store name (a hard link when possible, else an atomic copy)."""
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src.resolve(), tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
