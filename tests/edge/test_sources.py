"""Frame sources: live policy (latest frame, reconnects) on a scripted synthetic camera, file policy on real files.

The synthetic camera is a real capture object (read()/release()/isOpened()) handed to open_source() through
`capture_factory`; everything between it and the consumer is the production code. Nothing here asserts on how
long something took: the live tests drive the stall watch with a clock that only moves when the script says
(`clock=`), observe back-off through the `backoff_wait=` hook, and wait for conditions (with generous limits
that only turn a hang into a failure) rather than for wall-clock time.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import queue
import signal
import sys
import threading
import time
import tracemalloc
import weakref
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from dkit.edge.stream.sources import MAX_STUCK_READERS, Frame, SourceError, SourceState, open_source

FRAME_HW = (24, 32)
FAST = {"stall_timeout": 0.2, "backoff": (0.02, 0.08), "jitter": 0.0}  # short enough for tests
PATIENCE = 30.0  # seconds: only ever reached when something hangs


def make_bgr(counter: int, hw: tuple[int, int] = FRAME_HW) -> np.ndarray:
    """A BGR frame: blue everywhere, the counter in the first 4 pixels of row 0 (big-endian, all channels)."""
    bgr = np.zeros((*hw, 3), np.uint8)
    bgr[..., 0] = 200
    bgr[0, :4, :] = np.frombuffer(counter.to_bytes(4, "big"), np.uint8)[:, None]
    return bgr


def counter_of(frame: Frame) -> int:
    return int.from_bytes(frame.rgb[0, :4, 0].tobytes(), "big")


def wait_for(condition: Callable[[], object], what: str, timeout: float = PATIENCE) -> None:
    """Poll until `condition()` is true; fail (instead of hanging) after a generous `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.0005)


def wait_until_waiting_in_read(thread: threading.Thread) -> None:
    """Return once `thread` waits inside Source.read() for a frame (in the hand-off buffer's Condition.wait), so
    what the test does next happens to a reader that is already waiting."""

    def waiting() -> bool:
        frame = sys._current_frames().get(thread.ident)
        stack = []
        while frame is not None and len(stack) < 3:
            stack.append((frame.f_code.co_name, Path(frame.f_code.co_filename).name))
            frame = frame.f_back
        return stack == [("wait", "threading.py"), ("get", "source.py"), ("read", "source.py")]

    wait_for(waiting, f"{thread.name} to wait in read()")


class FakeClock:
    """The stall watch's clock (`clock=`): it stands still unless a scripted stall moves it, so a busy machine can
    never make a frame look late and the stall watch fires exactly where the script stalls."""

    def __init__(self) -> None:
        self.now, self.lock = 1000.0, threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class FakeCapture:
    def __init__(self, camera: SyntheticCamera | GatedCamera, opened: bool) -> None:
        self.camera, self.opened, self.released = camera, opened, threading.Event()

    def isOpened(self) -> bool:  # noqa: N802 (cv2.VideoCapture's name)
        return self.opened

    def read(self) -> tuple[bool, object]:
        return self.camera.next_read()

    def release(self) -> None:
        self.released.set()


class SyntheticCamera:
    """A scripted camera shared by every capture the factory opens, so the script runs on across reconnects.

    Steps: ("frames", n) n good frames | ("stall", s) one read blocks s seconds (or until `unstick`) |
    ("fail", k) read returns (False, None), then k opens fail | ("raise", k) read raises, then k opens raise |
    ("corrupt", obj) read returns (True, obj). After the script: good frames forever, one per `period` s.
    A stall moves `clock` (give the source the same clock) past any stall_timeout; nothing else moves it.
    """

    def __init__(self, steps: list[tuple[str, object]] = (), period: float = 0.0,
                 hw: tuple[int, int] = FRAME_HW) -> None:
        self.steps = deque([list(s) for s in steps])
        self.period, self.hw = period, hw
        self.lock = threading.Lock()
        self.counter = 0  # good frames made so far (the last one's counter)
        self.exhausted_at: int | None = None if self.steps else 0  # counter when the script ran out
        self.failing_opens, self.raising = 0, False
        self.captures: list[FakeCapture] = []
        self.open_times: list[float] = []
        self.unstick = threading.Event()
        self.clock = FakeClock()

    def __call__(self, spec: str) -> FakeCapture:
        with self.lock:
            self.open_times.append(time.monotonic())
            opened = self.failing_opens == 0
            if not opened:
                self.failing_opens -= 1
                if self.raising:
                    raise OSError("synthetic camera: device busy")
            self.captures.append(FakeCapture(self, opened))
            return self.captures[-1]

    def _good(self) -> tuple[bool, np.ndarray]:
        self.counter += 1
        return True, make_bgr(self.counter, self.hw)

    def next_read(self) -> tuple[bool, object]:
        with self.lock:
            step = self.steps[0] if self.steps else ["frames", 1]
            kind, arg = step
            if kind == "frames":
                step[1] -= 1
                if step[1] <= 0 and self.steps:
                    self.steps.popleft()
                result = self._good()
            else:
                self.steps.popleft()
            if not self.steps and self.exhausted_at is None:
                self.exhausted_at = self.counter
        if kind == "frames":
            if self.period:
                time.sleep(self.period)
            return result
        if kind == "stall":
            self.clock.advance(3600.0)  # longer than any stall_timeout: the stall watch must fire now
            self.unstick.wait(arg)
            with self.lock:
                return self._good()
        if kind == "corrupt":
            return True, arg
        with self.lock:
            self.failing_opens, self.raising = arg, kind == "raise"
        if kind == "raise":
            raise OSError("synthetic camera: read error")
        return False, None


class GatedCamera:
    """A camera that makes a frame only when the test lets one out, so which frame is the newest is known exactly.

    let_out(n) lets n frames out and returns once the capture thread is back in read() asking for one more: by
    then each of the n frames has been through the source's latest-frame slot and its counters.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.allowed = self.counter = 0
        self.asking = False  # the capture thread is in read() waiting for a frame not let out yet
        self.captures: list[FakeCapture] = []
        self.source = None  # set by the test: a waiting read() gives up once the source is closed

    def __call__(self, spec: str) -> FakeCapture:
        with self.cond:
            self.captures.append(FakeCapture(self, True))
            return self.captures[-1]

    def next_read(self) -> tuple[bool, object]:
        with self.cond:
            while self.counter >= self.allowed:
                if self.source is not None and self.source.closed:
                    return False, None
                self.asking = True
                self.cond.notify_all()
                self.cond.wait(0.01)
            self.asking = False
            self.counter += 1
            return True, make_bgr(self.counter)

    def let_out(self, n: int) -> None:
        with self.cond:
            self.allowed += n
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.counter == self.allowed and self.asking, PATIENCE)


def corrupt_frames() -> list[tuple[str, object]]:
    bad = [None, np.zeros((*FRAME_HW, 4), np.uint8), np.zeros(FRAME_HW, np.uint8), np.zeros((*FRAME_HW, 1), np.uint8),
           np.zeros((0, 0, 3), np.uint8), np.zeros((*FRAME_HW, 3), np.float32)]
    return [("corrupt", b) for b in bad]


# (case, script, stats expected, events expected, opens expected)
FAULTS = [
    ("stall", [("frames", 5), ("stall", 5.0), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"stalled": 1, "disconnected": 1, "reconnected": 1}, 2),
    ("read returns False", [("frames", 5), ("fail", 0), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"disconnected": 1, "reconnected": 1}, 2),
    ("read raises", [("frames", 5), ("raise", 0), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"disconnected": 1, "reconnected": 1}, 2),
    ("reopen fails 3 times", [("frames", 5), ("fail", 3), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"disconnected": 1, "reconnected": 1}, 5),
    ("reopen raises 2 times", [("frames", 5), ("raise", 2), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"disconnected": 1, "reconnected": 1}, 4),
    ("corrupt frames", [("frames", 5), *corrupt_frames(), ("frames", 5)],
     {"disconnects": 0, "reconnects": 0, "corrupt": 6}, {"corrupt": 6}, 1),
    ("all of it", [("frames", 5), ("stall", 5.0), ("frames", 5), ("fail", 3), ("frames", 5), *corrupt_frames(),
                   ("raise", 1), ("frames", 5)],
     {"disconnects": 3, "reconnects": 3, "corrupt": 6},
     {"stalled": 1, "disconnected": 3, "reconnected": 3, "corrupt": 6}, 8),
]


@pytest.mark.parametrize("case, script, want_stats, want_events, want_opens", FAULTS, ids=[f[0] for f in FAULTS])
def test_live_source_recovers_from_faults(case, script, want_stats, want_events, want_opens):
    camera = SyntheticCamera(script, period=0.002)
    events: list[tuple[str, str]] = []
    source = open_source("0", capture_factory=camera, on_event=lambda k, d: events.append((k, d)),
                         clock=camera.clock, **FAST)
    assert source.live and source.kind == "camera"
    # every delivered frame has a newer counter than the last, so at most this many come before the script ends
    scripted = sum(n for kind, n in script if kind == "frames") + sum(kind == "stall" for kind, _ in script)
    frames, after = [], 0
    while after < 5:  # five frames from after the script: the pipeline came back on its own
        frame = source.read(timeout=PATIENCE)
        assert frame is not None and len(frames) < scripted + 5
        frames.append(frame)
        after += camera.exhausted_at is not None and counter_of(frame) > camera.exhausted_at
    camera.unstick.set()
    source.close()

    assert [f.id for f in frames] == list(range(len(frames)))  # ids keep counting across reconnects
    counters = [counter_of(f) for f in frames]
    assert all(b > a for a, b in zip(counters, counters[1:], strict=False)), counters
    assert all(f.rgb.shape == (*FRAME_HW, 3) and f.rgb.dtype == np.uint8 for f in frames)  # corrupt never delivered
    assert frames[-1].rgb[5, 5].tolist() == [0, 0, 200]  # BGR blue came out as RGB blue
    stats = source.stats
    assert {k: getattr(stats, k) for k in want_stats} == want_stats
    assert stats.delivered == len(frames)
    assert Counter(k for k, _ in events) == Counter(want_events)
    assert len(camera.open_times) == want_opens
    if want_stats["disconnects"]:
        assert stats.last_error
    for cap in camera.captures:  # every capture released, the one that was stuck in read() included
        assert cap.released.wait(PATIENCE), f"capture {camera.captures.index(cap)} of {len(camera.captures)} kept"


def test_backoff_grows_to_its_max_and_resets_after_recovery():
    journal: list[object] = []  # "open" for every open, the delay asked for by every back-off wait, in order

    def recording_wait(stop: threading.Event, seconds: float) -> bool:
        journal.append(seconds)
        return threading.Event.wait(stop, seconds)  # the default wait: the gaps between opens are real

    camera = SyntheticCamera([("frames", 3), ("fail", 4), ("frames", 3), ("fail", 0), ("frames", 3)], period=0.002)
    source = open_source("0", capture_factory=lambda spec: journal.append("open") or camera(spec), stall_timeout=2.0,
                         backoff=(0.05, 0.12), jitter=0.0, clock=camera.clock, backoff_wait=recording_wait)
    while camera.exhausted_at is None or len(camera.open_times) < 7:
        assert source.read(timeout=PATIENCE) is not None
    source.close()
    want = [0.05, 0.10, 0.12, 0.12, 0.12, 0.05]  # open, [fail 4 times], ok, [fail once], ok
    assert journal == ["open", *(x for w in want for x in (w, "open"))]  # exactly one wait before every reopen
    gaps = np.diff(camera.open_times)
    assert len(gaps) == len(want) and all(g >= w * 0.9 for g, w in zip(gaps, want, strict=True)), gaps  # waited out
    assert source.stats.reconnects == 2 and source.stats.disconnects == 2


def test_close_ends_a_backoff_wait_at_once():
    """A camera that is down is retried after `backoff`; close() does not sit that wait out (the default wait is
    on the event close() sets)."""
    assert inspect.signature(open_source).parameters["backoff_wait"].default is threading.Event.wait
    waiting, returned = threading.Event(), []

    def default_wait(stop: threading.Event, seconds: float) -> None:
        waiting.set()
        returned.append(threading.Event.wait(stop, seconds))

    before = set(threading.enumerate())
    camera = SyntheticCamera([("frames", 1), ("fail", 5)])
    source = open_source("0", capture_factory=camera, backoff=(600.0, 600.0), clock=camera.clock,
                         backoff_wait=default_wait)
    assert source.read(timeout=PATIENCE) is not None
    assert waiting.wait(PATIENCE) and returned == []  # the camera dropped: a 600 s wait before the reopen
    source.close(timeout=PATIENCE)
    assert returned == [True]  # close() ended the wait; the supervisor is gone, without waiting 600 s
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []
    assert len(camera.open_times) == 1 and camera.captures[0].released.is_set()


@pytest.mark.parametrize("bursts", [[10] * 20, [1, 30, 2, 7, 1, 1, 50, 3]], ids=["steady", "uneven"])
def test_slow_consumer_gets_the_newest_frame(bursts):
    """While the consumer is busy ("inference") the camera makes `burst` frames; the consumer then gets the newest
    of them and nothing older is queued behind it, so it is never behind, however slow it is (a FIFO would fall
    further behind with every frame)."""
    camera = GatedCamera()
    source = open_source("0", capture_factory=camera, clock=FakeClock(), **FAST)
    camera.source = source
    try:
        for i, burst in enumerate(bursts):
            camera.let_out(burst)  # made while the consumer was busy
            frame = source.read(timeout=PATIENCE)
            assert (frame.id, counter_of(frame)) == (i, camera.counter), "an old frame was delivered"
            with pytest.raises(TimeoutError):
                source.read(timeout=0)  # no older frame waits behind it: zero frames of latency
            stats = source.stats
            assert stats.dropped_stale == sum(b - 1 for b in bursts[:i + 1])  # each unread frame replaced
    finally:
        source.close(timeout=PATIENCE)
    assert camera.captures and all(c.released.is_set() for c in camera.captures)  # close() waited for the release
    stats = source.stats
    assert (stats.read, stats.delivered, stats.corrupt) == (sum(bursts), len(bursts), 0)
    assert stats.dropped_stale == sum(bursts) - len(bursts) >= stats.delivered  # 1-50 camera frames per delivery
    assert stats.read - stats.delivered - stats.dropped_stale - stats.corrupt == 0  # nothing held back
    assert (stats.disconnects, stats.reconnects) == (0, 0)


PREFETCH, WARMUP, CHECK_EVERY = 4, 50, 100


def stream_frames(n: int, live: bool, hw: tuple[int, int]) -> int:
    """Consume `n` frames of a source, dropping each at once as a consumer does; how far traced memory rose above
    where it was after the first WARMUP frames. Checks the counters and that no frame outlives its consumer."""
    camera = SyntheticCamera([("frames", n), ("fail", 0)] if not live else [], hw=hw)
    refs: list[weakref.ref] = []
    tracemalloc.start()
    try:
        source = open_source("0", live=live, capture_factory=camera, prefetch=PREFETCH, clock=camera.clock, **FAST)
        baseline, delivered, last = 0, 0, 0
        while (frame := source.read(timeout=PATIENCE)) is not None:
            delivered += 1
            counter = counter_of(frame)
            assert counter == last + 1 if not live else counter > last  # files: every frame, in order
            last = counter
            refs.append(weakref.ref(frame.rgb))
            if delivered == WARMUP:
                baseline = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
            if delivered % CHECK_EVERY == 0:  # a slow moment of the consumer
                refs = [r for r in refs if r() is not None]
                if live:  # the camera runs two frames ahead: the first is replaced in the slot, unread
                    wait_for(lambda c=counter: camera.counter >= c + 3, "the camera to run ahead")
                else:  # the reader fills the bounded queue (one more frame waiting to go in), then waits
                    fill = min(PREFETCH + 1, n - delivered)
                    wait_for(lambda f=fill: source.stats.read - source.stats.delivered >= f, "the reader to read ahead")
                    stats = source.stats
                    assert stats.read - stats.delivered == fill  # and reads no further
            if live and delivered == n:
                break
        del frame
        peak = tracemalloc.get_traced_memory()[1]
        source.close(timeout=PATIENCE)
    finally:
        tracemalloc.stop()
    gc.collect()
    stats = source.stats
    assert stats.read >= n and stats.delivered == delivered == n
    if live:
        assert stats.dropped_stale >= n // CHECK_EVERY and stats.delivered < stats.read
    else:
        assert last == n and stats.dropped_stale == 0 and stats.read == n  # every frame, in order
    assert sum(r() is not None for r in refs) == 0  # the source keeps no delivered frame alive
    assert threading.active_count() < 10
    return peak - baseline


@pytest.mark.parametrize("live", [True, False])
def test_memory_stays_bounded_over_a_long_run(live):
    """Memory does not grow with the frame count: 2,000 frames through the source peak no higher than 200 do."""
    hw = (60, 80)
    frame_bytes = hw[0] * hw[1] * 3
    short, long = stream_frames(200, live, hw), stream_frames(2_000, live, hw)
    for grew in (short, long):
        assert grew < 64 * frame_bytes, f"peak grew by {grew / frame_bytes:.0f} frames"
    # 10x the frames: a source that kept one frame in 200 of them would hold 9 frames more here
    assert long - short < 8 * frame_bytes, f"{(long - short) / frame_bytes:.1f} frames more for 10x the frames"


@pytest.mark.parametrize("live", [True, False])
def test_close_from_another_thread_unblocks_a_waiting_reader(live):
    camera = SyntheticCamera([("frames", 1), ("stall", 30.0)])
    source = open_source("0", live=live, capture_factory=camera, stall_timeout=30.0, clock=FakeClock())
    assert source.read(timeout=PATIENCE) is not None
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(source.read()), daemon=True)  # no frame is coming
    reader.start()
    wait_until_waiting_in_read(reader)
    closer = threading.Thread(target=source.close, daemon=True)
    closer.start()
    reader.join(PATIENCE)
    assert not reader.is_alive() and got == [None]  # close() woke the waiting reader
    assert source.read() is None and list(source) == []
    camera.unstick.set()  # the driver's read() returns at last: the capture thread releases and exits
    assert camera.captures[0].released.wait(PATIENCE)
    closer.join(PATIENCE)
    assert not closer.is_alive()
    source.close()  # idempotent


def test_close_from_a_signal_handler_unblocks_the_main_thread():
    camera = SyntheticCamera([("frames", 1), ("stall", 30.0)])
    source = open_source("0", capture_factory=camera, stall_timeout=30.0, clock=FakeClock())
    previous = signal.signal(signal.SIGUSR1, lambda *_: source.close(timeout=0))  # as a CLI does for SIGINT
    main = threading.current_thread()

    def interrupt() -> None:
        wait_until_waiting_in_read(main)
        os.kill(os.getpid(), signal.SIGUSR1)

    try:
        assert source.read(timeout=PATIENCE) is not None
        sender = threading.Thread(target=interrupt, daemon=True)
        sender.start()
        assert source.read(timeout=2 * PATIENCE) is None  # the handler's close() woke it (a timeout would raise)
        sender.join(PATIENCE)
        assert not sender.is_alive()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        camera.unstick.set()
    assert camera.captures[0].released.wait(PATIENCE)


def test_a_camera_stuck_in_read_is_abandoned_with_a_bounded_number_of_threads():
    camera = SyntheticCamera([("stall", 30.0)] * 50)
    events: list[str] = []
    source = open_source("0", capture_factory=camera, stall_timeout=0.1, backoff=(0.01, 0.02), clock=camera.clock,
                         on_event=lambda k, d: events.append(k), open_tries=0)  # no frame ever: try forever
    capped = f"{MAX_STUCK_READERS} capture threads still blocked in read()"
    wait_for(lambda: source.stats.last_error == capped, "the supervisor to stop starting capture threads")
    with pytest.raises(TimeoutError, match="no frame within"):
        source.read(timeout=0)
    alive = [t for t in threading.enumerate() if t.name == "dkit-source-camera"]
    assert len(alive) <= MAX_STUCK_READERS + 1  # abandoned readers + the supervisor
    assert len(camera.captures) == MAX_STUCK_READERS  # no capture opened beyond the cap
    assert Counter(events) == {"stalled": MAX_STUCK_READERS, "disconnected": 1}
    camera.unstick.set()
    source.close()
    assert all(c.released.wait(PATIENCE) for c in camera.captures)


def test_unreachable_stream_with_the_real_opencv_capture_keeps_retrying():
    events: list[str] = []
    delays: list[float] = []

    def recording_wait(stop: threading.Event, seconds: float) -> bool:
        delays.append(seconds)
        return threading.Event.wait(stop, seconds)

    before = set(threading.enumerate())
    source = open_source("rtsp://127.0.0.1:9/none", stall_timeout=1.0, backoff=(0.05, 0.2), backoff_wait=recording_wait,
                         on_event=lambda k, d: events.append(k), open_tries=0)  # port 9: refused; try forever
    wait_for(lambda: len(delays) >= 5, "five failed opens")
    with pytest.raises(TimeoutError):
        source.read(timeout=0)
    source.close(timeout=PATIENCE)
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []  # none left in OpenCV
    assert events == ["disconnected"] and source.stats.last_error.startswith("open failed")
    want = [0.05, 0.1, 0.2, 0.2] + [0.2] * (len(delays) - 4)
    assert all(w <= d <= w * 1.1 for d, w in zip(delays, want, strict=True)), delays  # default jitter: up to 10 %


class NeverThere:
    """A camera index with nothing behind it: every open gives a capture whose isOpened() is False."""

    def __init__(self) -> None:
        self.opens = 0

    def __call__(self, spec: str) -> FakeCapture:
        self.opens += 1
        return FakeCapture(SyntheticCamera(), opened=False)


@pytest.mark.parametrize("tries", [1, 3, 5])
def test_a_source_that_never_opens_is_given_up_after_open_tries(tries, caplog):
    camera, waits = NeverThere(), []
    counted = "1 try" if tries == 1 else f"{tries} tries"
    with caplog.at_level(logging.WARNING, logger="dkit.edge.stream.sources"):
        source = open_source("7", capture_factory=camera, clock=FakeClock(), open_tries=tries, **FAST,
                             backoff_wait=lambda stop, seconds: waits.append(seconds))  # no real waiting
        with pytest.raises(SourceError, match=rf"^camera 7: no frame after {counted} \(open failed\); check the index"):
            source.read(timeout=PATIENCE)
    with pytest.raises(SourceError):
        source.read(timeout=0)  # stays given up
    source.close(timeout=PATIENCE)
    assert camera.opens == tries and len(waits) == tries - 1  # no wait after the last try
    tried = [r.getMessage() for r in caplog.records if " failed (open failed); next try in " in r.getMessage()]
    assert tried == [f"7: try {n} of {tries} failed (open failed); next try in {w:.2f} s"
                     for n, w in zip(range(1, tries), [0.02, 0.04, 0.08, 0.08], strict=False)]  # one line a try
    assert source.stats.disconnects == 1 and source.stats.last_error == "open failed"


def test_a_camera_that_has_worked_keeps_reconnecting_past_open_tries():
    camera = SyntheticCamera([("frames", 3), ("fail", 6), ("frames", 3)], period=0.002)
    source = open_source("0", capture_factory=camera, clock=camera.clock, open_tries=2, **FAST,
                         backoff_wait=lambda stop, seconds: None)
    try:
        while camera.exhausted_at is None:
            assert source.read(timeout=PATIENCE) is not None  # never raises: it delivered frames before
    finally:
        source.close(timeout=PATIENCE)
    assert len(camera.open_times) == 8 and source.stats.reconnects == 1


def test_open_tries_must_not_be_negative():
    with pytest.raises(ValueError, match="open_tries"):
        open_source("0", capture_factory=NeverThere(), open_tries=-1)


class FedCamera:
    """A camera whose opens and reads the test hands out one at a time, so every state is seen where it holds.

    Open number n waits for `may_open` and then is opened or not as `opened[n]` says; each read waits for the next
    item `feed()` puts: "frame" (a good frame) or "fail" (read returns False). Nothing sleeps."""

    def __init__(self, opened: list[bool]) -> None:
        self.opened, self.opens = deque(opened), 0
        self.may_open = threading.Event()
        self.reads: queue.Queue[str] = queue.Queue()
        self.counter = 0

    def __call__(self, spec: str) -> FakeCapture:
        assert self.may_open.wait(PATIENCE)
        self.opens += 1
        return FakeCapture(self, self.opened.popleft() if self.opened else True)

    def feed(self, *items: str) -> None:
        for item in items:
            self.reads.put(item)

    def next_read(self) -> tuple[bool, object]:
        if self.reads.get(timeout=PATIENCE) == "fail":
            return False, None
        self.counter += 1
        return True, make_bgr(self.counter)


def test_a_live_source_moves_through_its_states_as_its_capture_fails_and_recovers():
    """CONNECTING (first open under way) -> RETRYING (it failed, no frame yet) -> UP (a frame) -> DOWN (a read
    failed) -> UP (reopened, a frame) -> CLOSED. The state after each failure is taken where the supervisor backs
    off (the injected backoff_wait, which returns at once); after each frame, where read() returns it."""
    camera = FedCamera(opened=[False, True, True])
    at_backoff: queue.Queue[SourceState] = queue.Queue()
    holder: list = []
    source = open_source("0", capture_factory=camera, stall_timeout=PATIENCE, backoff=(0.01, 0.01),
                         backoff_wait=lambda stop, seconds: at_backoff.put(holder[0].state))
    holder.append(source)
    try:
        assert source.state is SourceState.CONNECTING  # the first open waits for may_open
        camera.may_open.set()
        assert at_backoff.get(timeout=PATIENCE) is SourceState.RETRYING  # open 1 failed before any frame
        camera.feed("frame")
        assert counter_of(source.read(timeout=PATIENCE)) == 1 and source.state is SourceState.UP
        assert (source.stats.disconnects, source.stats.reconnects) == (1, 1)  # the failed first open is an outage
        camera.feed("fail")
        assert at_backoff.get(timeout=PATIENCE) is SourceState.DOWN  # it had worked: an outage, not a retry
        camera.feed("frame")
        assert counter_of(source.read(timeout=PATIENCE)) == 2 and source.state is SourceState.UP
        assert (source.stats.disconnects, source.stats.reconnects) == (2, 2) and camera.opens == 3
    finally:
        source.close(timeout=0)
        camera.feed("fail")  # the capture thread waiting in read() returns, abandoned
        source.close(timeout=PATIENCE)
    assert source.state is SourceState.CLOSED and not source.running and at_backoff.empty()


def test_a_live_source_that_never_delivers_ends_given_up_and_stays_so():
    camera = FedCamera(opened=[False, False])
    states: list[SourceState] = []
    holder: list = []
    source = open_source("0", capture_factory=camera, open_tries=2, stall_timeout=PATIENCE, backoff=(0.01, 0.01),
                         backoff_wait=lambda stop, seconds: states.append(holder[0].state))
    holder.append(source)
    camera.may_open.set()
    with pytest.raises(SourceError, match="no frame after 2 tries"):
        source.read(timeout=PATIENCE)
    assert states == [SourceState.RETRYING] and source.state is SourceState.GAVE_UP
    source.close(timeout=PATIENCE)
    assert source.state is SourceState.GAVE_UP and source.closed  # close() does not hide why it ended
    with pytest.raises(SourceError, match="no frame after 2 tries"):
        source.read(timeout=0)


# ---- real files --------------------------------------------------------------------------------------------------


def write_image(path: Path, rgb: tuple[int, int, int], hw: tuple[int, int] = (40, 56)) -> Path:
    assert cv2.imwrite(str(path), np.full((*hw, 3), rgb[::-1], np.uint8))
    return path


COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (90, 90, 90), "mix": (200, 60, 20)}


def build_folder(tmp_path: Path) -> tuple[Path, list[tuple[str, tuple[int, int, int]]]]:
    folder = tmp_path / "shots"
    folder.mkdir()
    files = [("a_red.png", "red"), ("b_green.jpg", "green"), ("c_blue.BMP", "blue"), ("e_gray.tiff", "gray"),
             ("f_mix.webp", "mix"), ("g_red.jpeg", "red")]
    for name, color in files:
        write_image(folder / name, COLORS[color])
    (folder / "d_corrupt.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    return folder, [(name, COLORS[color]) for name, color in files]


def build_image(tmp_path: Path) -> tuple[Path, list[tuple[str, tuple[int, int, int]]]]:
    return write_image(tmp_path / "red.png", COLORS["red"]), [("red.png", COLORS["red"])]


def build_video(tmp_path: Path) -> tuple[Path, list[tuple[None, tuple[int, int, int]]]]:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    colors = [(40 + 15 * i, 0, 0) for i in range(12)]  # ever redder: order is visible in the pixels
    for rgb in colors:
        writer.write(np.full((48, 64, 3), rgb[::-1], np.uint8))
    writer.release()
    return path, [(None, c) for c in colors]


@pytest.mark.parametrize("build, kind, corrupt", [(build_folder, "folder", 1), (build_image, "image", 0),
                                                  (build_video, "video", 0)])
def test_file_sources_deliver_every_frame_in_order_then_end(tmp_path, caplog, build, kind, corrupt):
    path, want = build(tmp_path)
    events: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="dkit.edge.stream.sources"):
        with open_source(str(path), on_event=lambda k, d: events.append((k, d))) as source:
            assert not source.live and source.kind == kind
            frames = list(source)
            assert source.read() is None and source.state is SourceState.ENDED  # stays ended
    assert source.state is SourceState.CLOSED
    assert [f.id for f in frames] == list(range(len(want)))
    assert [f.name for f in frames] == [name for name, _ in want]
    for frame, (_, rgb) in zip(frames, want, strict=True):
        assert frame.rgb.dtype == np.uint8 and frame.rgb.shape[2] == 3
        assert np.abs(frame.rgb.reshape(-1, 3).mean(0) - rgb).max() < 12, (frame.name, frame.rgb[0, 0], rgb)
    stats = source.stats
    assert (stats.delivered, stats.corrupt, stats.dropped_stale) == (len(want), corrupt, 0)
    assert [k for k, _ in events] == ["corrupt"] * corrupt + ["eof"]
    if corrupt:
        assert "d_corrupt.png" in events[0][1]
        assert any("d_corrupt.png" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_video_opened_live_loops_like_a_camera(tmp_path):
    path, want = build_video(tmp_path)
    with open_source(path, live=True, **FAST) as source:
        assert source.live and source.kind == "video"
        frames = [source.read(timeout=2) for _ in range(3 * len(want))]  # more than the file holds
    assert [f.id for f in frames] == list(range(3 * len(want)))
    assert source.stats.reconnects >= 1


def test_pure_red_image_reads_back_as_rgb(tmp_path):
    path = write_image(tmp_path / "red.jpg", (255, 0, 0))
    with open_source(path) as source:  # a Path works as well as a str
        frame = source.read(timeout=2)
    assert frame.rgb[10, 10].tolist() == pytest.approx([255, 0, 0], abs=3)


ERRORS = [
    ("missing file", lambda p: str(p / "nope.mp4"), "no such file"),
    ("empty folder", lambda p: str(p), "no images"),
    ("unknown scheme", lambda p: "ftp://cams.local/front", "unknown scheme 'ftp'"),
    ("undecodable image", lambda p: str(_write(p / "broken.jpg", b"garbage")), "cannot read or decode"),
    ("undecodable video", lambda p: str(_write(p / "broken.avi", b"garbage" * 100)), "cannot open"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, make_spec, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_a_source_that_can_never_work_raises_source_error_naming_it(tmp_path, case, make_spec, message):
    (tmp_path / "readme.txt").write_text("no images here")
    spec = make_spec(tmp_path)
    with pytest.raises(SourceError, match=message) as err:
        open_source(spec)
    assert spec in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"stall_timeout": 0}, "stall_timeout"),
    ({"backoff": (0.0, 1.0)}, "backoff"),
    ({"backoff": (2.0, 1.0)}, "backoff"),
    ({"jitter": 2.0}, "jitter"),
    ({"prefetch": 0}, "prefetch"),
])
def test_bad_arguments_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        open_source("0", capture_factory=SyntheticCamera(), **kwargs)


def test_stream_credentials_never_reach_frames_logs_or_errors(caplog):
    camera = SyntheticCamera([("frames", 2), ("fail", 0)], period=0.002)
    with caplog.at_level(logging.INFO, logger="dkit.edge.stream.sources"):
        with open_source("rtsp://admin:hunter2@10.0.0.7/live", capture_factory=camera, **FAST) as source:
            assert source.kind == "stream" and source.live
            frames = [source.read(timeout=3) for _ in range(4)]
    assert {f.source for f in frames} == {"rtsp://***@10.0.0.7/live"}
    assert caplog.records and not any("hunter2" in r.getMessage() for r in caplog.records)
    with pytest.raises(SourceError) as err:
        open_source("gopher://admin:hunter2@host/x")
    assert "hunter2" not in str(err.value)


def test_a_real_http_stream_that_goes_down_comes_back(tmp_path):
    """OpenCV's own capture reading a video over HTTP from a loopback server that stops, then starts again."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    hits: list[float] = []  # when each GET arrived

    class Quiet(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            hits.append(time.time())
            super().do_GET()

        def log_message(self, *args):
            pass

    build_video(tmp_path)
    clip = next(tmp_path.glob("*.avi"))
    handler = functools.partial(Quiet, directory=str(tmp_path))

    def serve(port: int) -> ThreadingHTTPServer:
        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    server = serve(0)
    port = server.server_address[1]
    events: list[str] = []
    with open_source(f"http://127.0.0.1:{port}/{clip.name}", stall_timeout=2.0, backoff=(0.1, 0.3),
                     on_event=lambda kind, detail: events.append(kind)) as source:
        assert source.live and source.kind == "stream"
        first = source.read(timeout=20)
        assert first is not None and first.rgb.shape[2] == 3
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + 20
        while "disconnected" not in events and time.monotonic() < deadline:
            try:
                source.read(timeout=0.2)
            except TimeoutError:
                pass
        assert "disconnected" in events
        down_at = time.time()
        time.sleep(0.5)  # a few failed reopens while the server is down
        assert not [t for t in hits if t > down_at]  # nothing served while it was down
        server = serve(port)
        try:
            frame = None
            while not [t for t in hits if t > down_at] or frame is None or frame.timestamp < min(
                    t for t in hits if t > down_at):
                frame = source.read(timeout=20)  # frames from the restarted server
                assert frame is not None
            assert "reconnected" in events and source.stats.reconnects >= 1 and frame.id > first.id
        finally:
            server.shutdown()
            server.server_close()


def test_a_close_between_the_last_failed_try_and_the_give_up_stays_closed_and_read_still_raises():
    """Review of #26: close() from the 'disconnected' event (after the supervisor's locked block, before it gives
    up) leaves the state CLOSED, never CLOSED -> GAVE_UP, and read() raises SourceError as it always did."""
    import threading

    from dkit.edge.stream.sources import SourceError, SourceState

    class NeverOpens:
        def isOpened(self):
            return False

        def read(self):
            return False, None

        def release(self):
            pass

    holder: dict = {}
    given_up = threading.Event()

    def on_event(kind, detail):
        if kind == "disconnected":
            holder["src"].close(timeout=0)
            holder["after_close"] = holder["src"].state
            given_up.set()

    opened = threading.Event()

    def factory(_):
        opened.wait(5)  # holder["src"] is set before the first try fails
        return NeverOpens()

    src = open_source("rtsp://cam/x", capture_factory=factory, open_tries=1, on_event=on_event,
                      backoff_wait=lambda stop, s: None)
    holder["src"] = src
    opened.set()
    assert given_up.wait(10)
    src.close()
    assert holder["after_close"] is SourceState.CLOSED and src.state is SourceState.CLOSED
    with pytest.raises(SourceError, match="no frame after 1 try"):
        src.read(timeout=1)
