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

from dkit.devtools.attack_bench import (
    GOALS,
    PHASES,
    QUICK,
    AttackSettings,
    attack_payloads,
    drawing,
    format_table,
    goals,
    header_jpeg,
    header_png,
    jpeg_segments,
    large_jpeg,
    pad_jpeg,
    progressive_jpeg,
    scan_bomb,
    seed_images,
    select_phases,
    strip_png,
    zero_png,
)
from dkit.edge.images.header import image_size
from tests.conftest import ASSETS, run_dkit


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
    assert QUICK.scan_bomb_seconds + QUICK.slow_seconds <= 5 and QUICK.climb_queries <= 10
    assert AttackSettings().flood_seconds == 60 and AttackSettings().idle_sockets == 500
    full = AttackSettings()  # the audit's attacks, each phase a minute at most
    assert (full.scan_bombs, full.scan_bomb_side, full.scan_bomb_repeats) == (10, 6000, 2000)
    assert full.slow_addresses * full.slow_per_client >= 512 and full.slow_addresses >= 16
    assert (full.uploads, full.upload_addresses, full.upload_megapixels) == (500, 50, 36)
    assert max(full.scan_bomb_seconds, full.slow_seconds, full.upload_seconds) <= 60


def test_scan_bomb_is_a_progressive_jpeg_with_its_last_scan_repeated():
    bomb = scan_bomb(256, repeats=30)
    plain = scan_bomb(256, repeats=0)
    scans = [data[a:b] for data in (bomb,) for marker, a, b in jpeg_segments(data) if marker == 0xDA]
    assert image_size(bomb) == ("jpeg", 256, 256)
    assert len(scans) == sum(m == 0xDA for m, _, _ in jpeg_segments(plain)) + 30
    assert len(set(scans[-31:])) == 1 and len(bomb) - len(plain) == 30 * len(scans[-1])
    assert cv2.imdecode(np.frombuffer(bomb, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (256, 256)


def test_large_jpeg_is_progressive_valid_and_padded_to_size():
    data = large_jpeg(megapixels=0.25, size=200_000)
    assert len(data) == 200_000 and image_size(data) == ("jpeg", 500, 500)
    assert any(marker == 0xC2 for marker, _, _ in jpeg_segments(data))  # SOF2: progressive
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (500, 500, 3)
    small = progressive_jpeg(np.zeros((8, 8), np.uint8))
    for extra in (0, 3, 4, 5, 70_000):
        assert len(pad_jpeg(small, len(small) + extra)) == len(small) + extra - (extra if extra < 4 else 0)


def test_seeds_come_from_a_folder_of_images_or_quickdraw_bitmaps(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((32, 32, 3), 255, np.uint8))
    np.save(tmp_path / "cat.npy", np.zeros((3, 1, 784), np.uint8))
    images, source = seed_images(3, tmp_path)
    assert len(images) == 3 and str(tmp_path) in source
    assert [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR).shape for b in images] == [
        (32, 32, 3), (256, 256, 3), (256, 256, 3)]
    assert len(seed_images(4)[0]) == 4  # no folder: random doodles
    if (ASSETS / "data/quickdraw").is_dir():
        assert len(seed_images(9, ASSETS / "data/quickdraw")[0]) == 9


def test_phases_are_selected_by_name():
    assert select_phases(None) == list(PHASES)
    assert select_phases("climb,scan-bomb") == ["scan_bomb", "climb"]
    with pytest.raises(ValueError, match="bogus"):
        select_phases("slow,bogus")


def test_goals_and_table_of_the_new_phases():
    player = {"ticks": 10, "requests": 9, "ok": 9, "share": 0.9, "p50_ms": 5.0, "p99_ms": 9.0, "p99_ok_ms": 9.0,
              "status_codes": {"200": 9}, "routes": {"/api/score": {"every_s": 1, "requests": 9, "skipped": 1,
                                                                    "ok": 9, "status_codes": {"200": 9}}}}
    result = {"phases": ["scan_bomb", "uploads", "climb"], "bundle": "b", "serve_set": [],
              "machine": {"cpus": 2, "platform": "p"},
              "scan_bomb": {"player": player, "in_flight": 2, "source": "127.0.0.6", "bomb_bytes": 9, "side": 9,
                            "scans": 3, "seconds": 1, "bomb_answers": {"503": 1}},
              "uploads": {"ratio": 1.6, "peak_mb": 16, "idle_mb": 10, "uploads": 5, "upload_bytes": 9,
                          "addresses": 2, "seconds": 1, "processes": 3, "method": "m", "main_peak_mb": 12,
                          "after_mb": 10, "status_codes": {"200": 5}, "p50_ms": 1, "p99_ms": 2},
              "climb": {"reached_rank1_after": None, "stopped": "not within 6 queries", "board_top": 3.0,
                        "best_score": 2.0, "improvements": 1, "distinct_scores": 2, "seconds": 1, "waited_s": 0,
                        "score_fields": ["score"], "status_codes": {"200": 6}, "claims": [],
                        "seeds": {"stored": 4, "submitted": 4, "addresses": 1, "source": "s",
                                  "status_codes": {"200": 4}}}}
    result["goals"] = g = goals(result)
    assert list(g) == ["scan_bomb", "uploads", "climb"]
    assert g["scan_bomb"]["pass"] is True and g["uploads"]["pass"] is False and g["climb"]["pass"] is True
    table = format_table(result)
    for goal in (GOALS["scan_bomb"], GOALS["uploads"], GOALS["climb"], "5 scan bomb", "7 uploads", "8 hill climb"):
        assert goal in table
    result["climb"] |= {"reached_rank1_after": 4, "stopped": "rank 1 after 4 queries",
                        "claims": [{"after": 4, "shown": 3.5, "status": 200, "rank": 1}]}
    assert "claim after 4 queries" in format_table(result | {"goals": goals(result)})
    assert goals(result)["climb"]["pass"] is False and goals(result)["climb"]["queries"] == 4


def test_not_a_judge_bundle_exits_2(tmp_path):
    r = run_dkit("bench", "attack", str(tmp_path), "--quick")
    assert r.returncode == 2, r.stderr
    assert "dkit: error:" in r.stderr
    r = run_dkit("bench", "attack", str(tmp_path), "--only", "slow,bogus")
    assert r.returncode == 2 and "bogus" in r.stderr, r.stderr


@pytest.mark.slow  # a benchmark end to end (~15 s): `make test-all`
def test_bench_attack_quick(judge_bundle, tmp_path):
    out = tmp_path / "attack.json"
    r = run_dkit("bench", "attack", str(judge_bundle), "--quick", "--only", "rss,healthz,disk,legit", "--json",
                 str(out), timeout=120)
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


@pytest.mark.slow  # four servers, a few seconds each (~25 s): `make test-all`
def test_bench_attack_quick_round_two(judge_bundle, tmp_path):
    """The audit's attacks (scan bomb, slow sockets, concurrent uploads, hill climb), each on its own server, with
    tiny settings: every figure there, none judged (the goals are the bench's to report)."""
    out = tmp_path / "attack.json"
    r = run_dkit("bench", "attack", str(judge_bundle), "--quick", "--only", "scan-bomb,slow,uploads,climb",
                 "--json", str(out), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sum(line.startswith(("PASS ", "FAIL ")) for line in r.stdout.splitlines()) == 4
    d = json.loads(out.read_text())
    assert d["server_died"] is None and d["phases"] == ["scan_bomb", "slow", "uploads", "climb"]
    assert "rss" not in d and "legit" not in d  # phases 1-4 not run

    for key in ("scan_bomb", "slow"):
        player = d[key]["player"]
        assert player["ticks"] == player["requests"] + sum(r["skipped"] for r in player["routes"].values()) > 0
        assert 0 <= player["ok"] <= player["requests"] and 0 <= player["share"] <= 1
        assert set(player["routes"]) == {"/api/score", "/api/submissions"}
        assert d[key]["server"]["port"] != d["slow" if key == "scan_bomb" else "scan_bomb"]["server"]["port"]
    bomb = d["scan_bomb"]
    assert bomb["scans"] > QUICK.scan_bomb_repeats and bomb["in_flight"] == QUICK.scan_bombs
    sockets = d["slow"]["sockets"]
    assert sockets["target"] == QUICK.slow_addresses * QUICK.slow_per_client
    assert set(sockets["kinds"]) == {"read", "upload", "slowloris"}
    assert sum(k["opened"] for k in sockets["kinds"].values()) >= 1

    up = d["uploads"]
    assert sum(up["status_codes"].values()) == QUICK.uploads and up["processes"] >= 1
    assert 0 < up["idle_mb"] <= up["peak_mb"] and up["ratio"] >= 1.0 and up["upload_bytes"] == QUICK.upload_bytes

    climb = d["climb"]
    assert climb["seeds"]["submitted"] == QUICK.climb_seeds and 0 <= climb["seeds"]["stored"] <= QUICK.climb_seeds
    assert 0 < climb["queries"] <= QUICK.climb_queries and "score" in climb["score_fields"]
    assert climb["stopped"]

    assert list(d["goals"]) == ["scan_bomb", "slow", "uploads", "climb"]
    for goal in d["goals"].values():
        assert goal["value"] is not None and goal["pass"] in (True, False)
