"""The kiosk's limits as units: the settings (KioskConfig), token buckets, the work queue, the name blocklist, and the
store's retention, quota, bans, rounds, orphan sweep and migration of an older database (real SQLite files)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from dkit.edge.bundle.kiosk_config import KioskConfig
from dkit.edge.bundle.manifest import JudgeConfig, ManifestError
from dkit.edge.kiosk.limits import Buckets, Busy, Stats, WorkQueue, retry_after
from dkit.edge.kiosk.names import Blocklist
from dkit.edge.kiosk.store import Entry, KioskStore, QuotaFull

# ------------------------------------------------------------------------------------------ settings


def test_settings_have_defaults_overrides_and_errors_that_name_the_key():
    cfg = KioskConfig.from_dict({"submit_rate": 0.5})
    assert cfg.submit_rate == 0.5 and cfg.score_rate == KioskConfig.score_rate
    cfg = cfg.with_overrides(["workers=3", "kiosk.max_disk_mb=12.5", "blocklist=none"])
    assert (cfg.workers, cfg.max_disk_mb, cfg.blocklist) == (3, 12.5, None)
    with pytest.raises(ValueError, match=r"kiosk\.scor_rate: unknown setting"):
        KioskConfig.from_dict({"scor_rate": 1})
    with pytest.raises(ValueError, match=r"kiosk\.workers: expected an integer >= 1, got 0"):
        KioskConfig(workers=0)
    with pytest.raises(ValueError, match=r"kiosk\.score_rate: expected a number >= 0, got 'fast'"):
        KioskConfig.from_dict({"score_rate": "fast"})
    with pytest.raises(ValueError, match=r"--set workers='two': expected an integer"):
        KioskConfig().with_overrides(["workers=two"])
    with pytest.raises(ValueError, match=r"--set 'nonsense': expected KEY=VALUE"):
        KioskConfig().with_overrides(["nonsense"])


def test_the_manifest_carries_the_kit_settings_and_refuses_bad_ones():
    doc = JudgeConfig(prompt="a cat").to_dict()
    assert "kiosk" not in doc  # an older manifest's layout is unchanged
    assert JudgeConfig.from_dict(doc).to_dict() == doc
    with_kiosk = JudgeConfig.from_dict(doc | {"kiosk": {"submit_burst": 3, "blocked_names": ["x"]}})
    assert with_kiosk.to_dict()["kiosk"] == {"submit_burst": 3, "blocked_names": ["x"]}
    assert KioskConfig.from_dict(with_kiosk.kiosk).blocked_names == ("x",)
    with pytest.raises(ManifestError, match=r"judge\.kiosk\.queue: expected an integer >= 0"):
        JudgeConfig.from_dict({"kiosk": {"queue": -1}})


def test_the_kit_reads_its_blocklist_file_into_the_bundle_settings(tmp_path):
    from dkit.core.errors import KitError
    from dkit.core.kit import load_kit
    from tests.conftest import ROOT

    kit_file = tmp_path / "kit.yaml"
    base = (ROOT / "datasets" / "quickdraw" / "kit.yaml").read_text()
    assert "judge:" in base
    (tmp_path / "names.txt").write_text("# refused\nbadword\n\nfoo bar\n")
    kit_file.write_text(base.replace("judge:", "judge:\n  kiosk: {blocklist: names.txt, submit_rate: 0.5}", 1))
    kit = load_kit(kit_file)
    assert kit.judge.kiosk == {"submit_rate": 0.5, "blocked_names": ["badword", "foo bar"]}
    assert kit.judge.device_config().kiosk["blocked_names"] == ["badword", "foo bar"]
    kit_file.write_text(base.replace("judge:", "judge:\n  kiosk: {blocklist: missing.txt}", 1))
    with pytest.raises(KitError, match=r"judge\.kiosk\.blocklist.*cannot read"):
        load_kit(kit_file)
    kit_file.write_text(base.replace("judge:", "judge:\n  kiosk: {submit_rat: 1}", 1))
    with pytest.raises(KitError, match=r"submit_rat"):
        load_kit(kit_file)


# ------------------------------------------------------------------------------------------ buckets, queue


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate_per_client():
    clock = Clock()
    buckets = Buckets(rate=0.5, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(2.0)  # one token per 2 s
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now += 2.0
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    clock.now += 3600
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond
    assert Buckets(rate=0, burst=1).take("a") == 0.0  # rate 0: no limit
    assert retry_after(0.2) == "1" and retry_after(2.01) == "3"


def test_the_bucket_table_is_bounded():
    buckets = Buckets(rate=1, burst=1, max_clients=100)
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets._state) == 100


def test_the_work_queue_admits_workers_plus_queue_then_refuses():
    async def main():
        queue = WorkQueue(workers=1, queue=2)
        release = asyncio.Event()
        entered = []

        async def job(i):
            async with queue.slot():
                entered.append(i)
                await release.wait()

        tasks = [asyncio.create_task(job(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert queue.admitted == 3 and entered == [0]  # one runs, two wait
        with pytest.raises(Busy, match="busy"):
            async with queue.slot():
                pass
        release.set()
        await asyncio.gather(*tasks)
        assert queue.admitted == 0 and entered == [0, 1, 2]

    asyncio.run(main())


def test_stats_count_events_and_the_last_minute():
    clock = Clock()
    stats = Stats(clock)
    for _ in range(3):
        stats.count("accepted")
    stats.count("rate_limited")
    clock.now += 61
    stats.count("accepted")
    assert stats.per_minute() == 1.0 and stats.counts == {"accepted": 4, "rate_limited": 1}


# ------------------------------------------------------------------------------------------ names


def test_the_blocklist_catches_disguises_without_banning_innocent_names(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("badword\nass  # short: whole words only\nfoo bar\n", encoding="utf-8")
    words = Blocklist.load(path)
    assert words.words == ("badword", "ass", "foo bar")
    for name in ("badword", "B@dW0rd 99", "b a d w o r d", "BÄDWORD", "my ass", "x_ass_y", "foo  bar!", "foobar"):
        assert words.match(name), name
    for name in ("classic", "ada", "bassist", "bar foo"):
        assert words.match(name) is None, name
    assert Blocklist().match("anything") is None
    with pytest.raises(ValueError, match="cannot read"):
        Blocklist.load(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------ the store


def _store(tmp_path) -> KioskStore:
    store = KioskStore(tmp_path / "kiosk.sqlite", tmp_path / "thumbs")
    store.set_prompt("a cat")
    return store


def _add(store, score, *, prompt="a cat", name="ada", client="10.0.0.1", size=1000, **kw):
    return store.add(Entry(prompt, score, "ok", name, client, phash=kw.get("phash")), b"\xff" * size,
                     max_bytes=kw.get("max_bytes"))


def test_retention_keeps_the_best_per_prompt_and_the_newest(tmp_path):
    store = _store(tmp_path)
    store.set_prompt("a dog")
    ids = [_add(store, s, prompt=p) for p, s in [("a cat", 90), ("a cat", 10), ("a cat", 50), ("a dog", 5),
                                                  ("a cat", 20), ("a cat", 30)]]
    deleted = store.prune(keep_top=1, keep_last=2)
    kept = {r["id"] for r in store.recent(100)}
    assert kept == {ids[0], ids[3], ids[4], ids[5]} and deleted == 2  # best cat, best dog, the two newest
    assert sorted(p.name for p in store.thumbs.iterdir()) == sorted(r["thumb"] for r in store.recent(100))


def test_the_quota_evicts_the_oldest_unranked_then_refuses(tmp_path):
    store = _store(tmp_path)
    ids = [_add(store, s, size=2000) for s in (90, 10, 20, 30, 40)]  # 10,000 bytes of thumbnails
    quota = store.disk_bytes() - 3000  # 3,000 over, and 2,000 more wanted: the 3 oldest unranked ones go
    assert store.prune(keep_top=1, keep_last=100, max_bytes=quota, room=2000) == 3
    assert [r["id"] for r in store.recent(100)] == [ids[4], ids[0]]  # the best and the newest stay
    with pytest.raises(QuotaFull, match="quota"):
        _add(store, 50, size=20_000, max_bytes=quota)
    assert store.count() == 2 and len(list(store.thumbs.iterdir())) == 2  # nothing half-stored


def test_hide_delete_by_name_and_client_and_bans(tmp_path):
    store = _store(tmp_path)
    a = _add(store, 80, name="ada", client="10.0.0.1")
    b = _add(store, 70, name="bob", client="10.0.0.2")
    c = _add(store, 60, name="bob", client="10.0.0.3")
    assert store.set_hidden(a, True)["hidden"] == 1
    assert [e["id"] for e in store.leaderboard("a cat")] == [b, c]  # hidden: off the board
    assert store.rank("a cat", 70, b) == (1, 2)
    assert store.set_hidden(999, True) is None
    assert store.delete_by(name="bob") == 2 and store.delete_by(client="10.0.0.1") == 1
    assert store.count() == 0 and list(store.thumbs.iterdir()) == []
    store.ban("10.0.0.9", "spam")
    assert [b["client"] for b in store.bans()] == ["10.0.0.9"]
    assert store.unban("10.0.0.9") and not store.unban("10.0.0.9")


def test_rounds_run_and_end(tmp_path):
    store = _store(tmp_path)
    assert store.last_round() is None and not store.end_round()
    r = store.start_round("a cat", 60, now=100.0)
    assert (r["prompt"], r["ends"]) == ("a cat", 160.0)
    assert store.end_round(now=130.0) and store.last_round()["ends"] == 130.0
    store.clear_rounds()
    assert store.last_round() is None


def test_orphan_thumbnails_are_swept_when_the_store_opens(tmp_path):
    store = _store(tmp_path)
    keep = _add(store, 50)
    store.close()
    (tmp_path / "thumbs" / ("0" * 32 + ".jpg")).write_bytes(b"orphan")  # a crash between the file and the row
    (tmp_path / "thumbs" / ".abc.jpg.part").write_bytes(b"half")  # an older version's temporary file
    (tmp_path / "thumbs" / ".def.jpg.123.0a1b2c3d.tmp").write_bytes(b"half")  # atomic_write's
    (tmp_path / "thumbs" / "notes.txt").write_text("not ours")
    again = KioskStore(tmp_path / "kiosk.sqlite", tmp_path / "thumbs")
    assert again.swept == 3 and again.get(keep) is not None
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == sorted([again.get(keep)["thumb"], "notes.txt"])


def test_the_thumbnail_rename_is_made_durable(tmp_path, monkeypatch):
    import os

    store = _store(tmp_path)
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")), real(fd)))
    _add(store, 50)
    assert synced == [False, True]  # the file, then its folder (after the rename)


def test_an_older_database_gains_the_new_columns(tmp_path):
    db = tmp_path / "kiosk.sqlite"
    (tmp_path / "thumbs").mkdir()
    (tmp_path / "thumbs" / "a.jpg").write_bytes(b"x" * 123)
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE prompts (text TEXT PRIMARY KEY, created REAL NOT NULL, current INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE submissions (id INTEGER PRIMARY KEY AUTOINCREMENT, prompt TEXT NOT NULL, name TEXT NOT NULL,
            score REAL NOT NULL, verdict TEXT NOT NULL, thumb TEXT NOT NULL, created REAL NOT NULL);
        INSERT INTO prompts VALUES ('a cat', 1, 1);
        INSERT INTO submissions (prompt, name, score, verdict, thumb, created)
            VALUES ('a cat', 'ada', 5, 'ok', 'a.jpg', 1);
    """)
    conn.commit()
    conn.close()
    store = KioskStore(db, tmp_path / "thumbs")
    row = store.recent(1)[0]
    assert (row["client"], row["hidden"]) == ("", 0) and store.swept == 0
    assert store.disk_bytes() >= 123 and store.leaderboard("a cat")[0]["name"] == "ada"


# ------------------------------------------------------------------------------------------ connections


class Conn:
    def __init__(self, phase: str = "idle", opened: float = 0.0):
        self._phase, self.opened = phase, opened

    def phase(self) -> str:
        return self._phase


def test_a_full_server_takes_the_idlest_connection_of_the_biggest_holder_for_a_newcomer():
    from dkit.edge.kiosk.connections import Registry

    reg = Registry(max_connections=5, max_per_client=3, strikes=2, strike_window=60)
    big = [Conn("app", 0), Conn("body", 1), Conn("idle", 2)]
    small = [Conn("idle", 3), Conn("idle", 4)]
    assert all(reg.admit("10.0.0.1", c) == (None, None) for c in big)
    assert all(reg.admit("10.0.0.2", c) == (None, None) for c in small)
    assert reg.admit("10.0.0.1", Conn()) == ("max_per_client", None)
    assert reg.admit("10.0.0.3", player := Conn()) == (None, big[2])  # the idle one of the client holding 3
    assert reg.total == 5 and player in reg.by_client["10.0.0.3"]
    assert reg.admit("10.0.0.2", Conn()) == ("max_connections", None)  # 2 vs 2 (+1): nobody holds more
    assert reg.admit("10.0.0.4", Conn()) == (None, big[1])  # then the body, never the one in the app first
    reg.leave(big[0])
    reg.leave(big[0])  # twice: ignored
    assert "10.0.0.1" not in reg.by_client and reg.total == 4
    assert reg.admit("10.0.0.9", Conn(), capped=False) == (None, None)  # a proxy: no per-client cap


def test_displacement_spares_the_kiosk_screen_a_proxy_and_requests_being_answered():
    """Review of #25: a full server never takes a connection of the kiosk's own screen (every player there) or of a
    trusted proxy, nor one inside the app; it takes the next biggest holder's instead, or refuses the newcomer."""
    from dkit.edge.kiosk.connections import Registry

    reg = Registry(max_connections=8, max_per_client=4, strikes=2, strike_window=60)
    screen = [Conn("idle", i) for i in range(3)]
    proxy = [Conn("idle", 10 + i) for i in range(2)]
    busy = [Conn("app", 20), Conn("app", 21)]
    assert all(reg.admit("127.0.0.1", c) == (None, None) for c in screen)
    assert all(reg.admit("10.0.0.5", c, capped=False) == (None, None) for c in proxy)
    assert all(reg.admit("10.0.0.6", c) == (None, None) for c in busy)
    assert reg.admit("10.0.0.7", Conn("idle", 30)) == (None, None)  # 8: full
    assert reg.admit("10.0.0.8", Conn()) == ("max_connections", None)  # the screen, the proxy, requests in the app
    busy[1]._phase = "idle"
    assert reg.admit("10.0.0.8", Conn()) == (None, busy[1])  # an idle one of a client holding 2: taken


def test_strikes_refuse_a_client_for_the_window_and_no_other():
    from dkit.edge.kiosk.connections import Registry

    clock = Clock()
    reg = Registry(max_connections=10, max_per_client=10, strikes=2, strike_window=60, clock=clock)
    assert not reg.strike("10.0.0.1")
    clock.now += 61
    assert not reg.strike("10.0.0.1")  # the first strike has expired
    assert reg.strike("10.0.0.1") and reg.refused("10.0.0.1") and not reg.refused("10.0.0.2")
    assert reg.admit("10.0.0.1", Conn()) == ("struck", None) and reg.admit("10.0.0.2", Conn()) == (None, None)
    clock.now += 60
    assert not reg.refused("10.0.0.1") and reg.admit("10.0.0.1", Conn()) == (None, None)


def test_one_stall_is_one_strike_at_most_one_per_gap():
    from dkit.edge.kiosk.connections import Registry

    clock = Clock()
    reg = Registry(max_connections=10, max_per_client=10, strikes=2, strike_window=60, strike_gap=10, clock=clock)
    assert not any(reg.strike("10.0.0.1") for _ in range(5))  # five connections cut by one stall: one strike
    clock.now += 9
    assert not reg.strike("10.0.0.1") and not reg.refused("10.0.0.1")  # still within the gap of the first
    clock.now += 1
    assert reg.strike("10.0.0.1") and reg.refused("10.0.0.1")  # a second incident, 10 s later: the second strike


def test_client_key_keys_the_kiosk_lan_and_link_local_by_address_and_the_rest_by_64():
    from dkit.edge.kiosk.limits import client_key

    lan = "2001:db8:1:2::5"  # the server's own address on the venue's network
    assert client_key("2001:db8:1:2::9", lan) == "2001:db8:1:2::9"  # a phone on the venue's LAN: itself
    assert client_key("2001:db8:1:2::a", lan) == "2001:db8:1:2::a"
    assert client_key("2001:db8:1:3::9", lan) == "2001:db8:1:3::/64"  # another network: its /64
    assert client_key("2001:db8:1:2::9") == client_key("2001:db8:1:2::9", "::") == "2001:db8:1:2::/64"
    assert client_key("fe80::1c:7%eth0", "::") == client_key("fe80::1c:7") == "fe80::1c:7"  # link-local: itself
    assert client_key("::1", lan) == "::1" and client_key("::ffff:10.0.0.7", lan) == "10.0.0.7"
    assert client_key("10.0.0.7", "10.0.0.1") == "10.0.0.7" and client_key("", lan) == "unknown"


def _request(client: tuple[str, int], *, server=("127.0.0.1", 8000), peer=None, headers=()):
    from starlette.requests import Request

    from dkit.edge.kiosk.serving import PEER

    scope = {"type": "http", "method": "GET", "path": "/", "headers": list(headers), "client": client,
             "server": server}
    return Request(scope | ({PEER: peer} if peer is not None else {}))


def test_the_kiosk_screen_is_a_loopback_peer_without_a_forwarded_address():
    from dkit.edge.kiosk.guard import client_of, is_screen

    xff = [(b"x-forwarded-for", b"127.0.0.1")]
    screen = _request(("127.0.0.1", 5000), peer=("127.0.0.1", False))
    assert is_screen(screen) and client_of(screen) == "127.0.0.1"
    # no proxy named: the header is ignored (uvicorn leaves the client alone), the loopback peer is the screen
    assert is_screen(_request(("127.0.0.1", 5000), peer=("127.0.0.1", False), headers=xff))
    # through a named proxy, a visitor's forged X-Forwarded-For: 127.0.0.1 is an ordinary, bannable client
    forged = _request(("127.0.0.1", 0), peer=("10.0.0.2", True), headers=xff)
    assert not is_screen(forged) and client_of(forged) == "127.0.0.1 (forwarded)"
    same_host = _request(("127.0.0.1", 0), peer=("127.0.0.1", True), headers=xff)  # a proxy on the device itself
    assert not is_screen(same_host) and client_of(same_host) == "127.0.0.1 (forwarded)"
    assert is_screen(_request(("::1", 5000), server=("::1", 8000)))  # without the server's record: the ASGI client
    assert not is_screen(_request(("10.0.0.7", 5000), peer=("10.0.0.7", False)))


def test_client_of_keys_the_kiosk_lan_by_address_from_the_request():
    from dkit.edge.kiosk.guard import client_of

    server = ("2001:db8:1:2::5", 8000)
    assert client_of(_request(("2001:db8:1:2::9", 5000), server=server)) == "2001:db8:1:2::9"
    assert client_of(_request(("2001:db8:7::9", 5000), server=server)) == "2001:db8:7::/64"
    assert client_of(_request(("fe80::9", 5000), server=("::", 8000))) == "fe80::9"


def test_serve_raises_when_the_apps_startup_fails():
    """uvicorn only logs a failed startup (no decoder process could start, ...) and returns: `serve` raises
    StartupError then, so `dkit serve` exits 1 instead of 0."""
    import contextlib
    import socket
    from collections import Counter
    from types import SimpleNamespace

    from fastapi import FastAPI

    from dkit.edge.bundle.kiosk_config import KioskConfig
    from dkit.edge.kiosk.serving import StartupError, serve

    @contextlib.asynccontextmanager
    async def failing(app):
        raise RuntimeError("no decoder process could start")
        yield

    app = FastAPI(lifespan=failing)
    app.state.kiosk = SimpleNamespace(stats=SimpleNamespace(counts=Counter()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StartupError, match="did not start"):
        serve(app, host="127.0.0.1", port=port, cfg=KioskConfig(), log_level="critical")
