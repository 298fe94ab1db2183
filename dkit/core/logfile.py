"""Log files a person can read: no terminal escape codes (colours, cursor moves, progress-bar redraws) in them.

    from dkit.core.logfile import LogFile, strip_ansi

    handler = LogFile(run.log_file("train"))        # opened (and its folder made) on the first record
    logging.getLogger("ultralytics").addHandler(handler)
    strip_ansi("\\x1b[34m\\x1b[1mtrain:\\x1b[0m 18 images")   # 'train: 18 images'

Libraries colour their lines for a terminal (Ultralytics' `colorstr`, its bars' `\\r\\x1b[K`); a file gets the text.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

# CSI sequences (colours, erase line, cursor moves), OSC sequences (titles, links), then the short ones (a charset
# switch as `tput sgr0` writes it, ESC 7/8, ESC M)
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[ -/]*[0-~]")


def strip_ansi(text: str) -> str:
    """`text` without ANSI escape sequences and carriage returns (a bar's redraw), e.g.
    `strip_ansi("\\x1b[1mbold\\x1b[0m")` -> "bold"."""
    return _ANSI.sub("", text).replace("\r", "")


class PlainFormatter(logging.Formatter):
    """A logging.Formatter whose lines carry no ANSI escape codes (see strip_ansi): for files. Takes the same
    arguments as logging.Formatter, e.g. `PlainFormatter("%(asctime)s %(message)s")`."""

    def format(self, record: logging.LogRecord) -> str:
        """The record formatted as logging.Formatter does, escape codes removed."""
        return strip_ansi(super().format(record))


FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFile(logging.FileHandler):
    """An appending log file at `path` with PlainFormatter(FILE_FORMAT), every level (DEBUG up). The file and its
    folder are made on the first record, so a command that fails before logging anything leaves nothing behind;
    each opening starts with a line naming `title` and the time, so the runs appended to one file stay apart."""

    def __init__(self, path: Path, title: str = "dkit"):
        self.path, self.title = Path(path), title
        super().__init__(self.path, mode="a", encoding="utf-8", delay=True)
        self.setLevel(logging.DEBUG)
        self.setFormatter(PlainFormatter(FILE_FORMAT))

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stream = super()._open()
        stream.write(f"==== {self.title}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        return stream
