"""Names strangers type, cleaned before they are stored and shown on a public screen (stdlib only).

    public_name("ada\u202egnp.exe")      # -> "adagnp.exe": the right-to-left override is gone
    public_name(None)                    # -> "anonymous"

In order: Unicode NFKC (full-width and compatibility forms become plain letters); every control (C0, C1) and
format character removed: bidi overrides and isolates, zero-width spaces and joiners, soft hyphens, ...; any run
of whitespace becomes one space; at most MAX_MARKS combining marks on one character (a "Zalgo" tower of 39 marks
keeps 2); at most MAX_NAME characters; "anonymous" when nothing is left. Rendering stays textContent on the page,
so this is about what strangers can make the screen show, not about markup.

    words = Blocklist.load("blocklist.txt")   # one word or phrase per line, `#` comments
    words.match("B@dW0rd 99")                 # -> "badword" (the entry it hit), None when the name is fine

A name is refused when one of its words is on the list, compared casefolded, with accents dropped and the
usual digit/symbol stand-ins read as letters (0->o, 1->i, 3->e, 4->a, 5->s, 7->t, @->a, $->s); an entry of 4 or
more letters also matches inside the name with spaces and punctuation squeezed out ("b a d w o r d"). Shorter
entries match whole words only, so a list entry cannot ban every name that merely contains two letters.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass

MAX_NAME = 40
MAX_MARKS = 2  # combining marks kept on one base character (Vietnamese needs 2)
ANONYMOUS = "anonymous"


def public_name(text: str | None, *, limit: int = MAX_NAME) -> str:
    out: list[str] = []
    marks = 0
    for ch in unicodedata.normalize("NFKC", text or ""):
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):  # controls, format (bidi, zero-width), unpaired, private
            continue
        if category.startswith("Z") or ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
            marks = 0
            continue
        if category.startswith("M"):
            marks += 1
            if marks > MAX_MARKS or not out:
                continue
        else:
            marks = 0
        out.append(ch)
    return "".join(out).strip()[:limit].strip() or ANONYMOUS


_STAND_INS = str.maketrans("013457@$!|", "oieastasii")
_WORD = re.compile(r"[^\W_]+")  # letters and digits
_SQUEEZE_MIN = 4  # list entries at least this long also match with separators squeezed out


def _fold(text: str) -> str:
    """Casefolded, accents dropped, stand-ins read as letters: the form names and list entries are compared in."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    return "".join(ch for ch in text if not unicodedata.combining(ch)).translate(_STAND_INS)


@dataclass(frozen=True)
class Blocklist:
    """Words and phrases refused in player names (empty: nothing refused)."""

    words: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Blocklist:
        """From a UTF-8 text file: one entry per line, blank lines and `#` comments skipped."""
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"name blocklist {path}: cannot read it ({e})") from e
        return cls(tuple(w for line in lines if (w := line.split("#", 1)[0].strip())))

    def match(self, name: str) -> str | None:
        """The list entry `name` hits, or None."""
        folded = _fold(name)
        spaced = " " + " ".join(_WORD.findall(folded)) + " "  # the name's words, one space apart
        squeezed = spaced.replace(" ", "")
        for word in self.words:
            parts = _WORD.findall(_fold(word))
            if parts and (" " + " ".join(parts) + " " in spaced
                          or len(joined := "".join(parts)) >= _SQUEEZE_MIN and joined in squeezed):
                return word
        return None
