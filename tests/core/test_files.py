"""Atomic writes and durations."""

from __future__ import annotations

import os

import pytest

from dkit.core.files import atomic_write, duration, read_json, write_json


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (3725, "1h02m"),
                                               (float("inf"), "?"), (float("nan"), "?")])
def test_duration(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("data", ["text é\n", b"\x00bytes"])
def test_atomic_write_replaces_and_leaves_nothing_else(tmp_path, data):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, "old")
    atomic_write(path, data)
    assert path.read_bytes() == (data.encode() if isinstance(data, str) else data)
    assert os.listdir(path.parent) == ["f.bin"]
    assert path.stat().st_mode & 0o044  # readable by others under a usual umask, unlike mkstemp's 0600


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    write_json(path, {"a": 1})

    def refuse(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"a": 2})
    assert read_json(path) == {"a": 1} and os.listdir(tmp_path) == ["f.json"]
    assert read_json(tmp_path / "missing.json") == {}
