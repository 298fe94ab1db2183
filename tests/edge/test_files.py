"""The one atomic writer (dkit.edge.bundle.files): modes, durability, nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pytest

from dkit.edge.bundle.files import atomic_write


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        path = atomic_write(tmp_path / "unit.service", "[Unit]\n", mode=0o644)
        default = atomic_write(tmp_path / "plain.txt", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "[Unit]\n"
    assert stat.S_IMODE(default.stat().st_mode) == 0o600  # 0o666 less that umask


def test_durable_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")), real(fd)))
    atomic_write(tmp_path / "a.bin", b"1")
    assert synced == []  # not asked: no fsync
    atomic_write(tmp_path / "a.bin", b"2", durable=True)
    assert synced == [False, True] and (tmp_path / "a.bin").read_bytes() == b"2"


def test_a_failed_chmod_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = atomic_write(tmp_path / "f", "old")

    def refuse(*args):
        raise PermissionError("no")

    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(PermissionError):
        atomic_write(path, "new", mode=0o644)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]
