"""Uploads decoded in worker processes, each decode under a hard wall-clock budget and an address-space limit, so
no file holds a scoring slot longer than `timeout` seconds, whatever it makes the decoder do.

    from dkit.edge.kiosk.decoder import DecoderPool

    pool = DecoderPool(workers=2, timeout=2.0, limits={"max_scans": 100})
    pool.start()                  # the worker processes (create_app's lifespan; decode() starts them too)
    rgb = pool.decode(data)       # blocking, run it in a thread: (H, W, 3) uint8 RGB, or UploadError(400) /
                                  # DecodeTimeout(400) / DecoderUnavailable
    pool.close()

Each worker is a process of its own, started with 'forkserver' (else 'spawn'; never 'fork': the server holds
onnxruntime's threads) from a server process that has numpy, OpenCV and dkit.edge.images.decode imported already, so
a new
one costs milliseconds. It runs dkit.edge.images.decode.decode_upload (every header and marker check, then one decode: a
worker is single-threaded, so its reading of libjpeg's first warning is exact) on one upload at a time, under an
address-space limit of `memory` bytes above what it holds idle (RLIMIT_AS; a decode past it fails with 400).
Past `timeout` seconds from the moment the upload was handed over, the worker is killed (SIGKILL), the upload is
answered 400 "the image takes too long to decode" and a new worker is started in the background; a worker that
dies (a decoder crash) is replaced the same way. A keeper thread starts workers until the pool is full again, retrying
a failed start (fork refused: EAGAIN, ENOMEM) with backoff; meanwhile an upload waits for an idle worker at most its
budget and TAKE_GRACE seconds, then is answered 503 "the decoder is restarting". `ready` (the live workers) is shown
by /healthz and the admin stats; `start` raises DecoderUnavailable when not one worker can start (the kiosk does not
start then). Bytes go over a pipe both ways; the answer is a fixed binary header
and the raw pixels: nothing a worker sends is unpickled, as it handles untrusted files.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import struct
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from dkit.edge.images.decode import MAX_PIXELS, UploadError, decode_upload

log = logging.getLogger(__name__)

DECODE_MEMORY = 384 << 20  # bytes of address space a worker may take beyond what it holds idle (the largest
# accepted decode, a 4096 x 2048 16-bit RGBA PNG or a 12 MP 4:4:4 progressive JPEG, needs under 256)
START_TIMEOUT = 60.0  # seconds a new worker has to say it is ready
TAKE_GRACE = 5.0  # seconds beyond a decode's budget that an upload waits for an idle worker (then 503)
BACKOFF, BACKOFF_MAX = 0.5, 30.0  # seconds between tries to start a worker after a failed start (doubled each time)
_READY = b"ready"
_OK, _REFUSED = 0, 1
_HEADER = struct.Struct("<BIII")  # _OK, height, width, channels | _REFUSED, status, 0, 0 (the message follows)
_MAX_MESSAGE = 4096


class DecodeTimeout(UploadError):
    """A decode killed at its time budget (answered 400)."""

    def __init__(self, seconds: float):
        super().__init__(400, f"the image takes too long to decode (stopped after {seconds:g} s)")


class DecoderUnavailable(Exception):
    """No decoder process is ready, or the pool is closed (answered 503)."""


class _Died(Exception):
    """The worker's pipe broke: it crashed or was killed. `sent`: whether the upload had been handed over."""

    def __init__(self, sent: bool):
        super().__init__("the decoder process stopped")
        self.sent = sent


class DecoderPool:
    """`workers` decoder processes; `decode(data)` takes an idle one, kills and replaces it past `timeout` seconds.
    `limits`: keyword arguments of decode_upload (max_scans, max_pixels, ...). `preload`: preload this module in
    the process's forkserver (see _context: a setting of the whole process, for the server's own pool; off, each
    new worker imports it, about a second). Thread-safe."""

    def __init__(self, workers: int, timeout: float, limits: Mapping[str, Any] | None = None, *,
                 memory: int = DECODE_MEMORY, preload: bool = True):
        self.workers, self.timeout, self.memory, self.preload = workers, timeout, memory, preload
        self.limits = dict(limits or {})
        self.killed = 0  # workers killed at the time budget
        self.crashed = 0  # workers that died on an upload
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._live: set[_Worker] = set()  # the workers ready (idle or decoding)
        self._starting: _Worker | None = None  # the one the keeper waits for
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # a worker left: the keeper starts another
        self._keeper: threading.Thread | None = None
        self._started = self._closed = False

    @property
    def ready(self) -> int:
        """How many workers are ready now (idle or decoding): /healthz and the admin stats show it."""
        with self._lock:
            return len(self._live)

    def start(self) -> None:
        """Start the workers (once) and wait until they are ready; DecoderUnavailable when not one could start
        (the kiosk then refuses to start). Those that failed are started again in the background, with backoff."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        errors = [e for e in (self._add() for _ in range(self.workers)) if e]
        if len(errors) == self.workers:
            self.close()
            raise DecoderUnavailable(f"no decoder process could start ({errors[0]})")
        self._keeper = threading.Thread(target=self._keep, name="dkit-decoder-keeper", daemon=True)
        self._keeper.start()

    def decode(self, data: bytes) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an upload, decoded by a worker: UploadError(400) for a refused file,
        DecodeTimeout past the budget, DecoderUnavailable when no worker is ready. Blocking."""
        self.start()
        try:
            return self._decode_once(data)
        except _Died:  # the worker had died idle, not on this upload: once more, with another one
            try:
                return self._decode_once(data)
            except _Died as e:
                raise DecoderUnavailable("the decoder processes keep stopping") from e

    def _decode_once(self, data: bytes) -> np.ndarray:
        worker = self._take()
        try:
            rgb, refused = worker.exchange(data, self.timeout)
        except DecodeTimeout:
            self._replace(worker, "killed")
            raise
        except _Died as e:
            self._replace(worker, "crashed" if e.sent else None)
            if not e.sent:
                raise
            raise UploadError(400, "the image cannot be decoded: the decoder stopped on it") from e
        except BaseException:
            self._replace(worker)  # its state is unknown
            raise
        self._idle.put(worker)
        if refused is not None:
            raise refused
        return rgb

    def close(self) -> None:
        """Stop every worker (each exits when its pipe closes; killed if it does not) and the keeper. Blocking (up
        to seconds): the server runs it in a thread."""
        with self._lock:
            self._closed = True
            live, self._live = list(self._live), set()
            starting, self._starting = self._starting, None
            self._wake.notify_all()
        for worker in [*live, *([starting] if starting else [])]:
            worker.stop()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(START_TIMEOUT)

    def _take(self) -> _Worker:
        """An idle worker, waited for at most one decode's budget and TAKE_GRACE (a busy one is done by then):
        DecoderUnavailable when none came (the keeper is still starting them again)."""
        if self._closed:
            raise DecoderUnavailable("the kiosk is shutting down")
        try:
            return self._idle.get(timeout=self.timeout + TAKE_GRACE)
        except queue.Empty as e:
            raise DecoderUnavailable(f"the decoder is restarting ({self.ready} of {self.workers} decoder processes "
                                     "ready)") from e

    def _add(self) -> str | None:
        """Start one worker and wait until it is ready (then idle): None, or why it could not start."""
        try:
            worker = _Worker(_context(self.preload), self.limits, self.memory)
        except OSError as e:  # fork or pipe refused (EAGAIN, ENOMEM, EMFILE)
            log.error("could not start a decoder process: %s", e)
            return str(e)
        with self._lock:
            if self._closed:
                worker.stop(kill=True)
                return "the pool is closed"
            self._starting = worker
        ready = worker.wait_ready(START_TIMEOUT)
        with self._lock:
            self._starting = None
            closed = self._closed
            if ready and not closed:
                self._live.add(worker)
                self._idle.put(worker)
                return None
        worker.stop(kill=True)
        if closed:
            return "the pool is closed"
        why = f"it did not say it was ready (exit code {worker.proc.exitcode})"
        log.error("a decoder process did not start: %s", why)
        return why

    def _keep(self) -> None:
        """The keeper: while the pool is open, start workers until there are `workers` again, waiting BACKOFF
        seconds (doubled up to BACKOFF_MAX) after each failed start."""
        delay = BACKOFF
        while True:
            with self._lock:
                while not self._closed and len(self._live) >= self.workers:
                    self._wake.wait()
                if self._closed:
                    return
            if self._add() is None:
                delay = BACKOFF
                continue
            with self._lock:
                self._wake.wait_for(lambda: self._closed, delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _replace(self, worker: _Worker, counter: str | None = None) -> None:
        """Kill `worker` (counted as `counter`, "killed" or "crashed"); the keeper starts another one."""
        with self._lock:
            self._live.discard(worker)
            if counter:
                setattr(self, counter, getattr(self, counter) + 1)
            self._wake.notify_all()
        worker.stop(kill=True)


def _context(preload: bool = True) -> multiprocessing.context.BaseContext:
    """'forkserver', else 'spawn'. `preload`: the forkserver imports this module (so numpy, OpenCV,
    dkit.edge.images.decode) once, and a new worker costs milliseconds. Python has one forkserver per process, and its
    preload list is a setting of the whole process (set_forkserver_preload, effective when the forkserver starts):
    the kiosk server's process is the pool's own, so it sets it; a pool in a process that has other uses of the
    forkserver (a test run) passes preload=False, and each worker imports the module itself."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    if preload:
        context.set_forkserver_preload(["__main__", __name__])  # __main__: multiprocessing's own default
    return context


class _Worker:
    """One decoder process and the server's end of its pipe."""

    def __init__(self, context: multiprocessing.context.BaseContext, limits: dict, memory: int):
        self.conn, child = context.Pipe()
        try:
            self.proc = context.Process(target=serve, args=(child, limits, memory), name="dkit-decoder", daemon=True)
            self.proc.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child.close()

    def wait_ready(self, timeout: float) -> bool:
        try:
            return self.conn.poll(timeout) and self.conn.recv_bytes(len(_READY)) == _READY
        except (EOFError, OSError):
            return False

    def exchange(self, data: bytes, timeout: float) -> tuple[np.ndarray | None, UploadError | None]:
        """(rgb, None) or (None, the refusal); DecodeTimeout when the whole answer did not come within `timeout` s
        of the upload being handed over (one budget for the header and the pixels), _Died."""
        try:
            self.conn.send_bytes(data)
        except (OSError, ValueError) as e:
            raise _Died(sent=False) from e
        deadline = time.monotonic() + timeout
        try:
            if not self.conn.poll(timeout):
                raise DecodeTimeout(timeout)
            kind, a, b, c = _HEADER.unpack(self.conn.recv_bytes(_HEADER.size))
            if kind == _REFUSED:
                message = self.conn.recv_bytes(_MAX_MESSAGE).decode("utf-8", "replace")
                return None, UploadError(a if 400 <= a < 500 else 400, message)
            if kind != _OK or c != 3 or a * b > MAX_PIXELS:
                raise _Died(sent=True)  # not what a worker sends
            rgb = np.empty((a, b, c), np.uint8)
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                raise DecodeTimeout(timeout)
            if self.conn.recv_bytes_into(rgb.reshape(-1)) != rgb.nbytes:
                raise _Died(sent=True)
            return rgb, None
        except (EOFError, OSError, struct.error, multiprocessing.BufferTooShort) as e:
            raise _Died(sent=True) from e

    def stop(self, kill: bool = False) -> None:
        """End the process: closing the pipe ends its loop; killed when `kill` or when it does not exit."""
        if kill:
            self.proc.kill()
        self.conn.close()
        self.proc.join(2.0)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(2.0)


# ------------------------------------------------------------------------------------------ in the worker


def serve(conn: Connection, limits: dict, memory: int) -> None:
    """A worker's loop: an upload's bytes in, a header and the RGB pixels (or the refusal's message) out, until the
    server closes the pipe."""
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    cv2.setNumThreads(1)
    limit_memory(memory)
    conn.send_bytes(_READY)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        rgb, status, message = _decode(data, limits, memory)
        if rgb is None:
            conn.send_bytes(_HEADER.pack(_REFUSED, status, 0, 0))
            conn.send_bytes(message.encode("utf-8")[:_MAX_MESSAGE])
        else:
            conn.send_bytes(_HEADER.pack(_OK, *rgb.shape))
            conn.send_bytes(rgb.reshape(-1))  # flat: a pipe counts bytes, not rows
        del data, rgb


def _decode(data: bytes, limits: dict, memory: int) -> tuple[np.ndarray | None, int, str]:
    import cv2

    try:
        return np.ascontiguousarray(decode_upload(data, **limits, watch_stderr=True)), 200, ""
    except UploadError as e:
        return None, e.status, e.message
    except MemoryError:
        return None, 400, f"the image needs more than the decoder's {memory >> 20} MiB to decode"
    except cv2.error as e:  # OpenCV's own failures (an allocation over the limit among them), not its internals
        if "Insufficient memory" in str(e):
            return None, 400, f"the image needs more than the decoder's {memory >> 20} MiB to decode"
        return None, 400, "the image cannot be decoded (OpenCV refused it)"


def limit_memory(extra: int) -> None:
    """Limit this process's address space to what it maps now plus `extra` bytes (Linux; elsewhere nothing)."""
    try:
        import resource

        with open("/proc/self/status", encoding="ascii") as status:
            mapped = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration, ValueError):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = mapped + extra if hard == resource.RLIM_INFINITY else min(hard, mapped + extra)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
