"""Names strangers type, cleaned before they are stored and shown on a public screen.

    public_name("ada\u202egnp.exe")      # -> "adagnp.exe": the right-to-left override is gone
    public_name(None)                    # -> "anonymous"
    public_name("\u3164")                # -> "anonymous": a Hangul filler shows nothing

In order: Unicode NFKC (full-width and compatibility forms become plain letters); every control (C0, C1) and
format character removed: bidi overrides and isolates, zero-width spaces and joiners, soft hyphens, ...; the
letters and symbols that draw nothing (INVISIBLE: Hangul fillers, the blank Braille pattern, ...) removed; any run
of whitespace (U+2000-U+200A, U+3000, ...) becomes one space; at most MAX_MARKS combining marks on one character
(a "Zalgo" tower of 39 marks keeps 2); at most MAX_NAME characters; "anonymous" when nothing is left. Rendering
stays textContent on the page, so this is about what strangers can make the screen show, not about markup.

    words = Blocklist.load("blocklist.txt")   # one word or phrase per line, `#` comments
    words.match("B@dW0rd 99")                 # -> "badword" (the entry it hit), None when the name is fine

A name is refused when one of its words is on the list, compared casefolded, with accents dropped, look-alike
letters of other scripts read as the letters they mimic (Cyrillic "а" as Latin "a", Greek "Ο" as "O": a
confusables skeleton, below) and the usual digit/symbol stand-ins read as letters (0->o, 1->i, 3->e, 4->a, 5->s,
7->t, @->a, $->s); an entry of 4 or more letters also matches inside the name with spaces and punctuation squeezed
out ("b a d w o r d"). Shorter entries match whole words only, so a list entry cannot ban every name that merely
contains two letters.

The look-alikes come from Unicode's confusables table (UTS #39 confusables.txt) as the `confusable-homoglyphs`
package (MIT, a base dependency) ships it: characters it lists as confusable with each other form one class, and a
non-ASCII character is read as an ASCII member of its class (one of the same case where there is one), else as the
class's first member, so a name and a list entry that look alike compare equal whatever scripts they mix. The table
is read once, on the first name checked against a non-empty list.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources

MAX_NAME = 40
MAX_MARKS = 2  # combining marks kept on one base character (Vietnamese needs 2)
ANONYMOUS = "anonymous"
# letters, marks and symbols that draw nothing, beside the format characters (Cf) that are removed by category: the
# Hangul fillers, the blank Braille pattern, the combining grapheme joiner, Khmer's inherent vowels, Mongolian
# free variation selectors, Khitan's filler, the null notehead (most are Unicode's Default_Ignorable_Code_Point)
INVISIBLE = frozenset(map(chr, (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x2800,
                                0x3164, 0xFFA0, 0x16FE4, 0x1D159)))


def public_name(text: str | None, *, limit: int = MAX_NAME) -> str:
    """`text` as the public screen may show it (the steps in the module docstring); "anonymous" when nothing
    visible is left."""
    out: list[str] = []
    marks = 0
    for ch in unicodedata.normalize("NFKC", text or ""):
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn") or ch in INVISIBLE:  # controls, format (bidi, zero-width),
            continue  # unpaired, private, unassigned, and what draws nothing
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
    """Look-alikes read as the letters they mimic, casefolded, accents dropped, stand-ins read as letters: the
    form names and list entries are compared in."""
    table = look_alikes()
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).translate(table)
    text = unicodedata.normalize("NFKD", text.casefold()).translate(table)  # a casefolded letter may mimic another
    return "".join(ch for ch in text if not unicodedata.combining(ch)).translate(_STAND_INS)


@functools.cache
def look_alikes() -> dict[int, str]:
    """{code point: the character it is read as} for every non-ASCII character in Unicode's confusables table
    (the `confusable-homoglyphs` package's copy), built once: the classes of characters confusable with each other,
    each non-ASCII member read as an ASCII member of the same case where there is one (Cyrillic "А" as "A",
    Cyrillic "а" as "a", Greek "Ι" as "I"), else as any ASCII member, else as the class's lowest code point."""
    try:
        data = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    except (ModuleNotFoundError, OSError, ValueError) as e:
        raise RuntimeError("the confusables table of the confusable-homoglyphs package cannot be read (it is a base "
                           f"dependency of dkit: pip install confusable-homoglyphs): {e}") from e
    parent: dict[str, str] = {}

    def root(ch: str) -> str:
        while parent.setdefault(ch, ch) != ch:
            parent[ch] = ch = parent[parent[ch]]
        return ch

    for key, entries in data.items():
        for entry in entries:
            other = entry["c"].replace("\u200e", "")  # right-to-left characters come wrapped in LRM marks
            if len(key) == 1 and len(other) == 1 and root(key) != root(other):
                parent[root(key)] = root(other)
    classes: dict[str, list[str]] = {}
    for ch in list(parent):
        classes.setdefault(root(ch), []).append(ch)
    table: dict[int, str] = {}
    for members in classes.values():
        for ch in members:
            if not ch.isascii():
                table[ord(ch)] = min(members, key=lambda m, ch=ch: _likeness(ch, m))
    return table


def _likeness(ch: str, member: str) -> tuple:
    """Sort key of the class member a character is read as: ASCII first, a letter of its own case first (any
    letter for a character without case), then letters, digits, the rest; ties by code point."""
    same_case = member.isalpha() and (member.isupper() if ch.isupper() else member.islower() if ch.islower() else True)
    return not member.isascii(), not same_case, not member.isalpha(), not member.isdigit(), member


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
        if not self.words:
            return None
        folded = _fold(name)
        spaced = " " + " ".join(_WORD.findall(folded)) + " "  # the name's words, one space apart
        squeezed = spaced.replace(" ", "")
        for word in self.words:
            parts = _WORD.findall(_fold(word))
            if parts and (" " + " ".join(parts) + " " in spaced
                          or len(joined := "".join(parts)) >= _SQUEEZE_MIN and joined in squeezed):
                return word
        return None
