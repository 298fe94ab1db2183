"""The live policy (camera, stream, a video played like a camera): only the newest frame, reconnects with backoff.

A supervisor thread starts one capture thread per attempt (an _Attempt: the one the source holds is the only one
whose frames are delivered) and watches it; when it fails, stalls or a stuck one must be abandoned, the supervisor
moves the source's state (dkit.edge.stream.source.SourceState: CONNECTING, RETRYING, UP, DOWN, GAVE_UP), backs
off and starts another. dkit.edge.stream.sources' module docstring describes the behaviour; open_source builds it.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from dkit.edge.stream.source import (
    BackoffWait,
    Captured,
    CaptureFactory,
    Clock,
    EventCallback,
    Source,
    SourceState,
    logger,
    release,
    to_rgb,
)

MAX_STUCK_READERS = 3  # abandoned capture threads still blocked in read(); no new one starts beyond this

# the state after an attempt failed, by the state it failed in (a source that never delivered a frame keeps retrying)
_AFTER_FAILURE = {SourceState.CONNECTING: SourceState.RETRYING, SourceState.RETRYING: SourceState.RETRYING,
                  SourceState.UP: SourceState.DOWN, SourceState.DOWN: SourceState.DOWN}
_NEVER_UP = (SourceState.CONNECTING, SourceState.RETRYING)  # not one good frame yet, from any try
_COUNTED_OUTAGE = (SourceState.CONNECTING, SourceState.UP)  # a failure in these starts an outage (disconnects)


class _Attempt:
    """One connection try: its capture thread delivers frames while it is the source's current attempt."""

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: str | None = None  # why its capture thread gave up (the supervisor reads it)


class LiveSource(Source):
    """The newest frame only, reconnecting with backoff (see dkit.edge.stream.sources for the behaviour and the
    arguments). Build it with open_source()."""

    live = True

    def __init__(self, spec: str, kind: str, target: str, *, stall_timeout: float, backoff: tuple[float, float],
                 jitter: float, factory: CaptureFactory, on_event: EventCallback | None,
                 clock: Clock = time.monotonic, backoff_wait: BackoffWait = threading.Event.wait,
                 open_tries: int = 3) -> None:
        super().__init__(spec, kind, capacity=1, state=SourceState.CONNECTING, on_event=on_event)
        self._target = target
        self._stall_timeout = stall_timeout
        self._backoff = backoff
        self._jitter = jitter
        self._factory = factory
        self._clock = clock  # the stall watch's clock
        self._backoff_wait = backoff_wait  # (stop event, seconds): one back-off delay, ended early by close()
        self._open_tries = open_tries  # tries for a live source that never delivered a frame (0: forever)
        self._wake = threading.Event()  # a capture thread failed, or close()
        self._attempt: _Attempt | None = None  # the current one; None between attempts and once closed
        self._progress = 0.0  # monotonic time of the last good frame (or of the current open)
        self._random = random.Random()

    def _closing(self) -> None:
        """Abandon the current attempt and wake the supervisor's watch (its back-off wait ends on the stop event)."""
        self._attempt = None  # every capture thread is now stale
        self._wake.set()

    def _run(self) -> None:
        """Supervise: start a capture thread; when it fails or stalls, abandon it, back off and start another."""
        initial, longest = self._backoff
        delay, tries = initial, 0
        while True:
            with self._lock:
                if self._stop.is_set():
                    break
                attempt = self._attempt = _Attempt()
                self._progress = self._clock()
            self._wake.clear()
            stuck = sum(t.is_alive() for t in self._threads if t is not threading.current_thread())
            if stuck >= MAX_STUCK_READERS:
                reason, stalled = f"{stuck} capture threads still blocked in read()", False
            else:
                self._start_thread(self._capture, attempt)
                reason, stalled = self._watch(attempt)
            with self._lock:
                if self._stop.is_set():
                    break
                self._attempt = None  # the old capture thread stops delivering now
                was = self._state
                self._state = _AFTER_FAILURE[was]
                self._stats.last_error = reason
                if was in _COUNTED_OUTAGE:
                    self._stats.disconnects += 1
            tries += 1
            if was is SourceState.UP:
                delay = initial  # it worked for a while: start the backoff over
            never = was in _NEVER_UP
            if stalled:
                self._emit("stalled", reason, logging.WARNING)
            if was in _COUNTED_OUTAGE:
                self._emit("disconnected", reason, logging.DEBUG if never else logging.WARNING)
            elif was is SourceState.DOWN:
                logger.info("%s: reconnect failed (%s); next try in %.2f s", self.spec, reason, delay)
            if never and self._give_up(tries, reason, delay):
                break
            self._backoff_wait(self._stop, delay * (1.0 + self._jitter * self._random.random()))
            delay = min(delay * 2.0, longest)

    def _give_up(self, tries: int, reason: str, delay: float) -> bool:
        """A source that never delivered a frame failed its try number `tries`: log it; True (the state GAVE_UP and
        the consumer woken, to raise SourceError) once that was the last of `open_tries`."""
        of = f" of {self._open_tries}" if self._open_tries else ""
        if not self._open_tries or tries < self._open_tries:
            logger.warning("%s: try %d%s failed (%s); next try in %.2f s", self.spec, tries, of, reason, delay)
            return False
        hint = {"camera": "check the index (ls /dev/video*)",
                "stream": "check the URL and that the stream is up"}.get(self.kind, "check that OpenCV can read it")
        counted = f"{tries} {'try' if tries == 1 else 'tries'}"
        with self._lock:
            self._gave_up_reason = (f"{self.kind} {self.spec}: no frame after {counted} ({reason}); {hint}, or give "
                                    "it more tries with --open-tries N (0: forever)")
            if not self._stop.is_set():  # closed meanwhile: CLOSED stays (read() raises either way)
                self._state = SourceState.GAVE_UP
        self._buffer.finish()
        return True

    def _watch(self, attempt: _Attempt) -> tuple[str, bool]:
        """Wait until the capture thread of `attempt` fails or stalls, or close(): (reason, stalled)."""
        while not self._stop.is_set():
            with self._lock:
                failure, idle = attempt.failure, self._clock() - self._progress
            if failure is not None:
                return failure, False
            if idle >= self._stall_timeout:
                return f"no frame for {idle:.1f} s (stall_timeout={self._stall_timeout} s)", True
            self._wake.wait(self._stall_timeout - idle)
            self._wake.clear()  # safe: the failure itself is re-checked above under the lock
        return "closed", False

    def _fail(self, attempt: _Attempt, reason: str) -> None:
        with self._lock:
            if attempt is not self._attempt:
                return  # an abandoned capture thread: nobody waits for it
            attempt.failure = reason
        self._wake.set()

    def _capture(self, attempt: _Attempt) -> None:
        """One connection: open, then read until a read fails or this attempt is abandoned."""
        try:
            cap = self._factory(self._target)
            is_opened = getattr(cap, "isOpened", None)
            if is_opened is not None and not is_opened():
                release(cap)
                self._fail(attempt, "open failed")
                return
        except Exception as e:
            self._fail(attempt, f"open failed: {type(e).__name__}: {e}")
            return
        try:
            while self._attempt is attempt and not self._stop.is_set():
                try:
                    ok, bgr = cap.read()
                except Exception as e:
                    self._fail(attempt, f"read raised {type(e).__name__}: {e}")
                    return
                timestamp = time.time()
                if self._attempt is not attempt:
                    return
                if not ok:
                    self._fail(attempt, "read failed (end of stream or device gone)")
                    return
                with self._lock:
                    self._stats.read += 1
                rgb, why = to_rgb(bgr)
                if rgb is None:
                    self._corrupt(f"skipping frame: {why}", False)
                    continue
                if not self._connected(attempt):
                    return
                dropped = self._buffer.put(Captured(timestamp, rgb, None))
                if dropped:
                    with self._lock:
                        self._stats.dropped_stale += dropped
        finally:
            release(cap)

    def _connected(self, attempt: _Attempt) -> bool:
        """A good frame arrived: progress for the stall watch, UP (the end of an outage if there was one).
        False when this attempt was abandoned meanwhile (its frame must not be delivered)."""
        with self._lock:
            if attempt is not self._attempt:
                return False
            self._progress = self._clock()
            was = self._state
            if was is SourceState.UP:
                return True
            self._state = SourceState.UP
            if was is not SourceState.CONNECTING:
                self._stats.reconnects += 1
        if was is SourceState.CONNECTING:
            logger.info("%s: connected", self.spec)
        else:
            self._emit("reconnected", f"frames again (reconnect #{self.stats.reconnects})", logging.WARNING)
        return True
