"""The bundle: the one folder (or .tar.gz) copied to a device, and the verifier that guards it.

    from dkit.edge.bundle import open_bundle

    bundle = open_bundle("runs/coco128/bundle")        # or "bundle.tar.gz"
    bundle.manifest.task, bundle.path("student.onnx")   # manifest: a dkit.edge.bundle.manifest.Manifest

A bundle is model files plus `manifest.json`, which says everything the device needs (task, inputs,
preprocessing, classes, decoding, thresholds, ...) and the sha256 of every other file in the bundle.
`open_bundle` checks, before anything is loaded: the manifest parses, its schema version is one this
runtime reads, it parses into the typed Manifest (dkit.edge.bundle.manifest: required keys, types), every
listed file exists inside the bundle with the listed sha256, and no file is present that the manifest
does not list. Nothing is unpickled, ever. An archive is unpacked into a private temporary folder first,
refusing links and paths that leave it. Used by `dkit export` at the end (on what it wrote) and by the
edge at load time; the writer is dkit.export.manifest.write_manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dkit.edge.bundle.hashing import sha256_file
from dkit.edge.bundle.manifest import (  # noqa: F401 (SCHEMA_VERSION re-exported)
    SCHEMA_VERSION,
    UNTRAINED_WARNING,
    Manifest,
    ManifestError,
)

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)
_warned_untrained: set[str] = set()  # bundles already announced as untrained in this process (one line each)


class BundleError(Exception):
    """A bundle that must not be loaded; the message names the file or key and what is wrong."""


class NoSuchBundleError(BundleError):
    """The path names no bundle at all (a wrong argument, exit 2 in the CLI), rather than a broken one."""


@dataclass
class Bundle:
    """An opened, verified bundle (from open_bundle, not built by hand): its folder and parsed manifest.
    Use it as a context manager, or call close(), to remove the private copy an archive was unpacked into."""

    root: Path  # the folder the files are in (a private copy for an archive)
    manifest: Manifest  # parsed and validated once, by verify()
    source: Path  # what was opened: the folder or the archive
    _tmp: str | None = field(default=None, repr=False)

    def path(self, name: str) -> Path:
        """The absolute path of a file the manifest lists."""
        if name not in self.manifest.files:
            raise BundleError(f"{self.source}: {name!r} is not a file of this bundle")
        return self.root / name

    def close(self) -> None:
        """Remove the private copy of an unpacked archive (a folder bundle is left alone)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bundle(path: str | os.PathLike, *, announce: bool = True) -> Bundle:
    """Open and verify a bundle folder or archive; raises BundleError naming what is wrong (NoSuchBundleError, with
    a "did you mean" when the folder holds a bundle, e.g. a run folder, for a path that is no bundle at all). A
    bundle made from an untrained teacher is announced with a warning, once per process (`announce=False`: the
    export's own checks of what it is writing, whose kit warned already)."""
    source = Path(path)
    if source.is_dir():
        if not (source / MANIFEST).exists():
            raise NoSuchBundleError(f"{source}: no {MANIFEST}: not a bundle folder{_did_you_mean(source)}")
        return _announced(Bundle(source, verify(source), source), announce)
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz", ".tar")):
        tmp = tempfile.mkdtemp(prefix="dkit-bundle-")
        try:
            with tarfile.open(source) as tf:
                extract_tar(tf, tmp)  # refuses absolute paths, '..' and links out of the folder
            root = _single_root(Path(tmp))
            return _announced(Bundle(root, verify(root), source, tmp), announce)
        except (tarfile.TarError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"{source}: not a readable bundle archive ({e})") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    raise NoSuchBundleError(f"{source}: no such bundle (expected a folder with {MANIFEST}, or a .tar.gz of one)"
                            f"{_did_you_mean(source)}")


def _did_you_mean(folder: Path) -> str:
    """'; did you mean FOLDER/bundle?' when `folder` is a run folder (it holds bundle/ or bundle.tar.gz), else ''."""
    if not folder.is_dir():
        return ""
    found = [p for p in (folder / "bundle", folder / "bundle.tar.gz")
             if (p / MANIFEST).is_file() or p.is_file()]
    return f"; did you mean {found[0]}?" if found else ""


def _announced(bundle: Bundle, announce: bool = True) -> Bundle:
    """`bundle`, after a warning (once per process and bundle) when it was made from an untrained teacher: the
    operator of `dkit run`, `dkit serve` and `dkit doctor` sees it in the log, not only in the bundle's README."""
    key = str(bundle.source.absolute())
    if announce and bundle.manifest.untrained and key not in _warned_untrained:
        _warned_untrained.add(key)
        log.warning("%s: %s", bundle.source, UNTRAINED_WARNING)
    return bundle


def extract_tar(tf: tarfile.TarFile, dest: str | os.PathLike) -> None:
    """Unpack `tf` into `dest` with tarfile's "data" filter (PEP 706: no absolute paths, no '..', no links out of
    `dest`, no device files). A Python that predates the filter (3.10 before 3.10.12, 3.11 before 3.11.4: Debian
    Bookworm's and so Raspberry Pi OS's 3.11.2) gets a stricter check by hand: regular files and folders only,
    relative, without '..'. Raises tarfile.TarError for a refused member."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
        return
    members = tf.getmembers()
    for m in members:
        parts = PurePosixPath(m.name).parts
        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts:
            raise tarfile.TarError(f"refusing archive member {m.name!r} (only plain files and folders inside it)")
        m.mode = (m.mode | 0o600) & 0o755 if m.isfile() else 0o755
    tf.extractall(dest, members=members)


def verify(root: Path) -> Manifest:
    """The manifest of the bundle folder `root`, parsed once, after every check in the module docstring."""
    manifest_path = root / MANIFEST
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BundleError(f"{root}: no {MANIFEST}: not a bundle") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from e
    try:
        manifest = Manifest.from_dict(doc)
    except ManifestError as e:
        raise BundleError(f"{manifest_path}: {e}") from e

    listed = manifest.files
    for name in listed:
        _check_name(name, manifest_path)
    missing = [name for name in listed if not (root / name).is_file() or (root / name).is_symlink()]
    if missing:  # every one named: a bundle copied without checks/ lacks dozens of files
        raise BundleError(f"{root}: {len(missing)} file(s) listed in {MANIFEST} but missing: {', '.join(missing)}"
                          if len(missing) > 1 else f"{root}: {missing[0]} is listed in {MANIFEST} but missing")
    for name, digest in listed.items():
        file = root / name
        actual = sha256_file(file)
        if actual != digest:
            raise BundleError(f"{root}: {name} has been modified or corrupted "
                              f"(sha256 {actual[:12]}..., the manifest says {str(digest)[:12]}...)")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    unlisted = sorted(present - set(listed) - {MANIFEST})
    if unlisted:
        raise BundleError(f"{root}: files not listed in {MANIFEST}: {', '.join(unlisted)} (a bundle carries "
                          "nothing unverified)")
    for role, model in manifest.models.items():
        if model.file not in listed:
            raise BundleError(f"{manifest_path}: models.{role}.file must name a file listed in 'files'")
        if model.weights and model.weights not in listed:
            raise BundleError(f"{manifest_path}: models.{role}.weights must name a file listed in 'files'")
    if manifest.checks is not None and manifest.checks.reference not in listed:
        raise BundleError(f"{manifest_path}: checks.reference must name a file listed in 'files'")
    return manifest


def _check_name(name: str, manifest_path: Path) -> None:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
        raise BundleError(f"{manifest_path}: file name {name!r} leaves the bundle folder")


def _single_root(folder: Path) -> Path:
    """An archive holds either the bundle's files or one folder with them."""
    if (folder / MANIFEST).is_file():
        return folder
    entries = [p for p in folder.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise BundleError(f"the archive has no {MANIFEST} at its top or in a single top folder")
