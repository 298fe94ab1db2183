"""What a `dkit` command shows on the terminal, and the run's log file that keeps the rest.

    from dkit.cli.run_log import run_log, setup_terminal

    setup_terminal(args.verbose - args.quiet)          # once, in main(): the `dkit: LEVEL: message` lines on stderr
    with run_log(RunDir(run_dir).log_file("train"), verbosity=args.verbose - args.quiet):
        ...                                            # a stage: label, train, eval, export

On the terminal: the kit's own lines (the `dkit` loggers: progress, warnings, summaries) and its progress bars.
In RUN_DIR/logs/STAGE.log (dkit.core.logfile.LogFile: no escape codes): everything, the kit's debug lines
included, and the libraries' chatter (Ultralytics' argument dump, layer table and per-batch lines, open_clip's
"Parsing model identifier" lines, Python warnings such as Ray's UserWarning). A library's errors still reach the
terminal. `-v` shows the libraries' lines (and Ultralytics' own bars) on the terminal again, as they print them.

Nothing here changes the process for good: run_log puts back every level, handler, filter and hook it touched.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from dkit.core.logfile import LogFile, strip_ansi

TERMINAL = "dkit.terminal"  # the name of the stderr handler setup_terminal adds, which run_log filters
OWN = "dkit"  # the kit's own loggers: "dkit" and "dkit.*"
ULTRALYTICS = "ultralytics"  # its logger: propagate=False, a stdout handler of its own (named below)
ULTRALYTICS_HANDLER = "ultralytics.utils.set_logging"


def terminal_level(verbosity: int) -> int:
    """The terminal's level for `-v`/`-q` counts (verbose - quiet): WARNING below 0, INFO at 0, DEBUG above."""
    return logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG


def setup_terminal(verbosity: int) -> None:
    """Log to stderr as `dkit: LEVEL: message` at terminal_level(verbosity); leaves alone a process that configured
    logging itself (an app, pytest): then the root logger keeps its handlers, only its level is set."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(TERMINAL)
        handler.setFormatter(logging.Formatter("dkit: %(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(terminal_level(verbosity))


class TerminalFilter(logging.Filter):
    """Lets through the kit's own records (loggers `dkit`, `dkit.*`) at `own_level` and up, any other logger's at
    `library_level` and up. E.g. TerminalFilter(logging.INFO, logging.ERROR): "student epoch 3/50 ..." passes,
    open_clip's "Parsing model identifier" (an INFO of the root logger) does not."""

    def __init__(self, own_level: int, library_level: int):
        super().__init__()
        self.own_level, self.library_level = own_level, library_level

    def filter(self, record: logging.LogRecord) -> bool:
        """True when the record is shown."""
        own = record.name == OWN or record.name.startswith(OWN + ".")
        return record.levelno >= (self.own_level if own else self.library_level)


class _LibraryErrorsOnly(logging.Filter):
    """On Ultralytics' stdout handler: only its errors, without colour codes when stdout is no terminal."""

    def __init__(self, stream):
        super().__init__()
        self.plain = not (hasattr(stream, "isatty") and stream.isatty())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return False
        if self.plain and isinstance(record.msg, str):
            record.msg = strip_ansi(record.msg)
        return True


class _QuietUltralytics(logging.Filter):
    """Holds Ultralytics' terminal output back while a stage runs: its stdout handler shows only errors and its
    progress bars are off (it draws them while `ultralytics.utils.VERBOSE` is set). Ultralytics may be imported
    after the stage starts (a handler of its own appears then), so this sits as a filter on its logger, passing
    every record, and quiets it on the first record after the import; `restore` undoes it."""

    def __init__(self):
        super().__init__()
        self.handlers: list[tuple[logging.Handler, logging.Filter]] = []
        self.utils = None
        self.verbose = None

    def filter(self, record: logging.LogRecord) -> bool:
        self.apply()
        return True

    def apply(self) -> None:
        """Quiet Ultralytics now if it is imported and not quieted yet."""
        utils = sys.modules.get("ultralytics.utils")
        if self.utils is not None or utils is None:
            return
        self.utils, self.verbose = utils, getattr(utils, "VERBOSE", None)
        utils.VERBOSE = False
        for handler in logging.getLogger(ULTRALYTICS).handlers:
            if handler.get_name() == ULTRALYTICS_HANDLER:
                quiet = _LibraryErrorsOnly(getattr(handler, "stream", None))
                handler.addFilter(quiet)
                self.handlers.append((handler, quiet))

    def restore(self) -> None:
        """Put back Ultralytics' VERBOSE and its handler as they were."""
        for handler, quiet in self.handlers:
            handler.removeFilter(quiet)
        if self.utils is not None:
            self.utils.VERBOSE = self.verbose


@contextlib.contextmanager
def run_log(path: Path, *, verbosity: int = 0, title: str = "dkit") -> Iterator[LogFile]:
    """While the block runs: every record (the kit's at DEBUG up, the libraries' at INFO up, Python warnings) goes
    to the log file `path` (a LogFile headed `title`), the terminal handler of setup_terminal shows the kit's own
    records at terminal_level(verbosity) and the libraries' errors only (with verbosity > 0: their lines too, and
    Ultralytics prints as it would). Every level, handler, filter and warnings hook is put back on exit.

    Yields the LogFile handler. Example:

        with run_log(run.log_file("label"), verbosity=args.verbose - args.quiet):
            label_images(kit, run_dir, ...)
    """
    shown = terminal_level(verbosity)
    root, own, ultra = logging.getLogger(), logging.getLogger(OWN), logging.getLogger(ULTRALYTICS)
    levels = {logger: logger.level for logger in (root, own)}
    handler = LogFile(path, title)
    terminal = TerminalFilter(shown, shown if verbosity > 0 else logging.ERROR)
    terminals = [h for h in root.handlers if h.get_name() == TERMINAL]
    quiet = _QuietUltralytics() if verbosity <= 0 else None
    showwarning = warnings.showwarning
    root.setLevel(min(root.getEffectiveLevel(), logging.INFO))  # the libraries' INFO lines reach the file
    own.setLevel(logging.DEBUG)  # the kit's debug lines too; the terminal filter keeps them off the terminal
    for logger in (root, ultra):  # Ultralytics' logger does not propagate to the root
        logger.addHandler(handler)
    for h in terminals:
        h.addFilter(terminal)
    if quiet is not None:
        ultra.addFilter(quiet)
        quiet.apply()
    warnings.showwarning = _warning_to_log
    try:
        yield handler
    finally:
        warnings.showwarning = showwarning
        if quiet is not None:
            ultra.removeFilter(quiet)
            quiet.restore()
        for h in terminals:
            h.removeFilter(terminal)
        for logger in (root, ultra):
            logger.removeHandler(handler)
        for logger, level in levels.items():
            logger.setLevel(level)
        handler.close()


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning as logging.captureWarnings has it: a WARNING of the `py.warnings` logger."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    logging.getLogger("py.warnings").warning("%s", text.rstrip("\n"))
