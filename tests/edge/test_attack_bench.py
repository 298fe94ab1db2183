"""`dkit bench attack`: the kiosk server under attack, in --quick mode against the session's judge bundle.

The figures are checked for shape and sanity (every measurement made, counts and times positive), never against
the goals: the machines are shared and noisy, and the goals are the bench's to report.
"""

from __future__ import annotations

import json
import zlib

import cv2
import numpy as np
import pytest

from dkit.edge.attack_bench import (
    QUICK,
    AttackSettings,
    attack_payloads,
    drawing,
    header_jpeg,
    header_png,
    strip_png,
    zero_png,
)
from dkit.edge.upload import image_size
from tests.conftest import run_dkit


def test_zero_png_is_a_real_png_of_zeros():
    for width, height, block in [(300, 200, 1 << 22), (301, 7, 1000), (5, 3, 7)]:  # one block, repeats, remainder
        data = zero_png(width, height, block_bytes=block)
        assert image_size(data) == ("png", width, height)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert bgr.shape == (height, width, 3) and not bgr.any()


def test_bomb_is_small_on_disk_and_huge_decoded():
    data = zero_png(20_000, 20_000)
    assert len(data) < 4 << 20  # under the kiosk's default upload limit
    idat = data[41:41 + int.from_bytes(data[33:37], "big")]
    dec = zlib.decompressobj()
    out = dec.decompress(idat, 1 << 20)  # the first MiB only: the stream is valid and starts with zeros
    assert len(out) == 1 << 20 and not any(out)


def test_payloads_claim_what_they_say():
    sizes = {name: image_size(data)[1:] for name, _, data in attack_payloads(max_pixels=100 * 100)}
    assert sizes["strip_1x50000_png"] == (50_000, 1) and sizes["strip_1x200000_png"] == (200_000, 1)
    assert sizes["header_100000x100000_png"] == (100_000, 100_000)
    assert sizes["header_65535x65535_jpeg"] == (65_535, 65_535)
    assert sizes["bomb_20000x20000_png"] == (20_000, 20_000) and sizes["bomb_100x100_png"] == (100, 100)
    assert image_size(header_png(7, 9))[1:] == (7, 9) and image_size(header_jpeg(5, 6))[1:] == (5, 6)
    assert cv2.imdecode(np.frombuffer(strip_png(50), np.uint8), cv2.IMREAD_COLOR).shape == (1, 50, 3)
    assert len({drawing(i) for i in range(5)}) == 5


def test_quick_preset_is_short():
    assert QUICK.legit_seconds + QUICK.bomb_seconds + QUICK.flood_seconds + QUICK.combined_seconds <= 10
    assert AttackSettings().flood_seconds == 60 and AttackSettings().idle_sockets == 500


def test_not_a_judge_bundle_exits_2(tmp_path):
    r = run_dkit("bench", "attack", str(tmp_path), "--quick")
    assert r.returncode == 2, r.stderr
    assert "dkit: error:" in r.stderr


@pytest.mark.slow  # a benchmark end to end (~15 s): `make test-all`
def test_bench_attack_quick(judge_run, tmp_path):
    _, run, _, _ = judge_run
    out = tmp_path / "attack.json"
    r = run_dkit("bench", "attack", str(run / "bundle"), "--quick", "--json", str(out), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bench attack: 4: attacks 1-3 together" in r.stderr  # progress lines
    assert sum(line.startswith(("PASS ", "FAIL ")) for line in r.stdout.splitlines()) == 4
    d = json.loads(out.read_text())
    assert d["server_died"] is None and d["settings"]["idle_sockets"] == QUICK.idle_sockets

    rss = d["rss"]
    assert 0 < rss["idle_mb"] <= rss["peak_mb"] and rss["ratio"] >= 1.0
    assert rss["requests"] > 0 and sum(rss["status_codes"].values()) == rss["requests"]
    assert all(key.split()[0] in ("/api/score", "/api/submissions") for key in rss["by_payload"])

    h = d["healthz"]
    assert h["requests"] == QUICK.healthz_requests and 0 < h["p50_ms"] <= h["p99_ms"] <= h["max_ms"]
    sockets = h["idle_sockets"]
    assert sockets["target"] == QUICK.idle_sockets and sockets["opened"] >= 1
    assert 0 <= sockets["open_now"] <= sockets["target"] and sockets["closed_by_server"] >= 0

    disk = d["disk"]
    assert disk["requests"] > 0 and sum(disk["status_codes"].values()) == disk["requests"]
    assert disk["bytes_after"] > 0 and disk["growth_bytes"] == disk["bytes_after"] - disk["bytes_before"]
    assert 0 <= disk["stored"] <= disk["requests"]

    legit = d["legit"]
    for phase in ("unattacked", "attacked"):
        assert legit[phase]["requests"] > 0 and legit[phase]["ok_per_s"] >= 0
    assert legit["unattacked"]["ok"] > 0 and legit["ratio"] >= 0

    assert set(d["goals"]) == {"rss", "healthz", "disk", "legit"}
    for goal in d["goals"].values():
        assert goal["value"] is not None and goal["pass"] in (True, False)
