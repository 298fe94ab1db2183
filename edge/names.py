"""Names strangers type, cleaned before they are stored and shown on a public screen (stdlib only).

    public_name("ada\u202egnp.exe")      # -> "adagnp.exe": the right-to-left override is gone
    public_name(None)                    # -> "anonymous"

In order: Unicode NFKC (full-width and compatibility forms become plain letters); every control (C0, C1) and
format character removed: bidi overrides and isolates, zero-width spaces and joiners, soft hyphens, ...; any run
of whitespace becomes one space; at most MAX_MARKS combining marks on one character (a "Zalgo" tower of 39 marks
keeps 2); at most MAX_NAME characters; "anonymous" when nothing is left. Rendering stays textContent on the page,
so this is about what strangers can make the screen show, not about markup.
"""

from __future__ import annotations

import unicodedata

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
