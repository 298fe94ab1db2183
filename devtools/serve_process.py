"""`dkit serve` in a process of its own, for the benches and the tests: the one harness that starts it on a free
port, waits for /healthz, keeps its stderr in a file (a pipe nobody reads blocks the server once full) and stops it.

    from dkit.devtools.serve_process import ServeProcess

    with ServeProcess("bundle/", ["--db", "data/kiosk.sqlite", "-q"]) as server:   # started
        server.wait_up()                    # seconds until /healthz answered 200; ServeStartError if it never did
        ... http://127.0.0.1:{server.port} ...
    server.stderr_text()                    # what it said (kept after it stopped)

Base-installable (stdlib only): it runs on the device beside the runtime, as the benches do.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"


class ServeStartError(RuntimeError):
    """`dkit serve` exited before it answered /healthz, or did not answer in time (its stderr tail included)."""


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` free at the moment of asking."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServeProcess:
    """`dkit serve BUNDLE --port PORT *args` started at construction, stdout discarded, stderr into a file.

    Args:
        bundle: the bundle `dkit serve` serves.
        args: more `dkit serve` arguments (`--db`, `--set`, `-q`, ...).
        port: the port; 0: a free one on `host`.
        host: where /healthz is asked (and the free port is looked for); pass `--host` in `args` to serve elsewhere.
        env: the server's environment (None: this process's).
        cwd: the server's working folder (None: this process's).
        log: the file its stderr goes to; None: a temporary file, deleted by `close()` (or when this object goes).
    """

    def __init__(self, bundle: str | os.PathLike, args: Sequence[str] = (), *, port: int = 0, host: str = HOST,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 log: str | os.PathLike | None = None):
        self.bundle = Path(bundle)
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.args = [sys.executable, "-m", "dkit", "serve", str(bundle), "--port", str(self.port), *args]
        if log is None:
            fd, name = tempfile.mkstemp(prefix="dkit-serve-", suffix=".stderr")
            os.close(fd)
            self.log = Path(name)
            self._cleanup = weakref.finalize(self, self.log.unlink, missing_ok=True)
        else:
            self.log = Path(log)
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._cleanup = None
        with open(self.log, "wb") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=err,
                                         env=None if env is None else dict(env), cwd=cwd)

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far ('' once a temporary log is closed)."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, chars: int = 2000) -> str:
        """The last `chars` characters of its stderr: why it failed to start, or died."""
        return self.stderr_text()[-chars:]

    def healthy(self, timeout: float = 2.0) -> bool:
        """True if GET /healthz answers 200 now."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def wait_up(self, timeout: float = 120.0) -> float:
        """Seconds until /healthz answered 200. ServeStartError (with the stderr tail) if the server exits first,
        or, after stopping it, if it has not answered within `timeout` seconds."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise ServeStartError(f"dkit serve exited {self.proc.returncode} on start "
                                      f"({' '.join(self.args[3:])}):\n{self.stderr_tail()}")
            if self.healthy() and self.proc.poll() is None:  # ours still runs (a taken port: it exits)
                return time.monotonic() - start
            time.sleep(0.2)
        self.stop()
        raise ServeStartError(f"dkit serve did not answer on port {self.port} within {timeout:.0f} s:\n"
                              f"{self.stderr_tail()}")

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate it; kill it if it has not exited within `timeout` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Send `sig` (by default SIGKILL: no shutdown at all) and wait up to `timeout` seconds for it to exit."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)

    def close(self, timeout: float = 15.0) -> None:
        """Stop it (`stop(timeout)`) and delete a temporary log."""
        self.stop(timeout)
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["HOST", "ServeProcess", "ServeStartError", "free_port"]
